"""Tests of chestxray_tf/data/build.py on a synthetic folder in the NIH layout."""

import csv
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from chestxray_tf import labels as labels_lib
from chestxray_tf.data import build
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import nih

SOURCE_SIZE = 64
STORED_SIZE = 32


@pytest.fixture(scope="module")
def nih_dir(nih_source):
    return nih_source


@pytest.fixture(scope="module")
def built(nih_dir, tmp_path_factory):
    """encoding -> output folder of a build of `nih_dir` at STORED_SIZE."""
    out = {}
    for encoding in example.ENCODINGS:
        out[encoding] = tmp_path_factory.mktemp(f"built_{encoding}")
        build.build(nih_dir, out[encoding], image_size=STORED_SIZE, num_shards=3,
                    encoding=encoding, num_workers=1, progress=False, command="test")
    return out


def _records(out_dir):
    """image_id -> parsed record (numpy) of every shard of a built set."""
    manifest = manifest_lib.read_manifest(out_dir)
    found = {}
    for path in manifest["shard_paths"]:
        for features in tf.data.TFRecordDataset(path).map(example.parse):
            image = example.decode_image(features, manifest["encoding"]).numpy()[..., 0]
            record = {k: v.numpy() for k, v in features.items()}
            found[record["image_id"].decode()] = dict(record, pixels=image)
    return found


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))[1:]


def _copy(nih_dir, tmp_path):
    return shutil.copytree(nih_dir, tmp_path / "nih")


def test_manifest_counts_match_the_metadata(nih_dir, built):
    manifest = manifest_lib.read_manifest(built["png"])
    entries = _csv_rows(nih_dir / "Data_Entry_2017_v2020.csv")
    boxes = _csv_rows(nih_dir / "BBox_List_2017.csv")
    test_list = (nih_dir / "test_list.txt").read_text().split()
    assert manifest["num_images"] == len(entries)
    assert sum(s["count"] for s in manifest["shards"]) == len(entries)
    for name in labels_lib.CLASS_NAMES:
        expected = sum(name in row[1].split("|") for row in entries)
        assert manifest["counts"]["class"][name] == expected, name
    assert manifest["counts"]["no_finding"] == sum(row[1] == "No Finding" for row in entries)
    assert manifest["counts"]["boxes"] == len(boxes)
    assert manifest["counts"]["images_with_boxes"] == len({row[0] for row in boxes})
    assert manifest["counts"]["split"] == {"test": len(test_list),
                                           "train_val": len(entries) - len(test_list)}
    meta = nih.load_metadata(nih_dir / "Data_Entry_2017_v2020.csv", nih_dir / "BBox_List_2017.csv")
    folds = nih.assign_folds(meta, num_folds=5, seed=0)
    assert manifest["counts"]["fold"] == {str(f): int(n)
                                          for f, n in sorted(folds.value_counts().items())}
    assert (manifest["image_size"], manifest["frame_size"], manifest["encoding"]) == (
        STORED_SIZE, SOURCE_SIZE, "png")
    assert manifest["schema_version"] == example.SCHEMA_VERSION
    assert manifest["class_names"] == list(labels_lib.CLASS_NAMES)
    assert manifest["skipped"] == {"count": 0, "files": []}
    assert manifest["command"] == "test"


def test_manifest_records_source_checksums(nih_dir, built):
    sources = manifest_lib.read_manifest(built["png"])["sources"]
    assert set(sources) == {"Data_Entry_2017_v2020.csv", "BBox_List_2017.csv",
                            "train_val_list.txt", "test_list.txt"}
    for name, entry in sources.items():
        assert entry["sha256"] == hashlib.sha256((nih_dir / name).read_bytes()).hexdigest()


def test_metadata_csv_describes_every_record(built):
    table = manifest_lib.read_metadata(built["png"])
    records = _records(built["png"])
    assert sorted(table["image_id"]) == sorted(records)
    for row in table.itertuples(index=False):
        record = records[row.image_id]
        assert row.fold == record["fold"] and row.split == record["split"].decode()
        assert row.num_boxes == len(record["box_labels"]) and row.has_box == (row.num_boxes > 0)
        assert [getattr(row, c) for c in labels_lib.CLASS_NAMES] == record["labels"].tolist()


def test_metadata_csv_gives_each_record_its_shard_and_position(built):
    table = manifest_lib.read_metadata(built["png"])
    for shard in manifest_lib.read_manifest(built["png"])["shard_paths"]:
        ids = [tf.train.Example.FromString(r.numpy()).features.feature["image_id"]
               .bytes_list.value[0].decode() for r in tf.data.TFRecordDataset(shard)]
        rows = table[table["shard"] == shard.rsplit("/", 1)[1]]
        assert dict(zip(rows["shard_index"], rows["image_id"])) == dict(enumerate(ids))


