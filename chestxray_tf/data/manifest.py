"""The description of a built TFRecord set: `manifest.json` and `metadata.csv` (SPEC §0).

A built set is a folder with shards `shard-NNNNN-of-MMMMM.tfrecord`, `manifest.json` (schema
version, class list, image size, encoding, shard list with counts, counts per fold / split /
class, box counts, source checksums, the command, skipped files) and `metadata.csv` (one row per
written image: image_id, patient_id, follow_up, age, sex, view, fold, split, has_box, num_boxes,
shard, shard_index (its position in the shard, from 0), one 0/1 column per class), so that
selections (`nih.li2018_split`, ...) are computed from the folder without reading a shard, and
the input pipeline keeps the selected records by position without parsing them.
"""

import json
import os

import numpy as np
import pandas as pd

from chestxray_tf import labels as labels_lib
from chestxray_tf.data import example
from chestxray_tf.data import nih

MANIFEST = "manifest.json"
METADATA = "metadata.csv"
METADATA_COLUMNS = ("image_id", "patient_id", "follow_up", "age", "sex", "view", "fold", "split",
                    "has_box", "num_boxes", "shard", "shard_index") + labels_lib.CLASS_NAMES
_REQUIRED = ("schema_version", "class_names", "image_size", "encoding", "shards", "num_images")


def shard_name(index, num_shards):
    return f"shard-{index:05d}-of-{num_shards:05d}.tfrecord"


def manifest_file(path):
    """`path` (a built set's folder or its manifest.json) -> the manifest.json path."""
    path = os.fspath(path)
    return os.path.join(path, MANIFEST) if os.path.isdir(path) else path


def write_atomically(path, write):
    """Calls write(tmp_path), then renames tmp_path to `path` (no half file under `path`)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def count_summary(table, box_labels):
    """The manifest's counts: per fold, split, class, and of boxes.

    Args:
        table: one row per image with fold, split, has_box, num_boxes and the class columns.
        box_labels: class id of every box.
    """
    def tally(column):
        return {str(k): int(v) for k, v in sorted(table[column].value_counts().items())}

    per_class_boxes = np.bincount(np.asarray(box_labels, np.int64),
                                  minlength=labels_lib.NUM_CLASSES)
    return {
        "fold": tally("fold"),
        "split": tally("split"),
        "class": {name: int(table[name].sum()) for name in labels_lib.CLASS_NAMES},
        "no_finding": int((table[list(labels_lib.CLASS_NAMES)].sum(axis=1) == 0).sum()),
        "images_with_boxes": int(table["has_box"].sum()),
        "boxes": int(len(box_labels)),
        "boxes_per_class": {name: int(per_class_boxes[k])
                            for k, name in enumerate(labels_lib.CLASS_NAMES)
                            if name in labels_lib.BOXED_CLASSES or per_class_boxes[k]},
        "boxes_per_fold": {
            str(f): int(table.loc[table["fold"] == f, "num_boxes"].sum())
            for f in sorted(table["fold"].unique())},
    }


def write_manifest(output_dir, manifest, metadata):
    """Writes metadata.csv, then manifest.json last (its presence marks a complete set)."""
    write_atomically(os.path.join(output_dir, METADATA),
                     lambda tmp: metadata.loc[:, list(METADATA_COLUMNS)].to_csv(tmp, index=False))

    def dump(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=False)
            f.write("\n")

    write_atomically(os.path.join(output_dir, MANIFEST), dump)


def read_manifest(path):
    """Reads and checks a built set's manifest.json.

    Args:
        path: the set's folder or its manifest.json.

    Returns:
        the manifest dict, plus `dir` (the folder) and `shard_paths` (absolute paths).

    Raises:
        FileNotFoundError, ValueError naming the file and the problem (e.g. a newer schema, a
        class list other than `labels.CLASS_NAMES`).
    """
    file = manifest_file(path)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no {MANIFEST} at {file}: not a TFRecord set built by "
                                "tfrecords_tools.build_nih, or its build did not finish")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"{file}: missing keys {missing}")
    example.check_schema_version(manifest["schema_version"], file)
    if tuple(manifest["class_names"]) != labels_lib.CLASS_NAMES:
        raise ValueError(f"{file}: class list {manifest['class_names']} differs from this "
                         f"package's {list(labels_lib.CLASS_NAMES)}")
    if manifest["encoding"] not in example.ENCODINGS:
        raise ValueError(f"{file}: encoding {manifest['encoding']!r} is not one of "
                         f"{example.ENCODINGS}")
    folder = os.path.dirname(os.path.abspath(file))
    manifest["dir"] = folder
    manifest["shard_paths"] = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
    return manifest


def read_metadata(path):
    """Reads metadata.csv of a built set (folder or manifest path) -> DataFrame."""
    file = os.path.join(os.path.dirname(manifest_file(path)), METADATA)
    if not os.path.exists(file):
        raise FileNotFoundError(f"no {METADATA} beside {manifest_file(path)}")
    table = pd.read_csv(file, dtype={"image_id": str, "sex": str, "view": str, "split": str,
                                     "shard": str}, keep_default_na=False)
    missing = [c for c in METADATA_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{file}: missing columns {missing}"
                         + (" (a set built before chestxray_tf recorded each record's position: "
                            "rebuild it with tfrecords_tools.build_nih)"
                            if missing == ["shard_index"] else ""))
    table["has_box"] = table["has_box"].astype(bool)
    return table


def nih_tables(path):
    """A built set's metadata as `nih` tables -> (nih.NihMetadata, folds Series).

    The images table has nih's columns (plus fold, split, num_boxes, shard); the boxes table is
    empty (boxes live in the shards), which is all that `nih`'s split protocols read.
    """
    table = read_metadata(path)
    boxes = pd.DataFrame({"image_id": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                          **{c: pd.Series(dtype=float) for c in "xywh"}})
    folds = pd.Series(table["fold"].to_numpy(), index=table["image_id"].to_numpy(), name="fold")
    return nih.NihMetadata(images=table, boxes=boxes), folds
