"""The TFRecord schema: the one place that both writes and parses `tf.train.Example` (SPEC §0).

One record per image. Keys (all required; `SCHEMA_VERSION` is bumped whenever one changes):

| key | type | what |
|---|---|---|
| `schema_version` | int64 | `SCHEMA_VERSION` of the writer |
| `image/encoded` | bytes | grey image: PNG file, or raw uint8 pixels row-major [height, width] |
| `image/encoding` | bytes | `png` or `raw` (one per data set, also in manifest.json) |
| `image/height`, `image/width` | int64 | stored size in pixels |
| `image_id` | bytes | NIH file name, e.g. `00000150_000.png` |
| `patient_id`, `age` | int64 | |
| `view`, `sex` | bytes | `PA` / `AP`, `M` / `F` |
| `labels` | int64 [14] | multi-hot, in `labels.CLASS_NAMES` order |
| `boxes/yxyx` | float [4 N] | N boxes, normalised (ymin, xmin, ymax, xmax), flattened |
| `boxes/label` | int64 [N] | class id of each box (`Infiltrate` boxes carry `Infiltration`'s id) |
| `fold` | int64 | fold from `nih.assign_folds`, or `NO_FOLD` |
| `split` | bytes | `train_val` / `test` (official lists), or `SPLIT_UNKNOWN` |

Writing runs in plain Python (protobuf); parsing is graph code for `tf.data`.
"""

import numpy as np
import tensorflow as tf

from chestxray_tf import labels as labels_lib

SCHEMA_VERSION = 1
ENCODINGS = ("png", "raw")
NO_FOLD = -1
SPLIT_UNKNOWN = "unknown"
SPLITS = ("train_val", "test", SPLIT_UNKNOWN)

_VERSION_SPEC = {"schema_version": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
_FEATURE_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/encoding": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "patient_id": tf.io.FixedLenFeature([], tf.int64),
    "age": tf.io.FixedLenFeature([], tf.int64),
    "view": tf.io.FixedLenFeature([], tf.string),
    "sex": tf.io.FixedLenFeature([], tf.string),
    "labels": tf.io.FixedLenFeature([labels_lib.NUM_CLASSES], tf.int64),
    "boxes/yxyx": tf.io.VarLenFeature(tf.float32),
    "boxes/label": tf.io.VarLenFeature(tf.int64),
    "fold": tf.io.FixedLenFeature([], tf.int64),
    "split": tf.io.FixedLenFeature([], tf.string),
}


def check_schema_version(version, source):
    """Raises ValueError when `version` (of a manifest or record in `source`) is not readable."""
    if not isinstance(version, (int, np.integer)) or version < 1:
        raise ValueError(f"{source}: schema_version {version!r} is not a TFRecord schema version "
                         "of chestxray_tf")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{source} was written with TFRecord schema version {version}, newer than the "
            f"version {SCHEMA_VERSION} this chestxray_tf reads: update chestxray_tf or rebuild "
            "the shards")


