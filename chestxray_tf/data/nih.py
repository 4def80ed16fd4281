"""NIH ChestX-ray14 metadata: tidy tables, patient-grouped folds, the papers' split protocols.

Reads `Data_Entry_2017.csv` (2017 layout, trailing empty column) or `Data_Entry_2017_v2020.csv`
(2020 layout), plain or gzipped, `BBox_List_2017.csv`, and the official `train_val_list.txt` /
`test_list.txt` (SPEC §0). No TensorFlow here.

Traps handled (each covered by a test):
* the box file spells `Infiltrate` what the entry file calls `Infiltration`;
* the box header `Bbox [x,y,w,h]` splits into `Bbox [x`, `y`, `w`, `h]` plus empty columns;
* `OriginalImage[Width,Height]` is the size *before* NIH's resize: boxes live in the frame of
  the 1024x1024 PNGs, so that column is never used as the PNG size;
* the follow-up number comes from the `Follow-up #` column, not from the file name;
* the sex column is `Patient Gender` in most copies and `Patient Sex` in some.
"""

import dataclasses
import glob
import logging
import os
import re

import numpy as np
import pandas as pd

from chestxray_tf import labels as labels_lib

_IMAGE_ID = re.compile(r"^\d{8}_\d{3}\.png$")

# Canonical column -> the header names it goes by in NIH's files.
_ENTRY_COLUMNS = {
    "image_id": ("Image Index",),
    "finding_labels": ("Finding Labels",),
    "follow_up": ("Follow-up #",),
    "patient_id": ("Patient ID",),
    "age": ("Patient Age",),
    "sex": ("Patient Gender", "Patient Sex"),
    "view": ("View Position",),
}
_BOX_COLUMNS = ("Image Index", "Finding Label")


@dataclasses.dataclass(frozen=True)
class NihMetadata:
    """The tidy tables of one NIH release (or of a synthetic set in its layout).

    Attributes:
        images: one row per image: image_id, patient_id, follow_up, age, sex, view, one 0/1
            int column per class (canonical names, canonical order), has_box; plus `split`
            ('train_val' / 'test') when the official lists were given.
        boxes: one row per box: image_id, label (canonical name), x, y, w, h (float pixels of
            the PNG frame, top-left origin).
    """

    images: pd.DataFrame
    boxes: pd.DataFrame


