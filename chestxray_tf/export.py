"""SavedModel export with serving signatures that need nothing but TensorFlow to run.

`serving_default` takes a batch of encoded PNG or JPEG images (a string tensor `images`);
`serving_float` takes already-decoded pixels (`pixels`, float32 [B, H, W, C] in [0, 255],
C = 1 or 3). Both turn each image to grey, pad it to a square (centred, black, as
`chestxray_tf.io.pad_to_square` does, so a non-square image keeps its aspect), resize it to the
model's input size, scale it as in training, and return the model's output dict (Li et al.:
`image_probs` [B, K], `patch_probs` [B, P, P, K]) plus the regions of its localization map
(the output the registry names the paper's `map_key`; no layer is named, so every paper's
model exports through this path):

* `region_boxes` [B, K, 4]: normalised (ymin, xmin, ymax, xmax) in the frame of the input
  image (the padding taken off, clipped to the image) of the bounding box of all the map cells
  with value > the region threshold (Li et al. 2018, Sec. 3.3: "discrete regions count as one
  region", T_s = `config.eval.region_threshold`, fixed at export); zeros when no cell passes.
* `region_scores` [B, K]: the largest map value in the region; 0 when there is none.

The SavedModel is written with `tf.saved_model.save` from a `tf.Module` that tracks the Keras
model once, so its variables are stored once. `assets.extra/chestxray_tf.json` (read with
`read_metadata`) holds what a client needs to read the outputs: the class names in the order of
the K columns, the output keys of the map and the scores, the input size, the normalisation and
the region threshold.
"""

import json
import os

import tensorflow as tf

from chestxray_tf.data import pipeline
from chestxray_tf.labels import CLASS_NAMES
from chestxray_tf.models import registry

METADATA_FILE = os.path.join("assets.extra", "chestxray_tf.json")
REGION_KEYS = ("region_boxes", "region_scores")


def serving_metadata(config, region_threshold=None):
    """What the serving signatures compute and how to read their outputs, from a run's config.

    Args:
        config: the run's config (`model.name`, `data.image_size`, `data.normalization`,
            `eval.region_threshold`).
        region_threshold: the map threshold of the region outputs (default: the config's).
    """
    paper = registry.get_paper(config.model.name)
    if region_threshold is None:
        region_threshold = config.eval.region_threshold
    return {"model": config.model.name, "config_name": config.get("name", ""),
            "class_names": list(CLASS_NAMES), "image_size": int(config.data.image_size),
            "normalization": config.data.normalization, "map_key": paper.map_key,
            "score_key": paper.score_key, "region_threshold": float(region_threshold)}


def pad_to_square(image):
    """Grey [H, W, C] -> ([S, S, C] centred on black, S = max(H, W); int32 [2] (H, W))."""
    size = tf.shape(image)[:2]
    side = tf.reduce_max(size)
    before = (side - size) // 2
    paddings = tf.stack([before, side - size - before], axis=1)
    return tf.pad(image, tf.concat([paddings, [[0, 0]]], axis=0)), size


def region_boxes(maps, threshold):
    """Per image and class, the bounding box of the map cells with value > threshold.

    Args:
        maps: [B, h, w, K] localization maps in [0, 1].
        threshold: T_s.

    Returns:
        (float32 [B, K, 4] normalised (ymin, xmin, ymax, xmax) over the map's frame, cell (r, c)
        covering [r / h, (r + 1) / h) x [c / w, (c + 1) / w); float32 [B, K] the largest map
        value; both zero where no cell passes).
    """
    maps = tf.cast(maps, tf.float32)
    passing = maps > threshold
    rows = tf.cast(tf.reduce_any(passing, axis=2), tf.int32)   # [B, h, K]
    cols = tf.cast(tf.reduce_any(passing, axis=1), tf.int32)   # [B, w, K]
    found = tf.reduce_any(rows > 0, axis=1)                      # [B, K]

    def extent(lines):
        count = tf.shape(lines)[1]
        first = tf.argmax(lines, axis=1, output_type=tf.int32)
        stop = count - tf.argmax(tf.reverse(lines, [1]), axis=1, output_type=tf.int32)
        count = tf.cast(count, tf.float32)
        return tf.cast(first, tf.float32) / count, tf.cast(stop, tf.float32) / count

    (ymin, ymax), (xmin, xmax) = extent(rows), extent(cols)
    boxes = tf.stack([ymin, xmin, ymax, xmax], axis=-1) * tf.cast(found, tf.float32)[..., None]
    scores = tf.where(found, tf.reduce_max(maps, axis=[1, 2]), 0.0)
    return boxes, scores