def _bytes(*values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[
        v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values]))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def serialize(*, image_bytes, encoding, height, width, image_id, patient_id, age, view, sex,
              labels, boxes_yxyx, box_labels, fold=NO_FOLD, split=SPLIT_UNKNOWN):
    """Serialises one image record to `tf.train.Example` bytes.

    Args:
        image_bytes: PNG file bytes, or raw uint8 pixels (height * width bytes).
        encoding: 'png' or 'raw'.
        height, width: stored image size.
        image_id, patient_id, age, view, sex: the image's metadata.
        labels: [14] 0/1 multi-hot in `labels.CLASS_NAMES` order.
        boxes_yxyx: [N, 4] normalised (ymin, xmin, ymax, xmax), N may be 0.
        box_labels: [N] class ids.
        fold: fold id, or NO_FOLD.
        split: 'train_val', 'test' or SPLIT_UNKNOWN.

    Raises:
        ValueError: a field out of its domain (the message names `image_id`).
    """
    labels = np.asarray(labels, dtype=np.int64)
    boxes = np.asarray(boxes_yxyx, dtype=np.float32).reshape(-1, 4)
    box_labels = np.asarray(box_labels, dtype=np.int64).reshape(-1)
    problems = []
    if encoding not in ENCODINGS:
        problems.append(f"encoding {encoding!r} is not one of {ENCODINGS}")
    if encoding == "raw" and len(image_bytes) != height * width:
        problems.append(f"{len(image_bytes)} raw bytes for a {height}x{width} image")
    if labels.shape != (labels_lib.NUM_CLASSES,) or not np.isin(labels, (0, 1)).all():
        problems.append(f"labels {labels.tolist()} are not {labels_lib.NUM_CLASSES} 0/1 values")
    if len(box_labels) != len(boxes):
        problems.append(f"{len(boxes)} boxes but {len(box_labels)} box labels")
    if ((box_labels < 0) | (box_labels >= labels_lib.NUM_CLASSES)).any():
        problems.append(
            f"box class ids {box_labels.tolist()} outside [0, {labels_lib.NUM_CLASSES})")
    if len(boxes) and ((boxes < 0).any() or (boxes > 1).any()
                       or (boxes[:, 2:] <= boxes[:, :2]).any()):
        problems.append(f"boxes {boxes.tolist()} are not normalised yxyx boxes with area")
    if split not in SPLITS:
        problems.append(f"split {split!r} is not one of {SPLITS}")
    if problems:
        raise ValueError(f"record of image {image_id}: " + "; ".join(problems))
    feature = {
        "schema_version": _ints([SCHEMA_VERSION]),
        "image/encoded": _bytes(image_bytes),
        "image/encoding": _bytes(encoding),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image_id": _bytes(image_id),
        "patient_id": _ints([patient_id]),
        "age": _ints([age]),
        "view": _bytes(view),
        "sex": _bytes(sex),
        "labels": _ints(labels),
        "boxes/yxyx": _floats(boxes.reshape(-1)),
        "boxes/label": _ints(box_labels),
        "fold": _ints([fold]),
        "split": _bytes(split),
    }
    proto = tf.train.Example(features=tf.train.Features(feature=feature))
    return proto.SerializeToString(deterministic=True)  # map keys sorted: same bytes anywhere


def parse(serialized):
    """Parses one serialised record (graph code) -> dict of tensors.

    The schema version is read and checked first, so a record of a newer schema fails with a
    clear message instead of a missing-key error.

    Returns:
        dict with the keys of the table above, except `boxes/yxyx` -> `boxes` float32 [N, 4] and
        `boxes/label` -> `box_labels` int64 [N]; `labels` int64 [14].

    Raises (when run):
        InvalidArgumentError: the record's schema version is newer than SCHEMA_VERSION.
    """
    version = tf.io.parse_single_example(serialized, _VERSION_SPEC)["schema_version"]
    check = tf.debugging.assert_less_equal(
        version, tf.constant(SCHEMA_VERSION, tf.int64),
        message=(f"TFRecord written with a schema version newer than {SCHEMA_VERSION}, the "
                 "version this chestxray_tf reads: update chestxray_tf or rebuild the shards. "
                 "Record schema_version:"))
    with tf.control_dependencies([check]):
        serialized = tf.identity(serialized)
    features = tf.io.parse_single_example(serialized, _FEATURE_SPEC)
    features["schema_version"] = version
    features["boxes"] = tf.reshape(tf.sparse.to_dense(features.pop("boxes/yxyx")), [-1, 4])
    features["box_labels"] = tf.sparse.to_dense(features.pop("boxes/label"))
    return features


def decode_image(features, encoding, size=None):
    """Decodes the image of parsed `features` -> uint8 [height, width, 1].

    Args:
        features: output of `parse`.
        encoding: the data set's encoding ('png' or 'raw', from manifest.json).
        size: the stored size when known (sets the static shape).
    """
    if encoding == "png":
        image = tf.io.decode_png(features["image/encoded"], channels=1, dtype=tf.uint8)
    elif encoding == "raw":
        pixels = tf.io.decode_raw(features["image/encoded"], tf.uint8)
        image = tf.reshape(pixels, tf.stack([features["image/height"], features["image/width"],
                                             tf.constant(1, tf.int64)]))
    else:
        raise ValueError(f"encoding {encoding!r} is not one of {ENCODINGS}")
    if size is not None:
        image = tf.ensure_shape(image, [size, size, 1])
    return image
