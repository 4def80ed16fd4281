"""SavedModel export with serving signatures that need nothing but TensorFlow to run.

`serving_default` takes a batch of encoded PNG or JPEG images (a string tensor `images`),
decodes each to grey, resizes it to the model's input size, scales it as in training, and
returns the model's output dict (Li et al.: `image_probs` [B, K], `patch_probs` [B, P, P, K]).
`serving_float` takes already-decoded pixels: float32 [B, H, W, C] in [0, 255], C = 1 or 3.

The SavedModel is written with `tf.saved_model.save` from a `tf.Module` that tracks the Keras
model once, so its variables are stored once.
"""

import tensorflow as tf

from chestxray_tf.data import pipeline


class ServingModule(tf.Module):
    """The model plus the preprocessing of `config.data`, as `tf.function` signatures."""

    def __init__(self, model, image_size, normalization):
        super().__init__(name="chestxray_tf_serving")
        self.model = model
        self.image_size = int(image_size)
        self.normalization = normalization

    def _prepare(self, grey_uint8):
        return pipeline.preprocess_image(grey_uint8, self.image_size, self.normalization)

    def _decode(self, encoded):
        image = tf.io.decode_image(encoded, channels=1, dtype=tf.uint8, expand_animations=False)
        return self._prepare(image)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        batch = tf.map_fn(self._decode, images, fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))
        return self.model(batch, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32,
                                                name="pixels")])
    def serve_float(self, pixels):
        grey = tf.cond(tf.shape(pixels)[-1] == 3,
                       lambda: tf.image.rgb_to_grayscale(pixels), lambda: pixels[..., :1])
        grey = tf.cast(tf.clip_by_value(tf.round(grey), 0.0, 255.0), tf.uint8)
        batch = tf.map_fn(self._prepare, grey, fn_output_signature=tf.TensorSpec(
            [self.image_size, self.image_size, 3], tf.float32))
        return self.model(batch, training=False)


def export_saved_model(model, config, output_dir):
    """Writes the SavedModel of `model` (preprocessing from `config.data`) to `output_dir`."""
    module = ServingModule(model, config.data.image_size, config.data.normalization)
    signatures = {
        "serving_default": module.serve_encoded.get_concrete_function(),
        "serving_float": module.serve_float.get_concrete_function(),
    }
    tf.saved_model.save(module, output_dir, signatures=signatures)
    return output_dir
