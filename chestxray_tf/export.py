"""SavedModel export with serving signatures that need nothing but TensorFlow to run.

`serving_default` takes a batch of encoded PNG or JPEG images (a string tensor `images`);
`serving_float` takes already-decoded pixels (`pixels`, float32 [B, H, W, C] in [0, 255],
C = 1 or 3). Both turn each image to grey, pad it to a square (centred, black, as
`chestxray_tf.io.pad_to_square` does, so a non-square image keeps its aspect), resize it to the
model's input size, scale it as in training, and return the model's output dict plus the
task's inference rule (`chestxray_tf.tasks`; the same rule evaluation uses):

* `scores` [B, K]: the task's image-level probabilities (`Task.scores`);
* `maps` [B, h, w, K]: its localization maps in [0, 1] (`Task.maps`);
* `region_boxes` [B, K, R, 4]: normalised (ymin, xmin, ymax, xmax) in the frame of the input
  image (the padding taken off, clipped to the image) of the task's regions on the maps
  (`Task.region_rule`, `chestxray_tf.inference`: Li et al., every cell > T_s as one region,
  R = 1); zeros for a slot without a region;
* `region_scores` [B, K, R]: the largest map value of each region; 0 for an empty slot.

The SavedModel is written by `keras.export.ExportArchive`, whose variables the C++ loader of
`saved_model_cli run` and TensorFlow Serving finds (a `tf.Module` holding a Keras 3 model
saved with `tf.saved_model.save` does not load there). `assets.extra/chestxray_tf.json`
(`read_metadata`) holds what a client needs to read the outputs: the class names in the order
of the K columns, the input size, the normalisation and the region rule. Images larger than
`MAX_PIXELS` or more elongated than `MAX_ASPECT` (the bounds of `chestxray_tf.io`) fail the
call with a message naming the limit
(padding a 15000 x 1 image to a square would take gigabytes).
"""

import json
import os

import keras
import tensorflow as tf

from chestxray_tf import inference, tasks as tasks_lib
from chestxray_tf import io as io_lib
from chestxray_tf.data import pipeline
from chestxray_tf.labels import CLASS_NAMES

METADATA_FILE = os.path.join("assets.extra", "chestxray_tf.json")
ADDED_KEYS = ("scores", "maps", "region_boxes", "region_scores")
MAX_PIXELS = io_lib.MAX_IMAGE_PIXELS
MAX_ASPECT = int(io_lib.MAX_ASPECT_RATIO)


def serving_metadata(config, region_threshold=None):
    """What the serving signatures compute and how to read their outputs, from a run's config.

    Args:
        config: the run's config (`task`, `data.image_size`, `data.normalization`, `eval`).
        region_threshold: the map threshold of the region outputs (default: the config's).
    """
    task = tasks_lib.get_task(config.task)(config)
    rule = task.region_rule(region_threshold)
    return {"task": config.task, "config_name": config.get("name", ""),
            "class_names": list(CLASS_NAMES), "image_size": int(config.data.image_size),
            "normalization": config.data.normalization, "map_key": "maps",
            "score_key": "scores", "region_threshold": float(rule.threshold),
            "region_rule": {"threshold": float(rule.threshold), "inclusive": rule.inclusive,
                            "keep": rule.keep, "max_regions": rule.max_regions}}


def pad_to_square(image):
    """Grey [H, W, C] -> ([S, S, C] centred on black, S = max(H, W); int32 [2] (H, W))."""
    size = tf.shape(image)[:2]
    side = tf.reduce_max(size)
    before = (side - size) // 2
    paddings = tf.stack([before, side - size - before], axis=1)
    return tf.pad(image, tf.concat([paddings, [[0, 0]]], axis=0)), size