def test_folds_are_patient_disjoint(built):
    table = manifest_lib.read_metadata(built["png"])
    assert table.groupby("patient_id")["fold"].nunique().max() == 1
    assert table["fold"].nunique() == 5


def test_records_hold_the_csv_boxes_normalised_with_canonical_ids(nih_dir, built):
    records = _records(built["png"])
    boxes = _csv_rows(nih_dir / "BBox_List_2017.csv")
    assert any(row[1] == "Infiltrate" for row in boxes), "the fixture must spell Infiltrate"
    per_image = {}
    for image_id, label, x, y, w, h, *_ in boxes:
        x, y, w, h = (float(v) / SOURCE_SIZE for v in (x, y, w, h))
        expected_id = labels_lib.CLASS_NAMES.index("Infiltration" if label == "Infiltrate"
                                                   else label)
        per_image.setdefault(image_id, []).append(([y, x, y + h, x + w], expected_id))
    for image_id, record in records.items():
        expected = per_image.get(image_id, [])
        assert len(record["box_labels"]) == len(expected)
        for box, label in expected:
            k = [np.allclose(b, box, atol=1e-6) for b in record["boxes"]].index(True)
            assert record["box_labels"][k] == label
    infiltration = labels_lib.CLASS_NAMES.index("Infiltration")
    assert any(infiltration in r["box_labels"] for r in records.values())


def test_pixels_are_the_area_resized_source(nih_dir, built):
    records = _records(built["png"])
    for image_id, record in list(records.items())[:8]:
        source = np.asarray(Image.open(nih_dir / "images" / image_id), dtype=np.float64)
        # Area resize by 2: the mean of each 2x2 block (the box filter rounds to nearest).
        reference = source.reshape(STORED_SIZE, 2, STORED_SIZE, 2).mean(axis=(1, 3))
        assert record["pixels"].shape == (STORED_SIZE, STORED_SIZE)
        assert np.abs(record["pixels"] - reference).max() <= 1.0


def test_png_and_raw_builds_hold_identical_pixels(built):
    png, raw = _records(built["png"]), _records(built["raw"])
    assert sorted(png) == sorted(raw)
    for image_id in png:
        np.testing.assert_array_equal(png[image_id]["pixels"], raw[image_id]["pixels"])
    assert manifest_lib.read_manifest(built["raw"])["encoding"] == "raw"


def test_no_temporary_files_are_left(built):
    names = os.listdir(built["png"])
    assert not [n for n in names if ".tmp" in n]
    assert sorted(names) == sorted([manifest_lib.MANIFEST, manifest_lib.METADATA] +
                                   [manifest_lib.shard_name(i, 3) for i in range(3)])


def test_parallel_build_writes_the_same_shards(nih_dir, built, tmp_path):
    build.build(nih_dir, tmp_path, image_size=STORED_SIZE, num_shards=3, encoding="png",
                num_workers=2, progress=False, command="test")
    for i in range(3):
        name = manifest_lib.shard_name(i, 3)
        assert (tmp_path / name).read_bytes() == (built["png"] / name).read_bytes()
    assert (json.loads((tmp_path / "manifest.json").read_text())["counts"] ==
            json.loads((built["png"] / "manifest.json").read_text())["counts"])


def _first_images(folder, count):
    return sorted(os.listdir(folder / "images"))[:count]


def _break_missing(folder, name):
    os.remove(folder / "images" / name)


