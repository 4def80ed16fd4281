"""Class activation maps (Zhou et al. 2016), as Sedai et al. 2018 use them (paper 003, Sec. 2).

* `GapClassifier`: global average pooling and a fully connected layer, l^c = sum_j V_j^c g_j + a^c
  with g = GAP(F) (Sec. 2.1), and the CAM of the same kernel at every position,
  S^c = sum_j V_j^c F_j (Eq. 2, no bias). By linearity mean_{x,y} S^c + a^c = l^c.
* `BilinearResize`: R() of Eq. 3, a map resized to the input size, bilinear with half-pixel
  centres and no antialiasing (`tf.image.resize(..., "bilinear")`; brief D-3).
* `MinMaxNormalization`: a map rescaled to [0, 1] per (image, class), (S - min S) / (max S - min S),
  all zeros when max S = min S (brief D-6).
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="chestxray_tf")
class GapClassifier(keras.layers.Layer):
    """[N, h, w, F] features -> (logits [N, K], CAM [N, h, w, K]) with one kernel V [F, K].

    The kernel starts Glorot-uniform (Xavier) and the bias at zero, as keras.layers.Dense.
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.num_classes),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")

    def call(self, features):
        pooled = ops.mean(features, axis=(1, 2))
        logits = ops.matmul(pooled, self.kernel) + self.bias
        cam = ops.einsum("nhwf,fk->nhwk", features, self.kernel)
        return logits, cam

    def compute_output_shape(self, input_shape):
        return ((input_shape[0], self.num_classes), tuple(input_shape[:3]) + (self.num_classes,))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class MinMaxNormalization(keras.layers.Layer):
    """[N, H, W, K] -> [N, H, W, K] in [0, 1]: min-max over (H, W) per (image, class); a
    constant map gives zeros."""

    def call(self, maps):
        low = ops.min(maps, axis=(1, 2), keepdims=True)
        spread = ops.max(maps, axis=(1, 2), keepdims=True) - low
        positive = spread > 0
        return ops.where(positive, (maps - low) / ops.where(positive, spread, 1.0), 0.0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="chestxray_tf")
class BilinearResize(keras.layers.Layer):
    """[N, h, w, K] -> [N, size, size, K], bilinear, half-pixel centres, no antialiasing."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = int(size)

    def call(self, maps):
        return ops.image.resize(maps, (self.size, self.size), interpolation="bilinear",
                                antialias=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}
