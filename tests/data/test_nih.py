"""chestxray_tf/data/nih.py on the real NIH excerpt and on large made-up tables."""

import csv
import gzip

import numpy as np
import pandas as pd
import pytest

from chestxray_tf import labels
from chestxray_tf.data import nih


@pytest.fixture(scope="module")
def sample(nih_sample_dir):
    return nih.load_metadata(nih_sample_dir / "Data_Entry_2017_v2020.csv",
                             nih_sample_dir / "BBox_List_2017.csv")


def _raw_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------- real data


def test_real_counts(sample, nih_sample_dir):
    entry_rows = _raw_rows(nih_sample_dir / "Data_Entry_2017_v2020.csv")[1:]
    box_rows = _raw_rows(nih_sample_dir / "BBox_List_2017.csv")[1:]
    assert len(sample.images) == len(entry_rows) == 456
    assert len(sample.boxes) == len(box_rows) == 93
    assert sample.images["patient_id"].nunique() == 63
    assert sample.images["has_box"].sum() == len({r[0] for r in box_rows})
    assert list(sample.boxes.columns) == ["image_id", "label", "x", "y", "w", "h"]


def test_real_box_labels_are_canonical(sample, nih_sample_dir):
    raw = _raw_rows(nih_sample_dir / "BBox_List_2017.csv")[1:]
    assert sum(r[1] == "Infiltrate" for r in raw) > 0  # the trap is in the real file
    assert "Infiltrate" not in set(sample.boxes["label"])
    assert set(sample.boxes["label"]) == set(labels.BOXED_CLASSES)
    assert (sample.boxes["label"] == "Infiltration").sum() == sum(r[1] == "Infiltrate" for r in raw)
    assert set(sample.boxes["image_id"]) <= set(sample.images["image_id"])
    # Coordinates come from the four split header columns, in the 1024 px PNG frame.
    first = raw[0]
    got = sample.boxes.iloc[0]
    assert got["image_id"] == first[0]
    np.testing.assert_allclose(got[["x", "y", "w", "h"]].to_numpy(float),
                               [float(v) for v in first[2:6]])
    assert (sample.boxes["x"] + sample.boxes["w"]).max() <= 1024 + 1e-6


def test_real_class_columns_agree_with_finding_labels(sample, nih_sample_dir):
    rows = _raw_rows(nih_sample_dir / "Data_Entry_2017_v2020.csv")[1:]
    table = sample.images.set_index("image_id")
    for row in rows:
        found = set(row[1].split("|")) - {"No Finding"}
        for name in labels.CLASS_NAMES:
            assert table.loc[row[0], name] == int(name in found), (row[0], name)
    no_finding = [r[0] for r in rows if r[1] == "No Finding"]
    assert no_finding
    assert (table.loc[no_finding, list(labels.CLASS_NAMES)].to_numpy() == 0).all()


def test_real_follow_up_is_the_column_not_the_file_name(sample, nih_sample_dir):
    rows = _raw_rows(nih_sample_dir / "Data_Entry_2017_v2020.csv")[1:]
    table = sample.images.set_index("image_id")
    differ = [r for r in rows if int(r[0][9:12]) != int(r[2])]
    assert differ, "the excerpt has rows whose file name and Follow-up # differ"
    for r in differ:
        assert table.loc[r[0], "follow_up"] == int(r[2])
    assert set(sample.images["sex"]) == {"M", "F"} and set(sample.images["view"]) == {"PA", "AP"}


def test_2017_layout_gzip_and_patient_sex_header(nih_sample_dir, tmp_path, sample):
    lines = (nih_sample_dir / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    layout_2017 = tmp_path / "Data_Entry_2017.csv.gz"
    with gzip.open(layout_2017, "wt") as f:
        f.write("\n".join(line + "," for line in lines) + "\n")  # trailing empty column
    sex_header = tmp_path / "Data_Entry_sex.csv"
    sex_header.write_text("\n".join([lines[0].replace("Patient Gender", "Patient Sex")] + lines[1:]))
    for path in (layout_2017, sex_header):
        meta = nih.load_metadata(path)
        pd.testing.assert_frame_equal(meta.images.drop(columns="has_box"),
                                      sample.images.drop(columns="has_box"))


# ---------------------------------------------------------------- bad input


def _entry_file(tmp_path, rows, header=None):
    header = header or ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                        "Patient Gender,View Position,OriginalImage[Width,Height],"
                        "OriginalImagePixelSpacing[x,y]")
    path = tmp_path / "entries.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    return path