def _break_undecodable(folder, name):
    data = (folder / "images" / name).read_bytes()
    (folder / "images" / name).write_bytes(data[:len(data) // 2])


def _break_size(folder, name):
    Image.new("L", (SOURCE_SIZE // 2, SOURCE_SIZE // 2)).save(folder / "images" / name)


def _break_square(folder, name):
    Image.new("L", (SOURCE_SIZE, SOURCE_SIZE - 8)).save(folder / "images" / name)


BREAKERS = {"missing": (_break_missing, "missing"),
            "undecodable": (_break_undecodable, "not a decodable image"),
            "size": (_break_size, rf"size {SOURCE_SIZE // 2}x{SOURCE_SIZE // 2} differs from the "
                     rf"data set's {SOURCE_SIZE}x{SOURCE_SIZE} frame"),
            "not_square": (_break_square, rf"size {SOURCE_SIZE}x{SOURCE_SIZE - 8} differs")}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_bad_image_is_a_clear_error_and_leaves_no_shard(nih_dir, tmp_path, case):
    folder = _copy(nih_dir, tmp_path)
    breaker, reason = BREAKERS[case]
    name = _first_images(folder, 3)[1]
    breaker(folder, name)
    out = tmp_path / "out"
    with pytest.raises(build.BadInputError, match=rf"1 of \d+ referenced images are bad") as err:
        build.build(folder, out, image_size=STORED_SIZE, num_shards=2, num_workers=1,
                    frame_size=SOURCE_SIZE, progress=False)
    assert name in str(err.value) and len(re.findall(reason, str(err.value))) == 1
    assert not os.path.exists(out) or os.listdir(out) == []


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_skip_bad_counts_and_records_the_skips(nih_dir, tmp_path, case):
    folder = _copy(nih_dir, tmp_path)
    breaker, reason = BREAKERS[case]
    name = _first_images(folder, 3)[1]
    breaker(folder, name)
    manifest = build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_shards=2,
                           num_workers=1, skip_bad=True, frame_size=SOURCE_SIZE, progress=False)
    total = len(_csv_rows(folder / "Data_Entry_2017_v2020.csv"))
    assert manifest["skipped"]["count"] == 1
    [skipped] = manifest["skipped"]["files"]
    assert skipped["image_id"] == name
    assert re.search(reason, skipped["reason"])
    assert manifest["num_images"] == total - 1
    assert name not in set(manifest_lib.read_metadata(tmp_path / "out")["image_id"])
    assert name not in _records(tmp_path / "out")
    assert sum(manifest["counts"]["fold"].values()) == total - 1


def test_many_bad_images_name_the_first_few_and_the_total(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    names = _first_images(folder, 7)
    for name in names:
        _break_undecodable(folder, name)
    with pytest.raises(build.BadInputError) as err:
        build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_shards=2,
                    num_workers=1, progress=False)
    message = str(err.value)
    assert message.startswith("7 of ")
    assert sum(name in message for name in names) == 5
    assert "... and 2 more" in message


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "nih").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of Data_Entry"):
        build.build(tmp_path / "nih", tmp_path / "out", progress=False)


def test_folder_without_images_is_a_clear_error(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    shutil.rmtree(folder / "images")
    (folder / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="no PNG images in"):
        build.build(folder, tmp_path / "out", progress=False)


def test_one_split_list_without_the_other_is_an_error(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    os.remove(folder / "test_list.txt")
    with pytest.raises(FileNotFoundError, match="test_list.txt"):
        build.build(folder, tmp_path / "out", progress=False)


def test_without_split_lists_the_split_is_unknown(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    os.remove(folder / "test_list.txt")
    os.remove(folder / "train_val_list.txt")
    manifest = build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_shards=1,
                           encoding="raw", num_workers=1, progress=False)
    assert manifest["counts"]["split"] == {example.SPLIT_UNKNOWN: manifest["num_images"]}
    assert {r["split"] for r in _records(tmp_path / "out").values()} == {b"unknown"}


def test_existing_set_is_kept_unless_overwrite(built, nih_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built["raw"], out)
    with pytest.raises(FileExistsError, match="overwrite"):
        build.build(nih_dir, out, image_size=STORED_SIZE, num_workers=1, progress=False)
    manifest = build.build(nih_dir, out, image_size=16, num_shards=1, num_workers=1,
                           overwrite=True, progress=False)
    assert manifest["image_size"] == 16
    assert sorted(os.listdir(out)) == sorted([manifest_lib.METADATA, manifest_lib.MANIFEST,
                                              manifest_lib.shard_name(0, 1)])


def test_explicit_frame_size_other_than_the_images_rejects_them(nih_dir, tmp_path):
    with pytest.raises(build.BadInputError, match=r"differs from the data set's 1024x1024"):
        build.build(nih_dir, tmp_path / "out", frame_size=1024, num_workers=1, progress=False)


def test_box_outside_the_frame_names_the_image(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    name = _first_images(folder, 1)[0]
    with open(folder / "BBox_List_2017.csv", "a", encoding="utf-8") as f:
        f.write(f"{name},Mass,{SOURCE_SIZE + 5},10,20,20,,,\n")
    with pytest.raises(ValueError, match=f"{name} has no area inside"):
        build.build(folder, tmp_path / "out", num_workers=1, progress=False)


# ---------------------------------------------------------------- issue #13: 3, 10, 11, 12


def _set_bytes(folder):
    return {n: (folder / n).read_bytes() for n in os.listdir(folder)}


def test_a_failed_overwrite_keeps_the_old_set(built, nih_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built["raw"], out)
    (out / "README.txt").write_text("the user's notes")
    before = _set_bytes(out)
    folder = _copy(nih_dir, tmp_path)
    _break_undecodable(folder, _first_images(folder, 3)[1])
    with pytest.raises(build.BadInputError, match="not a decodable image"):
        build.build(folder, out, image_size=STORED_SIZE, num_shards=1, num_workers=1,
                    overwrite=True, progress=False)
    assert _set_bytes(out) == before  # old set intact, no staging folder left
    manifest = build.build(nih_dir, out, image_size=16, num_shards=1, num_workers=1,
                           overwrite=True, progress=False)
    assert manifest["image_size"] == 16
    assert (out / "README.txt").read_text() == "the user's notes"
    assert sorted(os.listdir(out)) == sorted([manifest_lib.METADATA, manifest_lib.MANIFEST,
                                              manifest_lib.shard_name(0, 1), "README.txt"])


def test_a_stale_staging_folder_of_a_dead_build_is_removed(nih_dir, tmp_path):
    out = tmp_path / "out"
    (out / f"{build.STAGING_PREFIX}999999999-deadbeef").mkdir(parents=True)
    build.build(nih_dir, out, image_size=16, num_shards=1, num_workers=1, progress=False)
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def _bomb(path, side=30000):
    """A PNG header declaring side x side pixels (a decompression bomb without its payload)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8,
                                                                          0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_a_per_image_error_naming_it(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    name = _first_images(folder, 3)[1]
    _bomb(folder / "images" / name)
    with pytest.raises(build.BadInputError, match="1 of") as err:
        build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_workers=1,
                    progress=False)
    assert name in str(err.value) and "30000 x 30000" in str(err.value)
    assert "MAX_IMAGE_PIXELS" in str(err.value)
    manifest = build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_workers=1,
                           skip_bad=True, progress=False)
    [skipped] = manifest["skipped"]["files"]
    assert skipped["image_id"] == name and "not decoded" in skipped["reason"]


def test_the_frame_is_stated_not_voted(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    names = sorted(os.listdir(folder / "images"))
    wrong = names[:2 * len(names) // 3]  # most images are of another size than the boxes' frame
    for name in wrong:
        _break_size(folder, name)
    for skip_bad in (False, True):
        with pytest.raises(build.BadInputError, match="the images are of 2 sizes") as err:
            build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_workers=1,
                        skip_bad=skip_bad, progress=False)
        message = str(err.value)
        assert f"{SOURCE_SIZE // 2}x{SOURCE_SIZE // 2}: {len(wrong)} images" in message
        assert f"{SOURCE_SIZE}x{SOURCE_SIZE}: {len(names) - len(wrong)} images" in message
        assert "--frame_size" in message
    manifest = build.build(folder, tmp_path / "out", image_size=STORED_SIZE, num_workers=1,
                           skip_bad=True, frame_size=SOURCE_SIZE, progress=False)
    assert sorted(f["image_id"] for f in manifest["skipped"]["files"]) == wrong
    assert manifest["frame_size"] == SOURCE_SIZE and manifest["frame_size_from"] == "frame_size"
    kept = _records(tmp_path / "out")
    assert sorted(kept) == names[len(wrong):]


@pytest.mark.parametrize("arguments, message", [
    ({"image_size": 0}, "image_size must be an integer in"),
    ({"image_size": -3}, "image_size must be an integer in"),
    ({"frame_size": 0}, "frame_size must be"),
    ({"frame_size": 10 ** 6}, "frame_size must be"),
    ({"num_shards": 0}, "num_shards must be"),
    ({"num_workers": 0}, "num_workers must be"),
    ({"num_folds": 1}, "num_folds must be"),
    ({"fold_seed": -1}, "fold_seed must be"),
    ({"image_size": 2.5}, "image_size must be an integer"),
])
def test_arguments_are_checked_before_any_work(tmp_path, arguments, message):
    # The folder does not exist: the argument error must come first.
    with pytest.raises(ValueError, match=message):
        build.build(tmp_path / "missing", tmp_path / "out", progress=False, **arguments)
    assert not (tmp_path / "out").exists()


def test_a_non_finite_box_coordinate_names_the_file_and_line(nih_dir, tmp_path):
    folder = _copy(nih_dir, tmp_path)
    name = _first_images(folder, 1)[0]
    lines = (folder / "BBox_List_2017.csv").read_text().splitlines()
    with open(folder / "BBox_List_2017.csv", "a", encoding="utf-8") as f:
        f.write(f"{name},Mass,10,inf,20,20\n")
    with pytest.raises(ValueError, match=rf"BBox_List_2017.csv line {len(lines) + 1}: box of "
                                         rf"{name} has non-finite coordinates"):
        build.build(folder, tmp_path / "out", num_workers=1, progress=False)
