"""Reusable Keras layers of the papers' models, registered for `.keras` saving.

`PatchSlicing` (Li et al. 2018, Sec. 3.1, "Patch slicing"): resizes an h' x w' feature map to
the P x P patch grid. Downsampling is max-pooling with stride s = 1 and padding p = 0, so the
output size o = (w - f + 2p) / s + 1 gives the window f = w - o + 1; upsampling is bilinear
interpolation; a map already of size P is passed through.
"""

import keras


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
            features = keras.ops.image.resize(features, (self.grid, self.grid),
                                              interpolation="bilinear")
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