def boxes_to_input_frame(boxes, sizes):
    """Normalised yxyx boxes [B, K, R, 4] on the padded square -> normalised in the frame of
    the input image of size `sizes` [B, 2] (H, W), clipped to [0, 1] (a zero box stays zero)."""
    side = tf.reduce_max(sizes, axis=1, keepdims=True)
    before = tf.cast((side - sizes) // 2, tf.float32)              # [B, 2] (top, left)
    side, sizes = tf.cast(side, tf.float32), tf.cast(sizes, tf.float32)
    offset = tf.tile(before, [1, 2])[:, None, None, :]             # top, left, top, left
    scale = tf.tile(sizes, [1, 2])[:, None, None, :]
    found = tf.cast(tf.reduce_any(boxes != 0.0, axis=-1, keepdims=True), tf.float32)
    framed = tf.clip_by_value((boxes * side[:, None, None, :] - offset) / scale, 0.0, 1.0)
    return framed * found


class Serving:
    """The model plus the preprocessing and the task's inference rule of `metadata`
    (`serving_metadata`): `serve_encoded(images)` and `serve_float(pixels)`, the bodies of the
    two signatures (also run in process by `chestxray_tf.predict` on a workdir)."""

    def __init__(self, model, metadata, config):
        self.model = model
        self.metadata = dict(metadata)
        self.task = tasks_lib.get_task(config.task)(config)
        self.rule = self.task.region_rule(metadata["region_threshold"])
        self._image_size = int(metadata["image_size"])
        self.serve_encoded = tf.function(self._serve_encoded, input_signature=[
            tf.TensorSpec([None], tf.string, name="images")])
        self.serve_float = tf.function(self._serve_float, input_signature=[
            tf.TensorSpec([None, None, None, None], tf.float32, name="pixels")])

    def _prepare(self, grey_uint8):
        size = tf.shape(grey_uint8)[:2]
        longer = tf.cast(tf.reduce_max(size), tf.int64)
        shorter = tf.cast(tf.reduce_min(size), tf.int64)
        checks = [
            tf.debugging.assert_less_equal(
                tf.cast(size[0], tf.int64) * tf.cast(size[1], tf.int64), tf.constant(
                    MAX_PIXELS, tf.int64),
                message=f"image larger than MAX_PIXELS = {MAX_PIXELS} pixels"),
            tf.debugging.assert_less_equal(
                longer, shorter * MAX_ASPECT,
                message=f"image more elongated than MAX_ASPECT = {MAX_ASPECT}:1")]
        with tf.control_dependencies(checks):
            square, size = pad_to_square(grey_uint8)
        return pipeline.preprocess_image(square, self._image_size,
                                         self.metadata["normalization"]), size

    def _decode(self, encoded):
        image = tf.io.decode_image(encoded, channels=1, dtype=tf.uint8, expand_animations=False)
        return self._prepare(image)

    def _serve(self, fn, elements):
        spec = (tf.TensorSpec([self._image_size, self._image_size, 3], tf.float32),
                tf.TensorSpec([2], tf.int32))
        batch, sizes = tf.map_fn(fn, elements, fn_output_signature=spec)
        outputs = dict(self.model(batch, training=False))
        clash = sorted(set(outputs) & set(ADDED_KEYS))
        if clash:
            raise ValueError(f"the model already has outputs named {clash}")
        scores, maps = self.task.scores(outputs), self.task.maps(outputs)
        if scores.shape[-1] != len(self.metadata["class_names"]):
            raise ValueError(f"the model scores {scores.shape[-1]} classes, the metadata names "
                             f"{len(self.metadata['class_names'])}")
        boxes, region_scores = inference.region_boxes(maps, self.rule)
        outputs.update(scores=tf.cast(scores, tf.float32), maps=tf.cast(maps, tf.float32),
                       region_boxes=boxes_to_input_frame(boxes, sizes),
                       region_scores=region_scores)
        return outputs

    def _serve_encoded(self, images):
        return self._serve(self._decode, images)

    def _serve_float(self, pixels):
        grey = tf.cond(tf.shape(pixels)[-1] == 3,
                       lambda: tf.image.rgb_to_grayscale(pixels), lambda: pixels[..., :1])
        grey = tf.cast(tf.clip_by_value(tf.round(grey), 0.0, 255.0), tf.uint8)
        return self._serve(self._prepare, grey)


def export_saved_model(model, config, output_dir, region_threshold=None):
    """Writes the SavedModel of `model` (preprocessing from `config.data`, the inference rule
    of `config.task`) and its metadata to `output_dir`, which must not exist yet (an export is
    never overwritten); `region_threshold` defaults to `config.eval.region_threshold`."""
    if tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir):
        raise FileExistsError(f"{output_dir} exists and is not empty: an export is never "
                              "overwritten; choose another --output or remove it")
    metadata = serving_metadata(config, region_threshold)
    serving = Serving(model, metadata, config)
    archive = keras.export.ExportArchive()
    # Not `archive.track(model)`: the archive then stores every variable twice (once as the
    # Keras variable, once as the endpoints' tf.Variable); the endpoints' own are enough.
    archive.add_endpoint("serving_default", serving.serve_encoded)
    archive.add_endpoint("serving_float", serving.serve_float)
    archive.write_out(output_dir, verbose=False)
    tf.io.gfile.makedirs(os.path.join(output_dir, os.path.dirname(METADATA_FILE)))
    with tf.io.gfile.GFile(os.path.join(output_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    return output_dir


def read_metadata(saved_model_dir):
    """The `serving_metadata` dict an exported SavedModel carries."""
    path = os.path.join(saved_model_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: {saved_model_dir} was not written by "
                                "chestxray_tf.export (or is older than its metadata file)")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