def boxes_to_input_frame(boxes, sizes):
    """Normalised yxyx boxes [B, K, 4] on the padded square -> normalised in the frame of the
    input image of size `sizes` [B, 2] (H, W), clipped to [0, 1] (an all-zero box stays zero)."""
    side = tf.reduce_max(sizes, axis=1, keepdims=True)
    before = tf.cast((side - sizes) // 2, tf.float32)              # [B, 2] (top, left)
    side, sizes = tf.cast(side, tf.float32), tf.cast(sizes, tf.float32)
    offset = tf.tile(before, [1, 2])[:, None, :]                   # top, left, top, left
    scale = tf.tile(sizes, [1, 2])[:, None, :]
    return tf.clip_by_value((boxes * side[:, None, :] - offset) / scale, 0.0, 1.0)


class ServingModule(tf.Module):
    """The model plus the preprocessing and region outputs of `metadata` (`serving_metadata`),
    as `tf.function` signatures."""

    def __init__(self, model, metadata):
        super().__init__(name="chestxray_tf_serving")
        self.model = model
        self._metadata = dict(metadata)
        self._image_size = int(metadata["image_size"])

    def _prepare(self, grey_uint8):
        square, size = pad_to_square(grey_uint8)
        return pipeline.preprocess_image(square, self._image_size,
                                         self._metadata["normalization"]), size

    def _decode(self, encoded):
        image = tf.io.decode_image(encoded, channels=1, dtype=tf.uint8, expand_animations=False)
        return self._prepare(image)

    def _serve(self, fn, elements):
        spec = (tf.TensorSpec([self._image_size, self._image_size, 3], tf.float32),
                tf.TensorSpec([2], tf.int32))
        batch, sizes = tf.map_fn(fn, elements, fn_output_signature=spec)
        outputs = dict(self.model(batch, training=False))
        clash = sorted(set(outputs) & set(REGION_KEYS))
        if clash:
            raise ValueError(f"the model already has outputs named {clash}")
        classes = outputs[self._metadata["score_key"]].shape[-1]
        if classes != len(self._metadata["class_names"]):
            raise ValueError(f"the model scores {classes} classes, the metadata names "
                             f"{len(self._metadata['class_names'])}")
        boxes, scores = region_boxes(outputs[self._metadata["map_key"]],
                                     self._metadata["region_threshold"])
        outputs["region_boxes"] = boxes_to_input_frame(boxes, sizes)
        outputs["region_scores"] = scores
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        return self._serve(self._decode, images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.float32,
                                                name="pixels")])
    def serve_float(self, pixels):
        grey = tf.cond(tf.shape(pixels)[-1] == 3,
                       lambda: tf.image.rgb_to_grayscale(pixels), lambda: pixels[..., :1])
        grey = tf.cast(tf.clip_by_value(tf.round(grey), 0.0, 255.0), tf.uint8)
        return self._serve(self._prepare, grey)


def export_saved_model(model, config, output_dir, region_threshold=None):
    """Writes the SavedModel of `model` (preprocessing from `config.data`) and its metadata to
    `output_dir`; `region_threshold` defaults to `config.eval.region_threshold`."""
    metadata = serving_metadata(config, region_threshold)
    module = ServingModule(model, metadata)
    signatures = {
        "serving_default": module.serve_encoded.get_concrete_function(),
        "serving_float": module.serve_float.get_concrete_function(),
    }
    tf.saved_model.save(module, output_dir, signatures=signatures)
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