GOOD_ROW = "00000001_000.png,Mass,0,1,58,M,PA,2500,2048,0.14,0.14"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        nih.load_metadata(tmp_path / "nope.csv")


def test_wrong_header_names_missing_column(tmp_path):
    path = _entry_file(tmp_path, [GOOD_ROW], header="Image,Labels,a,b,c,d,e,f,g,h,i")
    with pytest.raises(ValueError, match=r"entries.csv: missing column 'Image Index'"):
        nih.load_metadata(path)


def test_unknown_label_names_file_and_line(tmp_path):
    path = _entry_file(tmp_path, [GOOD_ROW, GOOD_ROW.replace("000.png,Mass", "001.png,Flu")])
    with pytest.raises(ValueError, match=r"unknown label 'Flu' in .*entries.csv line 3"):
        nih.load_metadata(path)


def test_duplicate_image_rows(tmp_path):
    path = _entry_file(tmp_path, [GOOD_ROW, GOOD_ROW])
    with pytest.raises(ValueError, match=r"duplicate image rows .*00000001_000.png"):
        nih.load_metadata(path)


def test_bad_box_rows(tmp_path):
    entries = _entry_file(tmp_path, [GOOD_ROW])
    boxes = tmp_path / "boxes.csv"
    header = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    boxes.write_text(f"{header}\n00000001_000.png,Mass,10,10,-5,20,,,\n")
    with pytest.raises(ValueError, match=r"boxes.csv line 2: .*non-positive width"):
        nih.load_metadata(entries, boxes)
    boxes.write_text(f"{header}\n00000001_000.png,Tumour,10,10,5,20,,,\n")
    with pytest.raises(ValueError, match=r"unknown label 'Tumour' in .*boxes.csv line 2"):
        nih.load_metadata(entries, boxes)
    boxes.write_text(f"{header}\n00000009_000.png,Mass,10,10,5,20,,,\n")
    with pytest.raises(ValueError, match=r"00000009_000.png.*not in the entry table"):
        nih.load_metadata(entries, boxes)
    boxes.write_text("Image Index,Label,x,y,w,h\n00000001_000.png,Mass,10,10,5,20\n")
    with pytest.raises(ValueError, match=r"boxes.csv: header"):
        nih.load_metadata(entries, boxes)
    boxes.write_text(f"{header}\n00000001_000.png,Mass,10,ten,5,20,,,\n")
    with pytest.raises(ValueError, match=r"boxes.csv line 2: box coordinates"):
        nih.load_metadata(entries, boxes)


# ---------------------------------------------------------------- folds and splits