def _read_csv(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"NIH metadata file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, compression="infer")
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from e


def _drop_empty_unnamed(frame, path):
    """Drops the trailing empty columns (`Unnamed: N`) of NIH's headers; data there is an error."""
    for col in [c for c in frame.columns if str(c).startswith("Unnamed:") or not str(c).strip()]:
        if (frame[col].str.strip() != "").any():
            row = int(np.argmax(frame[col].str.strip() != "")) + 2
            raise ValueError(f"{path}: unexpected value in unnamed column {col!r} at line {row}")
        frame = frame.drop(columns=col)
    return frame


def _to_int(series, path, column):
    """Parses integer cells (ages may read `058Y` in some copies)."""
    text = series.str.strip().str.replace(r"^(\d+)[Yy]$", r"\1", regex=True)
    values = pd.to_numeric(text, errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        line = int(np.argmax(bad.to_numpy())) + 2
        raise ValueError(f"{path} line {line}: {column} {series.iloc[line - 2]!r} is not an integer")
    return values.astype(np.int64)


def _read_entries(path):
    frame = _drop_empty_unnamed(_read_csv(path), path)
    renames = {}
    for canonical, names in _ENTRY_COLUMNS.items():
        found = [n for n in names if n in frame.columns]
        if not found:
            raise ValueError(
                f"{path}: missing column {' or '.join(repr(n) for n in names)}; the header has "
                f"{list(frame.columns)} (is this Data_Entry_2017.csv?)")
        renames[found[0]] = canonical
    frame = frame.rename(columns=renames)

    ids = frame["image_id"].str.strip()
    bad_ids = ~ids.str.match(_IMAGE_ID)
    if bad_ids.any():
        line = int(np.argmax(bad_ids.to_numpy())) + 2
        raise ValueError(f"{path} line {line}: image name {ids.iloc[line - 2]!r} is not of the "
                         "form PPPPPPPP_FFF.png")
    dup = ids.duplicated(keep=False)
    if dup.any():
        names = sorted(set(ids[dup]))
        raise ValueError(f"{path}: duplicate image rows for {len(names)} images, e.g. {names[:5]}")

    images = pd.DataFrame({
        "image_id": ids,
        "patient_id": _to_int(frame["patient_id"], path, "Patient ID"),
        "follow_up": _to_int(frame["follow_up"], path, "Follow-up #"),
        "age": _to_int(frame["age"], path, "Patient Age"),
        "sex": frame["sex"].str.strip(),
        "view": frame["view"].str.strip(),
    })
    hot = np.zeros((len(frame), labels_lib.NUM_CLASSES), dtype=np.int64)
    for row, cell in enumerate(frame["finding_labels"]):
        for name in labels_lib.parse_finding_labels(cell, f"{path} line {row + 2}"):
            hot[row, labels_lib.CLASS_INDEX[name]] = 1
    for k, name in enumerate(labels_lib.CLASS_NAMES):
        images[name] = hot[:, k]
    return images


def _read_boxes(path, known_ids):
    frame = _read_csv(path)
    cols = list(frame.columns)
    if cols[:2] != list(_BOX_COLUMNS) or len(cols) < 6 or not str(cols[2]).startswith("Bbox"):
        raise ValueError(
            f"{path}: header {cols} is not BBox_List_2017.csv's "
            "'Image Index,Finding Label,Bbox [x,y,w,h]' (+ empty columns)")
    extra = _drop_empty_unnamed(frame.iloc[:, 6:], path)
    if len(extra.columns):
        raise ValueError(f"{path}: unexpected columns {list(extra.columns)} after the box")
    coords = frame.iloc[:, 2:6].apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    coords.columns = ["x", "y", "w", "h"]
    bad = coords.isna().any(axis=1)
    if bad.any():
        line = int(np.argmax(bad.to_numpy())) + 2
        raise ValueError(f"{path} line {line}: box coordinates {frame.iloc[line - 2, 2:6].tolist()} "
                         "are not numbers")
    infinite = ~np.isfinite(coords.to_numpy(dtype=np.float64)).all(axis=1)
    if infinite.any():
        line = int(np.argmax(infinite)) + 2
        raise ValueError(f"{path} line {line}: box of {frame.iloc[line - 2, 0]} has non-finite "
                         f"coordinates {frame.iloc[line - 2, 2:6].tolist()}")
    flat = (coords["w"] <= 0) | (coords["h"] <= 0)
    if flat.any():
        line = int(np.argmax(flat.to_numpy())) + 2
        raise ValueError(f"{path} line {line}: box of {frame.iloc[line - 2, 0]} has a non-positive "
                         f"width or height ({coords.iloc[line - 2].tolist()})")
    ids = frame["Image Index"].str.strip()
    unknown = ~ids.isin(known_ids)
    if unknown.any():
        line = int(np.argmax(unknown.to_numpy())) + 2
        raise ValueError(f"{path} line {line}: box of image {ids.iloc[line - 2]!r}, which is not "
                         f"in the entry table ({int(unknown.sum())} such boxes)")
    names = [labels_lib.canonical_name(v, f"{path} line {i + 2}")
             for i, v in enumerate(frame["Finding Label"])]
    return pd.DataFrame({"image_id": ids, "label": names,
                         "x": coords["x"].astype(np.float64), "y": coords["y"].astype(np.float64),
                         "w": coords["w"].astype(np.float64), "h": coords["h"].astype(np.float64)})


def read_image_list(path):
    """Reads an official split list (one image name per line) -> list of image ids."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"split list not found: {path}")
    with open(path, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    bad = [i for i in ids if not _IMAGE_ID.match(i)]
    if bad:
        raise ValueError(f"{path}: {len(bad)} lines are not image names, e.g. {bad[:3]}")
    return ids


def _split_column(image_ids, train_val_list, test_list):
    """'train_val' / 'test' per image from the two official lists (paths)."""
    train_val, test = set(read_image_list(train_val_list)), set(read_image_list(test_list))
    both = sorted(train_val & test)
    if both:
        raise ValueError(f"{len(both)} images are in both {train_val_list} and {test_list}, "
                         f"e.g. {both[:3]}")
    missing = sorted(set(image_ids) - train_val - test)
    if missing:
        raise ValueError(f"{len(missing)} images of the entry table are in neither "
                         f"{train_val_list} nor {test_list}, e.g. {missing[:3]}")
    return np.where(pd.Series(image_ids).isin(test).to_numpy(), "test", "train_val")


def load_metadata(data_entry_csv, bbox_csv=None, split_lists=None):
    """Reads NIH's metadata files into tidy tables.

    Args:
        data_entry_csv: `Data_Entry_2017.csv` or `Data_Entry_2017_v2020.csv` (or `.csv.gz`).
        bbox_csv: optional `BBox_List_2017.csv`.
        split_lists: optional (train_val_list.txt, test_list.txt); adds the `split` column.

    Returns:
        NihMetadata with `images` and `boxes` tables (see its docstring).

    Raises:
        FileNotFoundError / ValueError naming the file, the line and the problem.
    """
    images = _read_entries(data_entry_csv)
    if bbox_csv is not None:
        boxes = _read_boxes(bbox_csv, set(images["image_id"]))
    else:
        boxes = pd.DataFrame({"image_id": pd.Series(dtype=str), "label": pd.Series(dtype=str),
                              **{c: pd.Series(dtype=np.float64) for c in "xywh"}})
    images["has_box"] = images["image_id"].isin(set(boxes["image_id"]))
    if split_lists is not None:
        images["split"] = _split_column(images["image_id"], *split_lists)
    return NihMetadata(images=images.reset_index(drop=True), boxes=boxes.reset_index(drop=True))


def find_images(nih_dir):
    """Maps image id -> PNG path for `D/images/*.png` and `D/images_*/images/*.png`.

    Raises:
        FileNotFoundError: no PNG in either place.
        ValueError: one image name found in two folders.
    """
    paths = sorted(glob.glob(os.path.join(nih_dir, "images", "*.png")) +
                   glob.glob(os.path.join(nih_dir, "images_*", "images", "*.png")))
    if not paths:
        raise FileNotFoundError(f"no PNG images in {nih_dir}/images/ or {nih_dir}/images_*/images/")
    found = {}
    for path in paths:
        name = os.path.basename(path)
        if name in found:
            raise ValueError(f"image {name} is in two folders: {found[name]} and {path}")
        found[name] = path
    return found


def _patient_table(images):
    """Per patient: number of annotated and unannotated images, in patient-id order."""
    return (images.assign(ann=images["has_box"].astype(int), unann=(~images["has_box"]).astype(int))
            .groupby("patient_id")[["ann", "unann"]].sum().sort_index())


def assign_folds(meta, num_folds=5, seed=0, group_by="patient"):
    """Assigns every image to one of `num_folds` folds (Li et al. 2018 protocol, SPEC §1).

    Annotated (has_box) and unannotated images are balanced separately, as Li et al. fold the
    two sets separately. With `group_by="patient"` all images of a patient share a fold (a
    patient's boxed image tested while their other images train would leak): patients are
    shuffled with `seed`, then placed largest first, each into the fold that has the fewest
    images of the set the patient contributes to most (annotated before unannotated). With
    `group_by="image"` each set is split into plain image-level folds.

    Returns:
        pd.Series image_id -> fold in [0, num_folds), named 'fold', in the table's row order.
    """
    images = meta.images
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2, got {num_folds}")
    rng = np.random.default_rng(seed)
    if group_by == "image":
        fold = np.empty(len(images), dtype=np.int64)
        for mask in (images["has_box"].to_numpy(), ~images["has_box"].to_numpy()):
            rows = np.flatnonzero(mask)
            fold[rows[rng.permutation(len(rows))]] = np.arange(len(rows)) % num_folds
        return pd.Series(fold, index=images["image_id"].to_numpy(), name="fold")
    if group_by != "patient":
        raise ValueError(f"group_by must be 'patient' or 'image', got {group_by!r}")

    patients = _patient_table(images)
    order = rng.permutation(len(patients))
    ann, unann = patients["ann"].to_numpy()[order], patients["unann"].to_numpy()[order]
    # Largest first (stable, so ties keep the seeded shuffle): annotated count, then size.
    order = order[np.lexsort((-(ann + unann), -ann))]
    counts = np.zeros((num_folds, 2), dtype=np.int64)  # [fold, (annotated, unannotated)]
    patient_fold = np.empty(len(patients), dtype=np.int64)
    for p in order:
        sizes = patients.iloc[p][["ann", "unann"]].to_numpy()
        first = 0 if sizes[0] > 0 else 1
        f = int(np.lexsort((np.arange(num_folds), counts[:, 1 - first], counts[:, first]))[0])
        counts[f] += sizes
        patient_fold[p] = f
    by_patient = pd.Series(patient_fold, index=patients.index)
    return pd.Series(by_patient.loc[images["patient_id"]].to_numpy(),
                     index=images["image_id"].to_numpy(), name="fold")


def _sample(ids, count, rng):
    ids = np.sort(np.asarray(ids, dtype=object))
    return list(ids[rng.permutation(len(ids))[:count]])


def li2018_split(meta, folds, test_fold, annotated_fraction, unannotated_fraction, seed=0):
    """Train / test image ids of one fold of Li et al.'s experiments (SPEC §1).

    The test set is every image of fold `test_fold`. The training set takes, from the other
    folds, `annotated_fraction` of ALL annotated images and `unannotated_fraction` of ALL
    unannotated images (fractions of the whole sets, as the paper states them: 0.7 / 0.7 for
    Table 1, 0.8 / 0.5 for Table 2), drawn with `seed`. The whole of the other folds is taken
    when the request exceeds them by less than one fold's rounding (0.8 with 5 slightly uneven
    folds).

    An unannotated fraction above the other folds' share (up to 1.0 = every unannotated image,
    Li et al. Fig. 5 and the last bar of Fig. 6: "unannotated samples, 100% (111,240
    images)") also draws from the test fold's unannotated images: those experiments measure
    localization only, on the fold's annotated images, so the test set is then the fold's
    images that do not train. An annotated fraction above the other folds' share is an error
    (the test fold's boxes are what is measured).

    Returns:
        (train_ids, test_ids): lists of image ids, sorted; disjoint.
    """
    images = meta.images
    fold = folds.reindex(images["image_id"]).to_numpy()
    if pd.isna(fold).any():
        raise ValueError("folds do not cover every image of the table")
    num_folds = int(np.max(fold)) + 1
    in_test = fold == test_fold
    if not in_test.any():
        raise ValueError(f"test fold {test_fold} holds no image")
    share = (num_folds - 1) / num_folds
    rng = np.random.default_rng(seed)
    ids = images["image_id"].to_numpy()
    train = []
    for is_annotated, fraction in ((True, annotated_fraction), (False, unannotated_fraction)):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fractions must lie in [0, 1], got {fraction}")
        in_set = images["has_box"].to_numpy() == is_annotated
        beyond_folds = not is_annotated and fraction > share + 1e-9
        pool = ids[in_set] if beyond_folds else ids[in_set & ~in_test]
        want = int(round(fraction * in_set.sum()))
        if want > len(pool):
            if fraction > share + 1e-9:
                raise ValueError(
                    f"annotated fraction {fraction} asks for {want} images but the folds other "
                    f"than {test_fold} hold {len(pool)} ({share:.0%}): the test fold's boxes "
                    "are what localization measures")
            want = len(pool)
        train += _sample(pool, want, rng)
    test = sorted(set(ids[in_test]) - set(train))
    return sorted(train), test


def _take_patients(images, patients, target, rng):
    """Seeded patient order; takes patients until `target` images are reached."""
    sizes = images.groupby("patient_id").size().reindex(patients).to_numpy()
    order = rng.permutation(len(patients))
    taken = np.cumsum(sizes[order]) <= target
    # Take the first patient past the target too when that lands closer to it.
    k = int(taken.sum())
    if k < len(order):
        before = int(np.cumsum(sizes[order])[k - 1]) if k else 0
        if abs(before + sizes[order[k]] - target) < abs(before - target):
            k += 1
    return set(np.asarray(patients)[order[:k]])


def _ids_of(images, patients):
    return sorted(images.loc[images["patient_id"].isin(patients), "image_id"])


def official_split(meta, train_val_list, test_list, val_fraction=0.1, seed=0):
    """Official NIH split, with a validation set carved from train_val by patient (SPEC §3, §5).

    Args:
        meta: NihMetadata.
        train_val_list, test_list: paths of NIH's lists (or sequences of image ids). Ids that
            are not in `meta` are left out (the table may be a subset); images of `meta` in
            neither list are an error.
        val_fraction: fraction of the train_val images (by patient) that forms `val`.

    Returns:
        (train_ids, val_ids, test_ids): sorted lists.
    """
    def as_set(ids):
        return set(read_image_list(ids) if isinstance(ids, (str, os.PathLike)) else ids)

    images = meta.images
    known = set(images["image_id"])
    train_val, test = as_set(train_val_list) & known, as_set(test_list) & known
    if train_val & test:
        raise ValueError(f"{len(train_val & test)} images are in both lists")
    missing = known - train_val - test
    if missing:
        raise ValueError(f"{len(missing)} images are in neither split list, e.g. "
                         f"{sorted(missing)[:3]}")
    tv = images[images["image_id"].isin(train_val)]
    shared = set(tv["patient_id"]) & set(images.loc[images["image_id"].isin(test), "patient_id"])
    if shared:
        logging.warning("%d patients have images in both official lists", len(shared))
    patients = sorted(set(tv["patient_id"]) - shared)
    val_patients = _take_patients(tv, patients, val_fraction * len(tv), np.random.default_rng(seed))
    val = _ids_of(tv, val_patients)
    return sorted(train_val - set(val)), val, sorted(test)


def sedai2018_split(meta, seed=0, fractions=(0.7, 0.1, 0.2)):
    """Sedai et al. 2018: patient-wise 70/10/20 train/val/test with every boxed image in test.

    Patients with a boxed image go to test with all their images; test is then filled with
    other patients up to its fraction; val takes its fraction of the remaining patients.

    Returns:
        (train_ids, val_ids, test_ids): sorted lists.
    """
    images = meta.images
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    n = len(images)
    boxed = set(images.loc[images["has_box"], "patient_id"])
    in_boxed = images["patient_id"].isin(boxed)
    rest = images[~in_boxed]
    others = sorted(set(rest["patient_id"]))
    more_test = _take_patients(rest, others, max(0.0, fractions[2] * n - in_boxed.sum()), rng)
    left = sorted(set(others) - more_test)
    val = _take_patients(rest, left, fractions[1] * n, rng)
    train = set(left) - val
    return _ids_of(images, train), _ids_of(images, val), _ids_of(images, boxed | more_test)
