"""Tests of chestxray_tf/data/manifest.py: reading a built set's manifest and metadata."""

import json
import os
import shutil

import pytest

from chestxray_tf import labels as labels_lib
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib


def _edit(built_set, tmp_path, change):
    copy = shutil.copytree(built_set, tmp_path / "set")
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_read_manifest_accepts_folder_or_file(built_set):
    from_dir = manifest_lib.read_manifest(built_set)
    from_file = manifest_lib.read_manifest(built_set / "manifest.json")
    assert from_dir == from_file
    assert from_dir["shard_paths"] == [os.path.join(str(built_set), manifest_lib.shard_name(i, 4))
                                       for i in range(4)]


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no manifest.json at {tmp_path}"):
        manifest_lib.read_manifest(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(schema_version=example.SCHEMA_VERSION + 1), "newer than"),
    (lambda m: m.pop("encoding"), r"missing keys \['encoding'\]"),
    (lambda m: m.update(encoding="jpeg"), "encoding 'jpeg'"),
    (lambda m: m.update(class_names=list(reversed(labels_lib.CLASS_NAMES))), "class list"),
])
def test_bad_manifest_is_a_clear_error(built_set, tmp_path, change, message):
    copy = _edit(built_set, tmp_path, change)
    with pytest.raises(ValueError, match=message):
        manifest_lib.read_manifest(copy)


def test_nih_tables_rebuild_the_split_inputs(built_set):
    meta, folds = manifest_lib.nih_tables(built_set)
    table = manifest_lib.read_metadata(built_set)
    assert list(meta.images["image_id"]) == list(table["image_id"])
    assert meta.images["has_box"].dtype == bool
    assert meta.images["has_box"].sum() == manifest_lib.read_manifest(
        built_set)["counts"]["images_with_boxes"]
    assert folds.to_dict() == dict(zip(table["image_id"], table["fold"]))
    assert meta.boxes.empty


def test_count_summary_counts_by_hand():
    import pandas as pd
    table = pd.DataFrame({"image_id": ["a", "b", "c"], "fold": [0, 1, 1],
                          "split": ["test", "train_val", "train_val"],
                          "has_box": [True, False, True], "num_boxes": [2, 0, 1],
                          **{c: [0, 0, 0] for c in labels_lib.CLASS_NAMES}})
    table["Mass"] = [1, 0, 1]
    counts = manifest_lib.count_summary(table, [4, 4, 0])
    assert counts["fold"] == {"0": 1, "1": 2}
    assert counts["split"] == {"test": 1, "train_val": 2}
    assert counts["class"]["Mass"] == 2 and counts["no_finding"] == 1
    assert counts["boxes"] == 3 and counts["images_with_boxes"] == 2
    assert counts["boxes_per_class"]["Mass"] == 2 and counts["boxes_per_class"]["Atelectasis"] == 1
    assert counts["boxes_per_fold"] == {"0": 2, "1": 1}


def test_metadata_without_record_positions_asks_for_a_rebuild(built_set, tmp_path):
    copy = shutil.copytree(built_set, tmp_path / "set")
    table = manifest_lib.read_metadata(copy).drop(columns="shard_index")
    table.to_csv(copy / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"metadata.csv: missing columns \['shard_index'\] \(a "
                                         "set built before .* rebuild it"):
        manifest_lib.read_metadata(copy)
