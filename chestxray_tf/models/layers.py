"""Reusable Keras layers of the papers' models, registered for `.keras` saving.

`PatchSlicing` (Li et al. 2018, Sec. 3.1, "Patch slicing"): resizes an h' x w' feature map to
the P x P patch grid. Downsampling is max-pooling with stride s = 1 and padding p = 0, so the
output size o = (w - f + 2p) / s + 1 gives the window f = w - o + 1; upsampling is bilinear
interpolation; a map already of size P is passed through.

`lse_pool` / `LSEPooling` (Hermoza et al. 2020, Sec. 3.2): log-sum-exp pooling of saliency maps
into image logits, with a learnable sharpness per class.

`Float32Layer`: the base of the layers that compute in float32 under a mixed dtype policy
(`chestxray_tf.training.precision`).
"""

import math

import keras
import numpy as np


class Float32Layer(keras.layers.Layer):
    """A layer that computes in float32 whatever the dtype policy (unless built with another
    `dtype`): its float inputs are cast to float32 and its outputs are float32. For the layers
    whose numerics float16 / bfloat16 would break; each subclass says why in its docstring
    (box coordinates in pixels, softmax at a small temperature, iterated messages, the
    model's outputs)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)


@keras.saving.register_keras_serializable(package="chestxray_tf")
class PatchSlicing(keras.layers.Layer):
    """[B, h', w', C] -> [B, P, P, C] with P = `grid` (Li et al. 2018, Sec. 3.1).

    Each spatial axis larger than P is max-pooled (window h' - P + 1, stride 1, no padding);
    then, if an axis is smaller than P, the map is resized bilinearly to P x P (half-pixel
    centres, as `tf.image.resize`). Spatial sizes must be static.
    """

    def __init__(self, grid, **kwargs):
        super().__init__(**kwargs)
        if int(grid) != grid or grid < 1:
            raise ValueError(f"PatchSlicing grid must be a positive integer, got {grid!r}")
        self.grid = int(grid)

    def _spatial_size(self, shape):
        height, width = shape[1], shape[2]
        if height is None or width is None:
            raise ValueError(f"PatchSlicing needs a static spatial size, got input shape {shape}")
        return height, width

    def call(self, features):
        height, width = self._spatial_size(features.shape)
        window = (max(height - self.grid + 1, 1), max(width - self.grid + 1, 1))
        if window != (1, 1):
            features = keras.ops.max_pool(features, pool_size=window, strides=1,
                                          padding="valid")
        if min(height, width) < self.grid:
            # Resized in float32 and cast back: XLA's gradient of a float16 bilinear resize
            # mixes float32 into the float16 backward pass and fails to compile.
            resized = keras.ops.image.resize(keras.ops.cast(features, "float32"),
                                             (self.grid, self.grid), interpolation="bilinear")
            features = keras.ops.cast(resized, features.dtype)
        return features

    def compute_output_shape(self, input_shape):
        self._spatial_size(input_shape)
        return (input_shape[0], self.grid, self.grid, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "grid": self.grid}


def synchronize_batch_norm(model):
    """Makes every BatchNormalization of `model` (nested models included) compute its batch
    statistics over the global batch of all replicas (`synchronized=True`, TF backend), so a
    distributed step equals the single-device step on the same global batch. Returns the
    number of layers changed."""
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            changed += 1
    return changed


def lse_pool(maps, r):
    """Log-sum-exp pooling of score maps (Hermoza et al. 2020, Sec. 3.2: "pooling the results
    from each of the saliency maps using the log-sum-exp (LSE) function"; the LSE-LBA form of
    Yao et al. 2018 that the authors' code uses):

        y_k = (1 / r_k) * (log sum_ij exp(r_k S_k[i, j]) - log(h w)),

    so mean(S_k) <= y_k <= max(S_k) (r -> 0 gives the mean, r -> inf the max). The log-sum-exp
    subtracts the maximum first (`keras.ops.logsumexp`), so large r S does not overflow.

    Args:
        maps: float [B, h, w, K] score maps S (static h, w).
        r: the sharpness, a positive scalar or [K] (one per class).

    Returns:
        float32 [B, K].
    """
    maps = keras.ops.cast(maps, "float32")
    height, width = maps.shape[1], maps.shape[2]
    if height is None or width is None:
        raise ValueError(f"lse_pool needs static spatial sizes, got maps of shape {maps.shape}")
    if not keras.ops.is_tensor(r):
        values = np.asarray(r, dtype=np.float64)
        if values.ndim > 1 or (values.ndim == 1 and values.shape[0] != maps.shape[-1]):
            raise ValueError(f"lse_pool r must be a scalar or one value per class "
                             f"[{maps.shape[-1]}], got shape {values.shape}")
        if not np.all(values > 0):
            raise ValueError(f"lse_pool r must be positive, got {r!r}")
    r = keras.ops.cast(r, "float32")
    pooled = keras.ops.logsumexp(maps * r, axis=(1, 2))
    return (pooled - math.log(height * width)) / r


@keras.saving.register_keras_serializable(package="chestxray_tf")
class LSEPooling(keras.layers.Layer):
    """[B, h, w, K] -> [B, K] log-sum-exp pooling with a learnable sharpness per class
    (LSE-LBA, "lower-bounded adaptation", Yao et al. 2018, used by Hermoza et al. 2020):
    r_k = r0 + exp(beta_k), beta_k initialised to 0 (r = r0 + 1 at the start; r0 = 0 in the
    authors' code). See `lse_pool`.
    """

    def __init__(self, r0=0.0, **kwargs):
        super().__init__(**kwargs)
        if not r0 >= 0:
            raise ValueError(f"LSEPooling r0 must be >= 0, got {r0!r}")
        self.r0 = float(r0)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(f"LSEPooling expects [B, h, w, K] with a static K, got "
                             f"{input_shape}")
        self.beta = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="beta")

    @property
    def sharpness(self):
        """r_k = r0 + exp(beta_k), [K]."""
        return self.r0 + keras.ops.exp(keras.ops.cast(self.beta, "float32"))

    def call(self, maps):
        return lse_pool(maps, self.sharpness)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "r0": self.r0}
