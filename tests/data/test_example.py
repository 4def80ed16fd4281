"""Tests of chestxray_tf/data/example.py: the TFRecord schema round trip and its version check."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from chestxray_tf import labels as labels_lib
from chestxray_tf.data import example


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _fields(pixels, encoding, boxes=((0.1, 0.2, 0.5, 0.6), (0.0, 0.0, 1.0, 0.25)),
            box_labels=(3, 7)):
    height, width = pixels.shape
    labels = np.zeros(labels_lib.NUM_CLASSES, np.int64)
    labels[list(box_labels)] = 1
    return dict(image_bytes=_png(pixels) if encoding == "png" else pixels.tobytes(),
                encoding=encoding, height=height, width=width, image_id="00000150_002.png",
                patient_id=150, age=55, view="AP", sex="F", labels=labels,
                boxes_yxyx=np.asarray(boxes, np.float32).reshape(-1, 4), box_labels=box_labels,
                fold=3, split="test")


@pytest.mark.parametrize("encoding", example.ENCODINGS)
def test_round_trip_keeps_every_field(encoding):
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)
    fields = _fields(pixels, encoding)
    parsed = example.parse(tf.constant(example.serialize(**fields)))
    assert int(parsed["schema_version"]) == example.SCHEMA_VERSION
    assert parsed["image/encoding"].numpy().decode() == encoding
    assert parsed["image_id"].numpy().decode() == "00000150_002.png"
    assert (int(parsed["patient_id"]), int(parsed["age"])) == (150, 55)
    assert (parsed["view"].numpy(), parsed["sex"].numpy()) == (b"AP", b"F")
    assert (int(parsed["fold"]), parsed["split"].numpy()) == (3, b"test")
    np.testing.assert_array_equal(parsed["labels"].numpy(), fields["labels"])
    np.testing.assert_array_equal(parsed["boxes"].numpy(), fields["boxes_yxyx"])
    np.testing.assert_array_equal(parsed["box_labels"].numpy(), [3, 7])
    decoded = example.decode_image(parsed, encoding, size=24).numpy()
    assert decoded.shape == (24, 24, 1) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[..., 0], pixels)


def test_png_and_raw_records_decode_to_identical_pixels():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    decoded = [example.decode_image(example.parse(tf.constant(example.serialize(
        **_fields(pixels, encoding)))), encoding).numpy() for encoding in ("png", "raw")]
    np.testing.assert_array_equal(decoded[0], decoded[1])


def test_image_without_boxes_parses_to_empty_box_tensors():
    fields = _fields(np.zeros((8, 8), np.uint8), "raw", boxes=np.zeros((0, 4)), box_labels=())
    parsed = example.parse(tf.constant(example.serialize(**fields)))
    assert parsed["boxes"].shape == (0, 4)
    assert parsed["box_labels"].shape == (0,)


def test_defaults_mark_fold_and_split_unknown():
    fields = _fields(np.zeros((8, 8), np.uint8), "raw")
    del fields["fold"], fields["split"]
    parsed = example.parse(tf.constant(example.serialize(**fields)))
    assert int(parsed["fold"]) == example.NO_FOLD
    assert parsed["split"].numpy().decode() == example.SPLIT_UNKNOWN


def test_record_of_a_newer_schema_is_a_clear_error():
    proto = tf.train.Example.FromString(example.serialize(**_fields(np.zeros((8, 8), np.uint8),
                                                                     "raw")))
    proto.features.feature["schema_version"].int64_list.value[0] = example.SCHEMA_VERSION + 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="newer than"):
        example.parse(tf.constant(proto.SerializeToString()))


def test_record_of_a_newer_schema_fails_inside_tf_data():
    proto = tf.train.Example.FromString(example.serialize(**_fields(np.zeros((8, 8), np.uint8),
                                                                     "raw")))
    proto.features.feature["schema_version"].int64_list.value[0] = example.SCHEMA_VERSION + 5
    ds = tf.data.Dataset.from_tensors(proto.SerializeToString()).map(example.parse)
    with pytest.raises(tf.errors.InvalidArgumentError, match="update chestxray_tf"):
        list(ds)


def test_check_schema_version_names_the_source():
    example.check_schema_version(example.SCHEMA_VERSION, "m.json")
    with pytest.raises(ValueError, match=r"m\.json.*newer"):
        example.check_schema_version(example.SCHEMA_VERSION + 1, "m.json")
    with pytest.raises(ValueError, match="not a TFRecord schema version"):
        example.check_schema_version("1", "m.json")


@pytest.mark.parametrize("change, message", [
    (dict(encoding="jpeg"), "encoding"),
    (dict(image_bytes=b"\0" * 10), "raw bytes"),
    (dict(labels=[1] * 13), "labels"),
    (dict(labels=[2] + [0] * 13), "labels"),
    (dict(box_labels=[3]), "box labels"),
    (dict(box_labels=[3, 14]), "class ids"),
    (dict(boxes_yxyx=[[0.5, 0.2, 0.4, 0.6], [0, 0, 1, 1]]), "area"),
    (dict(boxes_yxyx=[[0.1, 0.2, 1.5, 0.6], [0, 0, 1, 1]]), "normalised"),
    (dict(split="val"), "split"),
])
def test_serialize_rejects_bad_fields_naming_the_image(change, message):
    fields = dict(_fields(np.zeros((8, 8), np.uint8), "raw"), **change)
    with pytest.raises(ValueError, match=f"00000150_002.png.*{message}"):
        example.serialize(**fields)
