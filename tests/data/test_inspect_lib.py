"""Tests of chestxray_tf/data/inspect_lib.py: validating a built set, drawing examples."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from chestxray_tf.data import inspect_lib
from chestxray_tf.data import manifest as manifest_lib


def _copy(built_set, tmp_path):
    return shutil.copytree(built_set, tmp_path / "set")


def test_validate_recounts_what_the_manifest_says(built_set):
    manifest = manifest_lib.read_manifest(built_set)
    report = inspect_lib.validate(built_set)
    assert report["num_images"] == manifest["num_images"]
    assert report["counts"] == manifest["counts"]
    assert report["shards"] == {s["file"]: s["count"] for s in manifest["shards"]}


def test_validate_reports_a_wrong_shard_count(built_set, tmp_path):
    copy = _copy(built_set, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][1]["count"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{manifest['shards'][1]['file']} holds \d+ records, "
                                         "the manifest says"):
        inspect_lib.validate(copy)


def test_validate_reports_rows_of_metadata_without_records(built_set, tmp_path):
    copy = _copy(built_set, tmp_path)
    lines = (copy / "metadata.csv").read_text().splitlines()
    extra = lines[1].replace(lines[1].split(",")[0], "99999999_000.png", 1)
    (copy / "metadata.csv").write_text("\n".join(lines + [extra]) + "\n")
    with pytest.raises(ValueError, match=r"1 rows of metadata.csv have no record.*99999999_000"):
        inspect_lib.validate(copy)


def test_validate_reports_records_away_from_their_metadata_position(built_set, tmp_path):
    copy = _copy(built_set, tmp_path)
    table = manifest_lib.read_metadata(copy)
    first = table[table["shard_index"] == 0].index[0]
    table.loc[first, "shard_index"] = 1
    table.to_csv(copy / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"shard_index of 1 images differs between the records "
                                         "and metadata.csv"):
        inspect_lib.validate(copy)


def test_validate_reports_counts_that_differ(built_set, tmp_path):
    copy = _copy(built_set, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["counts"]["class"]["Mass"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"counts \['class'\]"):
        inspect_lib.validate(copy)


def test_validate_names_a_truncated_shard(built_set, tmp_path):
    copy = _copy(built_set, tmp_path)
    shard = manifest_lib.read_manifest(copy)["shard_paths"][0]
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:-50])
    with pytest.raises(ValueError, match=f"shard {shard} is unreadable"):
        inspect_lib.validate(copy)


def test_show_draws_boxed_examples_first(built_set, tmp_path):
    table = manifest_lib.read_metadata(built_set).set_index("image_id")
    written = inspect_lib.show(built_set, 3, tmp_path / "show")
    assert len(written) == 3
    for path in written:
        image_id = path.rsplit("/", 1)[1]
        assert table.loc[image_id, "has_box"]
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (inspect_lib.SHOW_SIZE, inspect_lib.SHOW_SIZE, 3)  # up-sampled
        coloured = (pixels[..., 0] != pixels[..., 1]) | (pixels[..., 1] != pixels[..., 2])
        assert coloured.any()  # the grey image got coloured box outlines
    assert inspect_lib.show(built_set, 3, tmp_path / "show") == written  # a re-run: kept
    with open(written[0], "wb") as f:
        f.write(b"a user's file")
    with pytest.raises(FileExistsError, match=written[0]):
        inspect_lib.show(built_set, 3, tmp_path / "show")
    assert open(written[0], "rb").read() == b"a user's file"


def test_draw_boxes_keeps_a_border_label_inside_the_image():
    """A box at the right edge: its class name is moved in, drawn whole on a dark band."""
    image = inspect_lib.draw_boxes(np.full((64, 64), 128, np.uint8),
                                   np.array([[0.0, 0.9, 0.2, 1.0]]), np.array([10]), 256)
    pixels = np.asarray(image).astype(int)
    assert pixels.shape == (256, 256, 3)
    band = (pixels.sum(axis=-1) == 0)
    columns = np.flatnonzero(band.any(axis=0))
    assert len(columns) > 40 and columns.max() < 256 - 1  # the name's band is whole, inside


def test_draw_boxes_outlines_the_box():
    image = inspect_lib.draw_boxes(np.zeros((32, 32), np.uint8), np.array([[0.25, 0.5, 0.75, 1.0]]),
                                   np.array([0]))
    pixels = np.asarray(image)
    assert pixels[8, 16:32].any(axis=-1).all() and pixels[8:24, 16].any(axis=-1).all()
    assert not pixels[2, 2].any() and not pixels[16, 8].any()
