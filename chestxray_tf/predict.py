"""Findings on radiographs: PNG, JPEG or DICOM files -> per image `NAME.json` and an overlay
`NAME.png`, and `summary.csv` over the batch (the library behind `chestxray_tf.cli.predict`).

`NAME.json` holds:

* `file`: the input's path relative to `--input`; `model`: which model answered
  (`{"type": "saved_model", "path", "fingerprint"}` or `{"type": "checkpoint", "path",
  "workdir"}`);
* `image`: how the file was read (`chestxray_tf.io`: format, width, height, scaling; for DICOM
  the photometric interpretation, rescale and VOI applied) and `padding` (the square the model
  saw: `top`, `left`, `side`, centred on black);
* `notice`: `NOTICE`, that the models are for research, not diagnosis;
* `map_threshold`: the map threshold T_s of the regions (Li et al. 2018, Sec. 3.3: cells with
  p > T_s form the region); `decision_threshold`: {class: threshold} of the findings (a class
  is a finding when its probability is >= its decision threshold; 0.5 by default), two
  separate numbers: a map cell above T_s does not make a finding;
* `box_format`: boxes are [x, y, w, h] in pixels of the original image, (x, y) its top-left
  corner (the convention of NIH's BBox_List_2017.csv);
* `findings`: the reported classes whose probability reaches their decision threshold,
  highest first, at most `top_k` (none when no class reaches it);
* `classes`: for each reported class (all, or `--classes`), its `probability` (the task's
  image-level score, Li et al. Eq. 2 for Li's model) and its `regions`: the task's regions on
  the map (its region rule, the one evaluation and the SavedModel use: `chestxray_tf.inference`;
  Li et al.: every cell > threshold together as one region), each
  `{"box": [x, y, w, h], "score": the region's largest map value}`, highest score first;
  a region lying wholly in the padding is not in the image and is left out.

`NAME.png` shows the image once per finding: the finding's map as a heat map, its region boxes
(dashed), the class and its probability as the title; with no finding, the most probable
reported class, titled "no finding: CLASS p=... < its decision threshold". `summary.csv` has a
row per file: its status (`ok` or `error` with the message), the findings (`NAME.json`'s, with
their probabilities) and every reported class's probability. For research only, not for
diagnosis (`NOTICE`: in every NAME.json, printed by the CLI).

Inputs: `--input` is a file or a folder, walked recursively in sorted order; a folder's files
named `.png`, `.jpg`, `.jpeg`, `.dcm`, `.dicom` or without a suffix (as PACS exports often are)
are read. Everything else is skipped, counted and listed with its reason (`Summary.skipped`,
printed by the CLI): hidden entries, `DICOMDIR`, files of other suffixes, symbolic links to
folders (not followed), folders that cannot be listed, the output folder, and any earlier
output folder of predict (a folder holding `OUTPUT_MARKER`; logged as a WARNING), so results
are never read back as radiographs.

Outputs: NAME is the file's path under `--input` without its suffix; with it when two files
differ only by their suffix (`a.png`, `a.dcm`), compared without case (so that a
case-insensitive disk cannot merge them); and when that still leaves two inputs on one NAME
(`d.png`, `d.png.jpg` and `d.jpg`), or NAME.json / NAME.png would be a folder of the outputs,
summary.csv or the marker, the later one in sorted order gets `NAME~2` (`~3`, ...). So every
input has its own NAME.json and NAME.png; summary.csv gives each file's NAME.

Where the outputs go (guaranteed, checked before any image is read):

* inputs are never written: `--output` may not be the input folder, the folder of an input
  file, or any folder containing the input, nor hold an input through a symbolic link (real
  paths are compared: symbolic links and `..` resolved). It may lie inside the input folder
  (it is then skipped by the walk).
* no file predict did not write is replaced or deleted: `--output` must be missing, an empty
  folder, or an output folder of an earlier run (its `OUTPUT_MARKER` lists the files it wrote)
  holding nothing else; otherwise the run stops with `FileExistsError` naming it.
* a rerun leaves no stale result: the run writes into a new hidden folder beside `--output`
  (`.NAME.partial-PID-...`), then swaps it in for the old output folder in two renames and
  deletes the old one. `--output` therefore always holds the whole result of one run, its
  summary.csv listing exactly its NAME files; a run that fails or is interrupted leaves the
  previous results as they were (a SIGKILL may leave its hidden partial folder behind, which
  a later run ignores and which can be deleted).
"""

