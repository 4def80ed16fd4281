"""chestxray_tf/data/synthetic.py: NIH layout, determinism, labels/boxes, round trip via nih."""

import collections
import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from chestxray_tf import labels
from chestxray_tf.data import nih, synthetic

SIZE = 64
PATIENTS = 20
ARGS = dict(num_patients=PATIENTS, image_size=SIZE, seed=3, box_fraction=0.5, test_fraction=0.2,
            progress=False)
LISTS = ("train_val_list.txt", "test_list.txt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "nih"
    summary = synthetic.generate(out, num_workers=2, **ARGS)
    return out, summary


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _tree_bytes(root):
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _records():
    """image id -> ImageRecord of the plan that generated `folder`."""
    args = {k: ARGS[k] for k in ("seed", "box_fraction", "test_fraction")}
    return {r.image_id: r for r in synthetic.plan(PATIENTS, **args)}


# ---------------------------------------------------------------- determinism


def test_same_arguments_same_bytes_whatever_num_workers(folder, tmp_path):
    out, _ = folder
    synthetic.generate(tmp_path / "one_worker", num_workers=1, **ARGS)
    first, second = _tree_bytes(out), _tree_bytes(tmp_path / "one_worker")
    assert list(first) == list(second)
    assert [k for k in first if first[k] != second[k]] == []


def test_other_seed_other_data(folder, tmp_path):
    out, _ = folder
    synthetic.generate(tmp_path / "seed4", num_workers=1, **dict(ARGS, seed=4))
    first, other = _tree_bytes(out), _tree_bytes(tmp_path / "seed4")
    assert first["Data_Entry_2017_v2020.csv"] != other["Data_Entry_2017_v2020.csv"]
    shared = set(first) & set(other) - {"Data_Entry_2017_v2020.csv", "BBox_List_2017.csv", *LISTS}
    assert shared and all(first[k] != other[k] for k in shared)


# ---------------------------------------------------------------- layout and formats


def test_files_and_exact_headers(folder, nih_sample_dir):
    out, _ = folder
    assert sorted(os.listdir(out)) == sorted(["images", "Data_Entry_2017_v2020.csv",
                                              "BBox_List_2017.csv", *LISTS])
    entry_text = (out / "Data_Entry_2017_v2020.csv").read_text()
    box_text = (out / "BBox_List_2017.csv").read_text()
    assert entry_text.split("\n")[0] == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
    assert box_text.split("\n")[0] == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    # Same header lines and row widths as the real files, LF line ends, final newline.
    real_entry = _rows(nih_sample_dir / "Data_Entry_2017_v2020.csv")
    real_box = _rows(nih_sample_dir / "BBox_List_2017.csv")
    entry, box = _rows(out / "Data_Entry_2017_v2020.csv"), _rows(out / "BBox_List_2017.csv")
    assert entry[0] == real_entry[0] and box[0] == real_box[0]
    assert {len(r) for r in entry[1:]} == {len(real_entry[1])} == {11}
    assert {len(r) for r in box[1:]} == {len(real_box[1])} == {6}
    for text in (entry_text, box_text):
        assert "\r" not in text and text.endswith("\n")


def test_entry_values_look_like_nih(folder):
    out, summary = folder
    rows = _rows(out / "Data_Entry_2017_v2020.csv")[1:]
    assert len(rows) == summary["num_images"]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    follow_ups = collections.defaultdict(list)
    for image_id, finding_labels, follow_up, patient, age, sex, view, w, h, sx, sy in rows:
        assert len(image_id) == 16 and image_id.endswith(".png")
        assert patient == str(int(image_id[:8])) and not patient.startswith("0")
        assert follow_up == str(int(image_id[9:12]))
        follow_ups[int(patient)].append(int(follow_up))
        names = finding_labels.split("|")
        assert names == [labels.NO_FINDING] or names == [n for n in labels.CLASS_NAMES
                                                         if n in names]
        assert 1 <= int(age) <= 120 and sex in ("M", "F") and view in ("PA", "AP")
        # The size before NIH's resize, not the PNG size; square pixels.
        assert int(w) > 1000 and int(h) > 1000 and (w, h) != (str(SIZE), str(SIZE))
        assert sx == sy and 0.1 < float(sx) < 0.2
    assert sorted(follow_ups) == list(range(1, PATIENTS + 1))
    for series in follow_ups.values():
        assert series == list(range(len(series))) and 1 <= len(series) <= 6
    assert max(len(s) for s in follow_ups.values()) > 1


def test_every_image_exists_and_decodes(folder):
    out, _ = folder
    ids = [r[0] for r in _rows(out / "Data_Entry_2017_v2020.csv")[1:]]
    assert sorted(os.listdir(out / "images")) == sorted(ids)
    for image_id in ids:
        with Image.open(out / "images" / image_id) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (SIZE, SIZE)
            pixels = np.asarray(im)
        assert pixels.std() > 10  # an image, not a blank


# ---------------------------------------------------------------- labels and boxes


def test_boxes_agree_with_findings(folder):
    out, summary = folder
    findings = {r[0]: set(r[1].split("|")) for r in _rows(out / "Data_Entry_2017_v2020.csv")[1:]}
    boxes = _rows(out / "BBox_List_2017.csv")[1:]
    assert len(boxes) == summary["num_boxes"] > 0
    spelled = {r[1] for r in boxes}
    assert "Infiltrate" in spelled and "Infiltration" not in spelled
    seen = collections.Counter()
    for image_id, label, *coords in boxes:
        name = labels.ALIASES.get(label, label)
        assert name in labels.BOXED_CLASSES
        assert name in findings[image_id], (image_id, name)
        x, y, w, h = map(float, coords)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        seen[image_id, name] += 1
    assert max(seen.values()) == 1
    # An annotated image has a box for each of its boxed findings.
    for image_id in {i for i, _ in seen}:
        for name in findings[image_id] & set(labels.BOXED_CLASSES):
            assert seen[image_id, name] == 1, (image_id, name)
    assert any(len(findings[i] & set(labels.BOXED_CLASSES)) > 1 for i, _ in seen)


def test_png_is_render_and_a_box_bounds_exactly_what_its_lesion_changes(folder):
    out, _ = folder
    records = _records()
    boxes = _rows(out / "BBox_List_2017.csv")[1:]
    checked = collections.Counter()
    for image_id, label, *coords in boxes:
        name = labels.ALIASES.get(label, label)
        if checked[name] >= 2:
            continue
        checked[name] += 1
        record = records[image_id]
        pixels, drawn = synthetic.render(record, SIZE, ARGS["seed"])
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(out / "images" / image_id)))
        assert drawn[name] == tuple(map(float, coords))
        without, _ = synthetic.render(record, SIZE, ARGS["seed"], omit=(name,))
        diff = np.abs(pixels.astype(int) - without.astype(int))
        x, y, w, h = map(int, map(float, coords))
        inside = np.zeros_like(diff, dtype=bool)
        inside[y:y + h, x:x + w] = True
        assert diff[~inside].max(initial=0) == 0, (image_id, name)
        assert diff[inside].mean() > 2.0, (image_id, name, diff[inside].mean())
        rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
        assert rows[-1] - rows[0] + 1 >= 0.5 * h and cols[-1] - cols[0] + 1 >= 0.5 * w
    assert set(checked) == set(labels.BOXED_CLASSES)


