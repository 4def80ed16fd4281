"""Anti-aliased downsampling, "BlurPool" (Zhang 2019, *Making Convolutional Networks
Shift-Invariant Again*), used by Rozenberg et al. 2019 (Sec. 3.3, "Anti-Aliasing": "an
anti-aliasing filter is required prior to every downsampling part of the network").

BlurPool low-pass filters every channel with the fixed binomial kernel aᵀa / Σ (a = the row of
Pascal's triangle of length `blur_size`: [1, 2, 1] for 3) and then subsamples with stride 2. The
input is reflect-padded by [⌊(s-1)/2⌋, ⌈(s-1)/2⌉] per spatial axis (PyTorch's ReflectionPad2d,
edge not repeated, as Zhang's code), so an n-pixel axis gives ⌈n/2⌉ for odd sizes.
The kernel is a constant, not a weight: the layer adds no variables, so a model with BlurPool
layers has the weights of the model without them (brief §5).
"""

import math

import keras
import numpy as np

MAX_BLUR_SIZE = 7


def binomial_kernel(blur_size):
    """The normalised 2D binomial filter aᵀa / Σ of side `blur_size`, float64 [s, s]."""
    if int(blur_size) != blur_size or not 1 <= blur_size <= MAX_BLUR_SIZE:
        raise ValueError(f"blur_size must be an integer in [1, {MAX_BLUR_SIZE}], "
                         f"got {blur_size!r}")
    row = np.array([math.comb(int(blur_size) - 1, i) for i in range(int(blur_size))],
                   np.float64)
    kernel = np.outer(row, row)
    return kernel / kernel.sum()


@keras.saving.register_keras_serializable(package="chestxray_tf")
class BlurPool2D(keras.layers.Layer):
    """[B, H, W, C] -> [B, ⌈H/2⌉, ⌈W/2⌉, C]: reflect pad, depthwise binomial blur, stride 2.

    Args:
        blur_size: side of the binomial filter (3: [1, 2, 1] x [1, 2, 1] / 16; 1: plain
            subsampling x[::2, ::2]).
        strides: subsampling factor (2).
    """

    def __init__(self, blur_size=3, strides=2, **kwargs):
        super().__init__(**kwargs)
        self._kernel_2d = binomial_kernel(blur_size)
        if int(strides) != strides or strides < 1:
            raise ValueError(f"BlurPool2D strides must be a positive integer, got {strides!r}")
        self.blur_size = int(blur_size)
        self.strides = int(strides)
        pad = self.blur_size - 1
        self._padding = ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0))

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"BlurPool2D needs a static channel count, got {input_shape}")
        smallest = self._padding[1][1] + 1  # reflect padding by p needs p + 1 pixels
        if any(size is not None and size < smallest for size in input_shape[1:3]):
            raise ValueError(f"BlurPool2D(blur_size={self.blur_size}) needs spatial sizes >= "
                             f"{smallest} for its reflect padding, got input shape "
                             f"{tuple(input_shape)}")
        # Depthwise kernel [s, s, C, 1]: the same filter for every channel.
        self._kernel = np.tile(self._kernel_2d[:, :, None, None], (1, 1, channels, 1))

    def call(self, x):
        if self.blur_size > 1:
            x = keras.ops.pad(x, self._padding, mode="reflect")
        kernel = keras.ops.convert_to_tensor(self._kernel, dtype=x.dtype)
        return keras.ops.depthwise_conv(x, kernel, strides=self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def reduce(size):
            return None if size is None else -(-size // self.strides)
        return (input_shape[0], reduce(input_shape[1]), reduce(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "blur_size": self.blur_size, "strides": self.strides}