import collections
import csv
import dataclasses
import io as std_io
import json
import math
import os
import shutil
import uuid
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image
from tqdm import tqdm

from chestxray_tf import export, fileio, inference, workdir as workdir_lib
from chestxray_tf.api import DECISION_THRESHOLD, NOTICE
from chestxray_tf import io as io_lib
from chestxray_tf.evaluation import figures
from chestxray_tf.labels import ALIASES
from chestxray_tf.tasks.base import RegionRule

SUMMARY_FILE = "summary.csv"
# In every output folder: {"written_by": MARKER_WRITER, "complete": bool, "files": [...]}.
OUTPUT_MARKER = ".chestxray_predict.json"
MARKER_WRITER = "chestxray_tf.predict"
SKIPPED_NAMES = ("DICOMDIR",)  # the index of a DICOM medium, never an image
OVERLAY_MAX_SIDE = 512  # pixels of the longer side of the image drawn in the overlay
BOX_FORMAT = "[x, y, w, h] in pixels of the original image, (x, y) its top-left corner"


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A model ready for `predict_scan`.

    serve: float32 [B, H, W, 1] pixels in [0, 255] -> dict of output tensors (the
        `serving_float` signature of `chestxray_tf.export`).
    metadata: `export.serving_metadata` (class names, map and score keys, region threshold).
    model_id: which model this is, for the JSON.
    """
    serve: Callable
    metadata: dict
    model_id: dict


def load_predictor(model_path, checkpoint="latest"):
    """A `Predictor` from an exported SavedModel folder, or from a training workdir (its
    `checkpoint`: latest, best or a path; the same serving code runs in process).

    Raises:
        FileNotFoundError: `model_path` is neither.
    """
    model_path = os.path.abspath(model_path)
    # `serve` closes over `loaded` / `module` to keep it alive: a tf.function method holds its
    # owner weakly.
    if tf.io.gfile.exists(os.path.join(model_path, "saved_model.pb")):
        loaded = tf.saved_model.load(model_path)
        fingerprint = tf.saved_model.experimental.read_fingerprint(model_path).singleprint()
        return Predictor(
            serve=lambda pixels: loaded.signatures["serving_float"](pixels=pixels),
            metadata=export.read_metadata(model_path),
            model_id={"type": "saved_model", "path": model_path, "fingerprint": fingerprint})
    if tf.io.gfile.exists(os.path.join(model_path, "config.json")):
        config, model, path = workdir_lib.restore_model(model_path, checkpoint)
        metadata = export.serving_metadata(config)
        serving = export.Serving(model, metadata, config)
        return Predictor(serve=serving.serve_float, metadata=metadata,
                         model_id={"type": "checkpoint", "path": path, "workdir": model_path})
    raise FileNotFoundError(f"{model_path} is neither an exported SavedModel (saved_model.pb) "
                            "nor a training workdir (config.json)")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """An entry of `--input` that is not read: its `path` and the `reason`."""
    path: str
    reason: str


def is_output_folder(folder):
    """Whether `folder` is an output folder of predict (it holds `OUTPUT_MARKER`)."""
    return os.path.isfile(os.path.join(folder, OUTPUT_MARKER))


def find_inputs(input_path, exclude=None):
    """The files to predict under `input_path` (a file, or a folder walked recursively in
    sorted order; see the module docstring) and the entries skipped, skipping `exclude` (the
    output folder; compared by real path).

    Returns:
        (files, skipped): paths, and a list of `Skipped`.

    Raises:
        FileNotFoundError: `input_path` does not exist.
    """
    if os.path.isfile(input_path):
        return [input_path], []
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f"--input {input_path} is neither a file nor a folder")
    exclude = os.path.realpath(exclude) if exclude else None
    files, skipped = [], []

    def unlisted(error):
        skipped.append(Skipped(error.filename or str(error),
                               f"cannot list the folder: {error.strerror or error}"))

    for folder, dirs, names in os.walk(input_path, onerror=unlisted):
        kept = []
        for d in sorted(dirs):
            path = os.path.join(folder, d)
            if d.startswith("."):
                skipped.append(Skipped(path, "hidden"))
            elif os.path.realpath(path) == exclude:
                skipped.append(Skipped(path, "the output folder"))
            elif os.path.islink(path):
                skipped.append(Skipped(path, "a symbolic link to a folder (not followed)"))
            elif is_output_folder(path):
                logging.warning("skipping %s: an output folder of an earlier predict run (it "
                                "holds %s), not radiographs", path, OUTPUT_MARKER)
                skipped.append(Skipped(path, f"an output folder of predict (holds "
                                             f"{OUTPUT_MARKER})"))
            else:
                kept.append(d)
        dirs[:] = kept
        for name in sorted(names):
            path = os.path.join(folder, name)
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                skipped.append(Skipped(path, "hidden"))
            elif name in SKIPPED_NAMES:
                skipped.append(Skipped(path, "the index of a DICOM medium"))
            elif suffix not in io_lib.IMAGE_SUFFIXES and suffix != "":
                skipped.append(Skipped(path, f"suffix {suffix} is not one of "
                                             f"{', '.join(io_lib.IMAGE_SUFFIXES)} or none"))
            else:
                files.append(path)
    return files, skipped


def output_names(files, root):
    """NAME of each file, unique per file (see the module docstring): its path under `root`
    without the suffix, with it when another file differs only by its suffix, `~k` appended
    when a NAME is still taken. Compared without case."""
    relative = [os.path.relpath(f, root) for f in files]
    stems = [os.path.splitext(r)[0] for r in relative]
    counts = collections.Counter(s.casefold() for s in stems)
    wanted = [s if counts[s.casefold()] == 1 else r for s, r in zip(stems, relative)]
    # Paths a NAME's files may not take: summary.csv, the marker, folders of the outputs.
    taken = {SUMMARY_FILE.casefold(), OUTPUT_MARKER.casefold()}
    for name in wanted:
        parent = os.path.dirname(name)
        while parent:
            taken.add(parent.casefold())
            parent = os.path.dirname(parent)
    names = []
    for name in wanted:
        candidate, k = name, 1
        while {f"{candidate}.json".casefold(), f"{candidate}.png".casefold()} & taken:
            k += 1
            candidate = f"{name}~{k}"
        taken |= {f"{candidate}.json".casefold(), f"{candidate}.png".casefold()}
        names.append(candidate)
    return names


def _inside(path, folder):
    """Whether real path `path` is `folder` or lies under it."""
    return os.path.commonpath([path, folder]) == folder


def _read_marker(folder):
    """The marker of an output folder of ours, or None when `folder` has none."""
    path = os.path.join(folder, OUTPUT_MARKER)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        raise FileExistsError(f"--output {folder}: its {OUTPUT_MARKER} is unreadable ({e}); "
                              "delete the folder or choose another --output") from e
    if not isinstance(marker, dict) or marker.get("written_by") != MARKER_WRITER:
        raise FileExistsError(f"--output {folder}: {path} was not written by {MARKER_WRITER}")
    return marker


def _foreign_files(folder, marker):
    """Entries under `folder` that the run recorded in `marker` did not write."""
    ours = set(marker.get("files", [])) | {OUTPUT_MARKER}
    foreign = []
    for parent, dirs, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(parent, name), folder)
            if relative not in ours:
                foreign.append(relative)
        for d in dirs:
            if os.path.islink(os.path.join(parent, d)):
                foreign.append(os.path.relpath(os.path.join(parent, d), folder))
    return sorted(foreign)


def check_output_location(input_path, output_dir, files):
    """Refuses an `output_dir` that would overwrite, delete or re-read an input or a file
    predict did not write (see the module docstring); nothing is written.

    Raises:
        ValueError: `output_dir` is, or contains, the input (or an input through a link).
        FileExistsError: `output_dir` is a file, or a non-empty folder not made by predict, or
            one of ours holding files the earlier run did not write.
    """
    real_out = os.path.realpath(output_dir)
    real_in = os.path.realpath(input_path)
    if _inside(real_in, real_out):
        raise ValueError(
            f"--output {output_dir} (real path {real_out}) is or holds the input {input_path} "
            f"(real path {real_in}): predict never writes where its inputs are; choose another "
            "--output")
    for path in files:
        real = os.path.realpath(path)
        if _inside(real, real_out):
            raise ValueError(f"input {path} is {real}, inside --output {output_dir}: it would "
                             "be replaced by the outputs; choose another --output")
    if os.path.lexists(real_out) and not os.path.isdir(real_out):
        raise FileExistsError(f"--output {output_dir} exists and is not a folder")
    if not os.path.isdir(real_out) or not os.listdir(real_out):
        return
    marker = _read_marker(real_out)
    if marker is None:
        entries = sorted(os.listdir(real_out))
        raise FileExistsError(
            f"--output {output_dir} is a non-empty folder not written by predict (it holds "
            f"{', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}); predict replaces "
            "its output folder as a whole, so give a new or empty folder, or one of an earlier "
            "predict run")
    foreign = _foreign_files(real_out, marker)
    if foreign:
        raise FileExistsError(
            f"--output {output_dir} is an output folder of an earlier predict run, but "
            f"{len(foreign)} entries in it were not written by that run "
            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); the run "
            "replaces the folder as a whole: move them away or choose another --output")


def _check_probability(value, what):
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value)
                                       and 0.0 <= value <= 1.0):
        raise ValueError(f"{what} must be in [0, 1] (maps and scores are probabilities), got "
                         f"{value!r}")


def check_arguments(threshold=None, top_k=3, decision_threshold=DECISION_THRESHOLD):
    """Raises ValueError for a map `threshold` or a `decision_threshold` (a number, or
    {class: number}) outside [0, 1] (or not finite), or a top_k below 1; called before any
    work (the CLI calls it before loading the model)."""
    if threshold is not None:
        _check_probability(threshold, "threshold")
    if isinstance(decision_threshold, dict):
        for name, value in decision_threshold.items():
            _check_probability(value, f"decision threshold of {name}")
    else:
        _check_probability(decision_threshold, "decision_threshold")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer of at least 1, got {top_k}")


def parse_decision_threshold(value):
    """A decision threshold given as text (`--decision_threshold`): a number, or the path of
    a JSON file of {class: number}.

    Raises:
        ValueError: neither a number nor a readable JSON object (naming the value or file).
    """
    try:
        return float(value)
    except ValueError:
        pass
    if not os.path.isfile(value):
        raise ValueError(f"--decision_threshold={value}: neither a number nor a JSON file")
    try:
        with open(value, encoding="utf-8") as f:
            thresholds = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"--decision_threshold={value}: not readable JSON ({e})") from e
    if not isinstance(thresholds, dict):
        raise ValueError(f"--decision_threshold={value}: expected a JSON object "
                         "{class: number}")
    return thresholds


def map_threshold_of(map_threshold, threshold):
    """The map threshold from `--map_threshold` and its deprecated old name `--threshold`
    (either may be None).

    Raises:
        ValueError: both given, with different values.
    """
    if threshold is None:
        return map_threshold
    if map_threshold is not None and map_threshold != threshold:
        raise ValueError(f"--threshold={threshold} (deprecated: the map threshold) and "
                         f"--map_threshold={map_threshold} disagree; give only --map_threshold")
    return threshold


def decision_thresholds(class_names, decision_threshold=DECISION_THRESHOLD):
    """float64 [K]: each class's decision threshold, from one number for every class or
    {class name or NIH alias: number} (a class not named: `DECISION_THRESHOLD`).

    Raises:
        ValueError: a threshold outside [0, 1] or an unknown class.
    """
    check_arguments(decision_threshold=decision_threshold)
    if not isinstance(decision_threshold, dict):
        return np.full(len(class_names), float(decision_threshold))
    values = np.full(len(class_names), DECISION_THRESHOLD)
    for name, value in decision_threshold.items():
        values[select_classes(class_names, [name])[0]] = float(value)
    return values


def select_classes(class_names, classes=None):
    """Column indices of `classes` (names or NIH aliases; None: all) among the model's."""
    if not classes:
        return list(range(len(class_names)))
    ids = []
    for name in classes:
        name = ALIASES.get(name.strip(), name.strip())
        if name not in class_names:
            raise ValueError(f"unknown class {name!r}; the model's classes are "
                             f"{', '.join(class_names)}")
        if class_names.index(name) not in ids:
            ids.append(class_names.index(name))
    return ids