def test_unboxed_lesions_change_the_image(folder):
    out, _ = folder
    records = _records()
    for name in labels.CLASS_NAMES[len(labels.BOXED_CLASSES):]:
        record = next(r for r in records.values() if name in r.findings)
        pixels, _ = synthetic.render(record, SIZE, ARGS["seed"])
        without, _ = synthetic.render(record, SIZE, ARGS["seed"], omit=(name,))
        changed = pixels != without
        assert changed.mean() > 0.005, name


def test_heart_is_right_of_centre_in_the_image(folder):
    out, _ = folder
    normal = [r[0] for r in _rows(out / "Data_Entry_2017_v2020.csv")[1:] if r[1] == "No Finding"]
    stack = np.stack([np.asarray(Image.open(out / "images" / i), np.float64) for i in normal])
    mean = stack.mean(axis=0)
    rows = slice(int(0.55 * SIZE), int(0.7 * SIZE))
    heart_side = mean[rows, int(0.6 * SIZE):int(0.7 * SIZE)].mean()
    other_side = mean[rows, int(0.3 * SIZE):int(0.4 * SIZE)].mean()
    assert heart_side > other_side + 10


def test_poses_vary_between_images(folder):
    """Images of one patient differ in position (an alignment module has work to do)."""
    out, _ = folder
    ids = [r[0] for r in _rows(out / "Data_Entry_2017_v2020.csv")[1:]]
    centres = []
    for image_id in ids:
        body = np.asarray(Image.open(out / "images" / image_id)) > 60
        centres.append(np.argwhere(body).mean(axis=0))
    assert np.std(np.array(centres), axis=0).min() > 0.5


# ---------------------------------------------------------------- splits and prevalence


def test_split_lists_are_patient_disjoint_and_cover_all_images(folder):
    out, summary = folder
    ids = [r[0] for r in _rows(out / "Data_Entry_2017_v2020.csv")[1:]]
    train_val = (out / LISTS[0]).read_text().split()
    test = (out / LISTS[1]).read_text().split()
    assert train_val == sorted(train_val) and test == sorted(test)
    assert sorted(train_val + test) == sorted(ids)
    assert not {i[:8] for i in train_val} & {i[:8] for i in test}
    assert len({i[:8] for i in test}) == round(0.2 * PATIENTS)
    assert (summary["train_val_images"], summary["test_images"]) == (len(train_val), len(test))