def _big_table(num_patients=4000, seed=1):
    """A made-up table: heavy-tailed images per patient, ~2% of patients with boxed images."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.geometric(0.3, num_patients), 60)
    sizes[:5] = [120, 90, 70, 50, 40]  # a few long follow-up series, as in NIH
    rows = []
    for p, n in enumerate(sizes, start=1):
        boxed = rng.random(n) < (0.15 if rng.random() < 0.04 else 0.0)
        rows += [(f"{p:08d}_{i:03d}.png", p, bool(b)) for i, b in enumerate(boxed)]
    images = pd.DataFrame(rows, columns=["image_id", "patient_id", "has_box"])
    return nih.NihMetadata(images=images, boxes=pd.DataFrame())


def test_folds_on_real_sample_are_patient_disjoint_and_deterministic(sample):
    folds = nih.assign_folds(sample, num_folds=5, seed=0)
    assert list(folds.index) == list(sample.images["image_id"])
    per_patient = folds.groupby(sample.images["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all()
    assert set(folds) == set(range(5))
    pd.testing.assert_series_equal(folds, nih.assign_folds(sample, num_folds=5, seed=0))


@pytest.mark.parametrize("group_by", ["patient", "image"])
def test_folds_balance_annotated_and_unannotated(group_by):
    meta = _big_table()
    folds = nih.assign_folds(meta, num_folds=5, seed=3, group_by=group_by)
    ann = meta.images["has_box"].to_numpy()
    for subset in (ann, ~ann):
        counts = np.bincount(folds.to_numpy()[subset], minlength=5)
        assert counts.sum() == subset.sum()
        assert np.all(np.abs(counts / counts.sum() - 0.2) < 0.02), counts
    if group_by == "patient":
        assert (folds.groupby(meta.images["patient_id"].to_numpy()).nunique() == 1).all()
    else:
        for subset in (ann, ~ann):
            counts = np.bincount(folds.to_numpy()[subset], minlength=5)
            assert counts.max() - counts.min() <= 1
    other = nih.assign_folds(meta, num_folds=5, seed=4, group_by=group_by)
    assert (other != folds).any()


def test_li2018_split_fractions():
    meta = _big_table()
    folds = nih.assign_folds(meta, num_folds=5, seed=0)
    ann = meta.images.set_index("image_id")["has_box"]
    for fa, fu in ((0.8, 0.5), (0.7, 0.7), (0.4, 0.0), (0.0, 0.2)):
        train, test = nih.li2018_split(meta, folds, 2, fa, fu, seed=0)
        assert not set(train) & set(test)
        assert set(test) == set(folds.index[folds == 2])
        n_ann = int(ann[train].sum())
        pool_ann = int((ann & (folds != 2)).sum())
        assert n_ann == min(round(fa * ann.sum()), pool_ann)
        assert len(train) - n_ann == round(fu * (~ann).sum())
        assert nih.li2018_split(meta, folds, 2, fa, fu, seed=0) == (train, test)
    with pytest.raises(ValueError, match="fraction 0.9"):
        nih.li2018_split(meta, folds, 2, 0.9, 0.5, seed=0)


def _write_list(path, ids):
    path.write_text("\n".join(ids) + "\n")
    return path


def test_official_split_carves_val_by_patient(tmp_path):
    meta = _big_table(num_patients=1500)
    images = meta.images
    test_patients = set(range(1, 301))
    is_test = images["patient_id"].isin(test_patients)
    tv_list = _write_list(tmp_path / "train_val_list.txt", images.loc[~is_test, "image_id"])
    test_list = _write_list(tmp_path / "test_list.txt", images.loc[is_test, "image_id"])
    train, val, test = nih.official_split(meta, tv_list, test_list, val_fraction=0.1, seed=0)
    assert set(test) == set(images.loc[is_test, "image_id"])
    assert set(train) | set(val) == set(images.loc[~is_test, "image_id"])
    pid = images.set_index("image_id")["patient_id"]
    assert not set(pid[train]) & set(pid[val])
    assert abs(len(val) / (len(train) + len(val)) - 0.1) < 0.02
    missing = _write_list(tmp_path / "short.txt", images.loc[~is_test, "image_id"][:-1])
    with pytest.raises(ValueError, match="in neither split list"):
        nih.official_split(meta, missing, test_list)


def test_load_metadata_split_column(nih_sample_dir, tmp_path, sample):
    ids = sample.images["image_id"]
    test_mask = sample.images["patient_id"] % 3 == 0
    tv = _write_list(tmp_path / "train_val_list.txt", ids[~test_mask])
    te = _write_list(tmp_path / "test_list.txt", ids[test_mask])
    meta = nih.load_metadata(nih_sample_dir / "Data_Entry_2017_v2020.csv",
                             split_lists=(tv, te))
    assert (meta.images["split"] == np.where(test_mask, "test", "train_val")).all()
    _write_list(te, ids[test_mask][:-1])
    with pytest.raises(ValueError, match="in neither"):
        nih.load_metadata(nih_sample_dir / "Data_Entry_2017_v2020.csv", split_lists=(tv, te))


def test_sedai2018_split():
    meta = _big_table()
    train, val, test = nih.sedai2018_split(meta, seed=0)
    images = meta.images.set_index("image_id")
    assert sorted(train + val + test) == sorted(images.index)
    assert set(images.index[images["has_box"]]) <= set(test)
    patients = [set(images.loc[ids, "patient_id"]) for ids in (train, val, test)]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    n = len(images)
    assert abs(len(train) / n - 0.7) < 0.02 and abs(len(val) / n - 0.1) < 0.02