def regions_in_original(boxes, scores, padding):
    """One class's served regions -> [{"box": [x, y, w, h] original pixels, "score"}],
    highest score first; empty slots and regions wholly in the padding are left out.

    Args:
        boxes: [R, 4] normalised (ymin, xmin, ymax, xmax) on the padded square.
        scores: [R] the regions' largest map values (0: no region).
    """
    found = np.asarray(scores) > 0
    boxes = np.asarray(boxes, np.float64)[found] * padding.side
    xywh = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                     boxes[:, 2] - boxes[:, 0]], axis=-1).reshape(-1, 4)
    original, inside = padding.boxes_to_original(xywh)
    kept = [{"box": box.tolist(), "score": float(score)}
            for box, score, keep in zip(original, np.asarray(scores)[found], inside) if keep]
    return sorted(kept, key=lambda region: -region["score"])


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The model's answer on one scan: probs [K], maps [h, w, K] over the padded square, the
    `io.Padding`, and {class index: `regions_in_original`} for the reported classes."""
    probs: np.ndarray
    maps: np.ndarray
    padding: io_lib.Padding
    regions: dict


def as_scan(image):
    """An `io.Scan` from a Scan, a file path (`io.read_image`) or a numpy array: [H, W] or
    [H, W, 1] grey, or [H, W, 3] RGB (turned grey with ITU-R 601 weights, as Pillow's "L");
    uint8 is taken as it is, any other dtype min-max scaled to 0..255 (`io.to_uint8`, as a
    16-bit file is).

    Raises:
        ImageReadError: an unreadable file, or an array of another shape, empty, or beyond the
            bounds of `io.check_bounds`.
    """
    if isinstance(image, io_lib.Scan):
        return image
    if isinstance(image, (str, os.PathLike)):
        return io_lib.read_image(image)
    pixels = np.asarray(image)
    source = {"format": "array", "dtype": str(pixels.dtype), "shape": list(pixels.shape)}
    what = f"numpy array {pixels.dtype} {list(pixels.shape)}"
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or pixels.ndim == 3 and pixels.shape[-1] == 3) or not (
            np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool):
        raise io_lib.ImageReadError(what, "expected [H, W], [H, W, 1] or [H, W, 3] numbers")
    io_lib.check_bounds(what, pixels.shape[1], pixels.shape[0])
    if pixels.dtype != np.uint8:
        pixels = io_lib.to_uint8(pixels)
    if pixels.ndim == 3:
        pixels = np.round(pixels @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    height, width = pixels.shape
    return io_lib.Scan(pixels=pixels, source={**source, "width": width, "height": height})


def predict_scan(predictor, scan, threshold, class_ids):
    """Runs the model on a scan padded to a square; regions of the classes `class_ids`.

    Args:
        predictor: `load_predictor(...)`.
        scan: an `io.Scan`, a file path or a numpy array (`as_scan`).
        threshold: the map threshold T_s of the regions (None: the model's).
        class_ids: indices of the classes whose regions are found.
    """
    scan = as_scan(scan)
    threshold = predictor.metadata["region_threshold"] if threshold is None else threshold
    square, padding = io_lib.pad_to_square(scan.pixels)
    outputs = predictor.serve(tf.constant(square[None, :, :, None], tf.float32))
    probs = outputs[predictor.metadata["score_key"]].numpy()[0]
    maps = outputs[predictor.metadata["map_key"]].numpy()[0]
    # The model's region rule at `threshold` (the served region outputs use the exported
    # threshold): the same `inference.region_boxes` the signature runs.
    rule = RegionRule(**{**predictor.metadata["region_rule"], "threshold": float(threshold)})
    boxes, scores = (x.numpy()[0] for x in inference.region_boxes(maps[None], rule))
    return Prediction(probs=probs, maps=maps, padding=padding, regions={
        k: regions_in_original(boxes[k], scores[k], padding) for k in class_ids})


def top_findings(prediction, class_ids, top_k, thresholds=None):
    """The findings among `class_ids`: the classes whose probability is >= their decision
    threshold (`thresholds` [K], `decision_thresholds`; default `DECISION_THRESHOLD`), at most
    `top_k`, highest first (ties: canonical order)."""
    if thresholds is None:
        thresholds = np.full(len(prediction.probs), DECISION_THRESHOLD)
    found = [k for k in class_ids if prediction.probs[k] >= thresholds[k]]
    return sorted(found, key=lambda k: (-prediction.probs[k], k))[:top_k]


def findings_json(file_name, predictor, scan, prediction, threshold, class_ids, top_k,
                  thresholds=None):
    """The content of NAME.json (see the module docstring); `threshold` is the map threshold,
    `thresholds` [K] the decision thresholds (`top_findings`)."""
    names = predictor.metadata["class_names"]
    if thresholds is None:
        thresholds = np.full(len(names), DECISION_THRESHOLD)
    return {
        "file": file_name,
        "notice": NOTICE,
        "model": predictor.model_id,
        "image": {**scan.source, "padding": prediction.padding.as_dict()},
        "map_threshold": float(threshold),
        "decision_threshold": {names[k]: float(thresholds[k]) for k in class_ids},
        "box_format": BOX_FORMAT,
        "findings": [names[k] for k in top_findings(prediction, class_ids, top_k, thresholds)],
        "classes": {names[k]: {"probability": float(prediction.probs[k]),
                               "regions": prediction.regions[k]} for k in class_ids},
    }


def overlay_titles(prediction, class_names, findings, class_ids, thresholds):
    """(class indices, titles) of the panels of NAME.png: a panel per finding; with none, the
    most probable of `class_ids`, titled below its decision threshold."""
    if findings:
        return findings, [f"{class_names[k]}  p={prediction.probs[k]:.2f}" for k in findings]
    [top] = sorted(class_ids, key=lambda k: (-prediction.probs[k], k))[:1]
    return [top], [f"no finding: {class_names[top]}  p={prediction.probs[top]:.2f} "
                   f"< {thresholds[top]:.2f}"]


def write_overlay(scan, prediction, class_names, panels, titles, out_png):
    """NAME.png: a panel per class index of `panels` with its heat map, region boxes and
    title (`overlay_titles`; `figures.plot_heatmap_gallery`)."""
    height, width = scan.pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    shown = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = scan.pixels if scale == 1.0 else np.asarray(
        Image.fromarray(scan.pixels).resize(shown[::-1], Image.BILINEAR))
    to_shown = np.array([shown[1] / width, shown[0] / height] * 2)
    return figures.plot_heatmap_gallery(
        [image] * len(panels),
        [prediction.padding.grid_on_original(prediction.maps[..., k], *shown) for k in panels],
        None, None, titles, out_png,
        pred_boxes=[np.array([r["box"] for r in prediction.regions[k]]).reshape(-1, 4)
                    * to_shown for k in panels],
        columns=len(panels))


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `predict_files` did: a row per file (as in summary.csv), the entries of the input
    skipped (`Skipped`: path and reason) and the path of summary.csv."""
    rows: list
    skipped: list
    csv_path: str

    @property
    def num_failed(self):
        return sum(row["status"] != "ok" for row in self.rows)


def _predict_file(predictor, path, file_name, out_base, threshold, class_ids, top_k,
                  thresholds):
    scan = io_lib.read_image(path)
    prediction = predict_scan(predictor, scan, threshold, class_ids)
    findings = findings_json(file_name, predictor, scan, prediction, threshold, class_ids, top_k,
                             thresholds)
    os.makedirs(os.path.dirname(out_base), exist_ok=True)
    names = predictor.metadata["class_names"]
    write_overlay(scan, prediction, names, *overlay_titles(
        prediction, names, [names.index(c) for c in findings["findings"]], class_ids,
        thresholds), out_base + ".png")
    with open(out_base + ".json", "w", encoding="utf-8") as f:  # last: it marks a complete file
        json.dump(findings, f, indent=2)
    return findings


def _written_files(folder):
    """Every file under `folder`, relative, sorted (the marker itself excepted)."""
    found = []
    for parent, _, names in os.walk(folder):
        found += [os.path.relpath(os.path.join(parent, n), folder) for n in names]
    return sorted(f for f in found if f != OUTPUT_MARKER)


def _write_marker(folder, complete):
    fileio.atomic_write_json(os.path.join(folder, OUTPUT_MARKER), {
        "written_by": MARKER_WRITER, "complete": complete,
        "files": _written_files(folder) if complete else []})


class OutputChangedError(FileExistsError):
    """The output folder gained files predict did not write while it ran: it is left alone
    and the complete results stay in the partial folder the message names."""


def _swap_in(staging, real_out, output_dir):
    """Replaces `real_out` (missing, empty, or ours) by the complete `staging` folder."""
    if not os.path.isdir(real_out):
        os.rename(staging, real_out)
        return
    marker = _read_marker(real_out)
    if marker is None and os.listdir(real_out):  # something appeared during the run
        raise OutputChangedError(f"--output {output_dir} was filled by something else during "
                                 f"the run; it is left as it is and the results are in {staging}")
    foreign = _foreign_files(real_out, marker) if marker else []
    if foreign:
        raise OutputChangedError(f"--output {output_dir} gained files during the run "
                              f"({', '.join(foreign[:5])}); it is left as it is and the "
                              f"results are in {staging}")
    old = os.path.join(os.path.dirname(real_out),
                       f".{os.path.basename(real_out)}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(real_out, old)
    try:
        os.rename(staging, real_out)
    except BaseException:
        os.rename(old, real_out)
        raise
    shutil.rmtree(old)


def predict_files(predictor, input_path, output_dir, threshold=None, top_k=3, classes=None,
                  progress=True, decision_threshold=DECISION_THRESHOLD):
    """Predicts every image of `input_path` (see the module docstring) into `output_dir`.

    A file that fails (unreadable, beyond the bounds of `io.check_bounds`, or any error while
    predicting or writing) gets an `error` row in summary.csv with its message, and the batch
    goes on. The location checks (`check_output_location`) run before any image is read; the
    results appear in `output_dir` only once all are written (see the module docstring).

    Args:
        predictor: `load_predictor(...)`.
        input_path: a file or a folder.
        output_dir: where NAME.json, NAME.png and summary.csv go: a new or empty folder, or an
            earlier output folder of predict, whose content is replaced.
        threshold: the map threshold T_s of the regions (default: the model's).
        top_k: at most this many findings per image (>= 1).
        classes: class names to report (default: all).
        progress: show a tqdm bar.
        decision_threshold: a class is a finding when its probability is >= this (one number,
            or {class: number}, `decision_thresholds`).

    Returns:
        `Summary`.

    Raises:
        FileNotFoundError: `input_path` does not exist.
        ValueError: a bad argument, no image file under `input_path`, or an `output_dir` that
            is or holds an input.
        FileExistsError: an `output_dir` that holds files predict did not write.
    """
    check_arguments(threshold, top_k, decision_threshold)
    names = predictor.metadata["class_names"]
    class_ids = select_classes(names, classes)
    thresholds = decision_thresholds(names, decision_threshold)
    threshold = predictor.metadata["region_threshold"] if threshold is None else threshold
    check_arguments(threshold, top_k)
    if os.path.isdir(input_path) and is_output_folder(input_path):
        raise ValueError(f"--input {input_path} is an output folder of predict (it holds "
                         f"{OUTPUT_MARKER}): its PNGs are overlays, not radiographs")
    files, skipped = find_inputs(input_path, exclude=output_dir)
    if not files:
        raise ValueError(f"no PNG, JPEG or DICOM file under {input_path} (skipped: "
                         f"{', '.join(s.path for s in skipped) or 'nothing'})")
    check_output_location(input_path, output_dir, files)
    root = input_path if os.path.isdir(input_path) else os.path.dirname(input_path) or "."
    real_out = os.path.realpath(output_dir)
    os.makedirs(os.path.dirname(real_out), exist_ok=True)
    staging = os.path.join(os.path.dirname(real_out), f".{os.path.basename(real_out)}.partial-"
                                                      f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        _write_marker(staging, complete=False)  # a partial folder is never read as input
        rows = []
        for path, name in zip(tqdm(files, unit="img", desc="predict", disable=not progress),
                              output_names(files, root)):
            row = {"file": os.path.relpath(path, root), "name": name, "status": "ok",
                   "error": "", "findings": ""}
            try:
                result = _predict_file(predictor, path, row["file"], os.path.join(staging, name),
                                       threshold, class_ids, top_k, thresholds)
            except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop all)
                row.update(status="error", error=str(e) if isinstance(e, io_lib.ImageReadError)
                           else f"{path}: {type(e).__name__}: {e}")
                logging.error("%s", row["error"])
                for suffix in (".png", ".json"):  # no half result of a failed file
                    if os.path.exists(os.path.join(staging, name) + suffix):
                        os.remove(os.path.join(staging, name) + suffix)
            else:
                row["findings"] = "; ".join(f"{c} {result['classes'][c]['probability']:.3f}"
                                            for c in result["findings"])
                row.update({c: f"{v['probability']:.6f}" for c, v in result["classes"].items()})
            rows.append(row)
        text = std_io.StringIO(newline="")
        writer = csv.DictWriter(text, ["file", "name", "status", "error", "findings"]
                                + [names[k] for k in class_ids], restval="")
        writer.writeheader()
        writer.writerows(rows)
        fileio.atomic_write(os.path.join(staging, SUMMARY_FILE), text.getvalue())
        _write_marker(staging, complete=True)
        _swap_in(staging, real_out, output_dir)
    except BaseException as e:
        if not isinstance(e, OutputChangedError):
            shutil.rmtree(staging, ignore_errors=True)
        raise
    for entry in skipped:
        logging.info("skipped %s: %s", entry.path, entry.reason)
    return Summary(rows=rows, skipped=skipped, csv_path=os.path.join(output_dir, SUMMARY_FILE))