def test_every_class_in_each_split_of_a_small_set(folder):
    out, summary = folder
    split = {i: s for s, name in zip(("train_val", "test"), LISTS)
             for i in (out / name).read_text().split()}
    counts = collections.Counter()
    for image_id, finding_labels, *_ in _rows(out / "Data_Entry_2017_v2020.csv")[1:]:
        for name in finding_labels.split("|"):
            counts[split[image_id], name] += 1
    for name in labels.CLASS_NAMES:
        for s in ("train_val", "test"):
            assert counts[s, name] >= synthetic.MIN_POSITIVES_PER_SPLIT, (s, name)
        assert summary["class_counts"][name] == counts["train_val", name] + counts["test", name]
    assert summary["no_finding"] == counts["train_val", "No Finding"] + counts["test", "No Finding"]


def test_prevalence_like_nih_at_200_patients():
    records = synthetic.plan(200, seed=0)
    counts = collections.Counter(n for r in records for n in r.findings)
    no_finding = sum(not r.findings for r in records) / len(records)
    assert 0.5 <= no_finding <= 0.65
    ranked = [n for n, _ in counts.most_common()]
    assert set(ranked[:3]) == {"Infiltration", "Effusion", "Atelectasis"}
    assert set(counts) == set(labels.CLASS_NAMES)
    assert counts["Hernia"] <= min(counts.values()) + 5
    assert any(len(r.findings) >= 3 for r in records)
    per_patient = collections.Counter(r.patient for r in records)
    assert set(per_patient.values()) == set(range(1, 7))


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_box_fraction(fraction):
    records = synthetic.plan(200, seed=1, box_fraction=fraction)
    boxable = [r for r in records if set(r.findings) & set(labels.BOXED_CLASSES)]
    annotated = [r for r in boxable if r.annotated]
    assert not any(r.annotated for r in records if r not in boxable)
    assert abs(len(annotated) / len(boxable) - fraction) < 0.08
    if fraction > 0:  # every boxed class has a box
        assert set(labels.BOXED_CLASSES) <= {n for r in annotated for n in r.findings}


# ---------------------------------------------------------------- round trip and tools


def test_round_trip_through_nih_load_metadata(folder):
    out, summary = folder
    meta = nih.load_metadata(out / "Data_Entry_2017_v2020.csv", out / "BBox_List_2017.csv",
                             split_lists=(out / LISTS[0], out / LISTS[1]))
    records = _records()
    images = meta.images.set_index("image_id")
    assert sorted(images.index) == sorted(records) and len(images) == summary["num_images"]
    for image_id, r in records.items():
        row = images.loc[image_id]
        assert (row["patient_id"], row["follow_up"], row["age"]) == (r.patient, r.follow_up, r.age)
        assert (row["sex"], row["view"], row["split"]) == (r.sex, r.view, r.split)
        assert [n for n in labels.CLASS_NAMES if row[n] == 1] == list(r.findings)
        assert bool(row["has_box"]) == (r.annotated and bool(
            set(r.findings) & set(labels.BOXED_CLASSES)))
    assert len(meta.boxes) == summary["num_boxes"]
    assert set(meta.boxes["label"]) == set(labels.BOXED_CLASSES)
    for box in meta.boxes.itertuples():
        assert box.label in records[box.image_id].findings


def test_bad_arguments_are_clear_errors(folder, tmp_path):
    out, _ = folder
    with pytest.raises(ValueError, match="not empty"):
        synthetic.generate(out, **ARGS)
    for bad, match in ((dict(num_patients=0), "num_patients"), (dict(image_size=32), "image_size"),
                       (dict(box_fraction=1.5), "box_fraction"),
                       (dict(test_fraction=1.0), "test_fraction"), (dict(seed=-1), "seed")):
        with pytest.raises(ValueError, match=match):
            synthetic.generate(tmp_path / "bad", **dict(ARGS, **bad))


def test_example_grid_png(folder, tmp_path):
    out, _ = folder
    png = tmp_path / "grid.png"
    synthetic.render_example_grid(out, png, per_class=2)
    with Image.open(png) as im:
        width, height = im.size
        pixels = np.asarray(im.convert("L"))
    assert height > 3 * width  # one row per class and No Finding, two columns
    assert pixels.std() > 20


def test_make_synthetic_binary_matches_the_library(folder, tmp_path):
    out, _ = folder
    target = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tfrecords_tools.make_synthetic", f"--output_dir={target}",
           f"--num_patients={PATIENTS}", f"--image_size={SIZE}", f"--seed={ARGS['seed']}",
           f"--box_fraction={ARGS['box_fraction']}", f"--test_fraction={ARGS['test_fraction']}",
           "--num_workers=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                          cwd=pathlib.Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["num_images"] == len(os.listdir(target / "images"))
    assert _tree_bytes(target) == _tree_bytes(out)
