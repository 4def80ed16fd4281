"""Findings on radiographs: PNG, JPEG or DICOM files -> per image `NAME.json` and an overlay
`NAME.png`, and `summary.csv` over the batch (the library behind `chestxray_tf.cli.predict`).

`NAME.json` holds:

* `file`: the input's path relative to `--input`; `model`: which model answered
  (`{"type": "saved_model", "path", "fingerprint"}` or `{"type": "checkpoint", "path",
  "workdir"}`);
* `image`: how the file was read (`chestxray_tf.io`: format, width, height, scaling; for DICOM
  the photometric interpretation, rescale and VOI applied) and `padding` (the square the model
  saw: `top`, `left`, `side`, centred on black);
* `threshold`: the map threshold T_s of the regions (Li et al. 2018, Sec. 3.3: cells with
  p > T_s form the region); `box_format`: boxes are [x, y, w, h] in pixels of the original
  image, (x, y) its top-left corner (the convention of NIH's BBox_List_2017.csv);
* `findings`: the `top_k` reported classes by probability, highest first;
* `classes`: for each reported class (all, or `--classes`), its `probability` (the task's
  image-level score, Li et al. Eq. 2 for Li's model) and its `regions`: the task's regions on
  the map (its region rule, the one evaluation and the SavedModel use: `chestxray_tf.inference`;
  Li et al.: every cell > threshold together as one region), each
  `{"box": [x, y, w, h], "score": the region's largest map value}`, highest score first;
  a region lying wholly in the padding is not in the image and is left out.

`NAME.png` shows the image once per finding: the finding's map as a heat map, its region boxes
(dashed), the class and its probability as the title. `summary.csv` has a row per file: its
status (`ok` or `error` with the message), the findings and every reported class's probability.

Inputs: `--input` is a file or a folder, walked recursively (hidden entries, `DICOMDIR` and the
output folder excepted); a folder's files named `.png`, `.jpg`, `.jpeg`, `.dcm`, `.dicom` or
without a suffix (as PACS exports often are) are read, others are listed as skipped. The outputs
mirror the input's sub-folders: NAME is the file's path under `--input` without its suffix
(with it, when two files differ only by their suffix, e.g. `a.png` and `a.dcm`).
"""

import collections
import csv
import dataclasses
import json
import os
from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image
from tqdm import tqdm

from chestxray_tf import export, inference, workdir as workdir_lib
from chestxray_tf import io as io_lib
from chestxray_tf.evaluation import figures
from chestxray_tf.labels import ALIASES
from chestxray_tf.tasks.base import RegionRule

SUMMARY_FILE = "summary.csv"
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


def find_inputs(input_path, exclude=None):
    """The files to predict under `input_path` (a file, or a folder walked recursively in
    sorted order; see the module docstring) and the files skipped, skipping `exclude`.

    Raises:
        FileNotFoundError: `input_path` does not exist.
    """
    if os.path.isfile(input_path):
        return [input_path], []
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f"--input {input_path} is neither a file nor a folder")
    exclude = os.path.abspath(exclude) if exclude else None
    files, skipped = [], []
    for folder, dirs, names in os.walk(input_path):
        kept = []
        for d in sorted(dirs):
            path = os.path.join(folder, d)
            if d.startswith(".") or os.path.abspath(path) == exclude:
                skipped.append(path)
            else:
                kept.append(d)
        dirs[:] = kept
        for name in sorted(names):
            suffix = os.path.splitext(name)[1].lower()
            readable = (suffix in io_lib.IMAGE_SUFFIXES or suffix == "") and not (
                name.startswith(".") or name in SKIPPED_NAMES)
            (files if readable else skipped).append(os.path.join(folder, name))
    return files, skipped


def output_names(files, root):
    """NAME of each file: its path under `root` without the suffix, or with it when another
    file has the same path but for the suffix."""
    relative = [os.path.relpath(f, root) for f in files]
    stems = [os.path.splitext(r)[0] for r in relative]
    counts = collections.Counter(stems)
    return [s if counts[s] == 1 else r for s, r in zip(stems, relative)]


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


def predict_scan(predictor, scan, threshold, class_ids):
    """Runs the model on a `io.Scan` padded to a square; regions of the classes `class_ids`."""
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


def top_findings(prediction, class_ids, top_k):
    """The `top_k` of `class_ids` by probability, highest first (ties: canonical order)."""
    return sorted(class_ids, key=lambda k: (-prediction.probs[k], k))[:top_k]


def findings_json(file_name, predictor, scan, prediction, threshold, class_ids, top_k):
    """The content of NAME.json (see the module docstring)."""
    names = predictor.metadata["class_names"]
    return {
        "file": file_name,
        "model": predictor.model_id,
        "image": {**scan.source, "padding": prediction.padding.as_dict()},
        "threshold": float(threshold),
        "box_format": BOX_FORMAT,
        "findings": [names[k] for k in top_findings(prediction, class_ids, top_k)],
        "classes": {names[k]: {"probability": float(prediction.probs[k]),
                               "regions": prediction.regions[k]} for k in class_ids},
    }


def write_overlay(scan, prediction, class_names, findings, out_png):
    """NAME.png: a panel per finding (class index in `findings`) with its heat map, region
    boxes and probability (`figures.plot_heatmap_gallery`)."""
    height, width = scan.pixels.shape
    scale = min(1.0, OVERLAY_MAX_SIDE / max(height, width))
    shown = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = scan.pixels if scale == 1.0 else np.asarray(
        Image.fromarray(scan.pixels).resize(shown[::-1], Image.BILINEAR))
    to_shown = np.array([shown[1] / width, shown[0] / height] * 2)
    return figures.plot_heatmap_gallery(
        [image] * len(findings),
        [prediction.padding.grid_on_original(prediction.maps[..., k], *shown) for k in findings],
        None, None,
        [f"{class_names[k]}  p={prediction.probs[k]:.2f}" for k in findings],
        out_png,
        pred_boxes=[np.array([r["box"] for r in prediction.regions[k]]).reshape(-1, 4)
                    * to_shown for k in findings],
        columns=len(findings))


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `predict_files` did: a row per file (as in summary.csv) and the files skipped."""
    rows: list
    skipped: list
    csv_path: str

    @property
    def num_failed(self):
        return sum(row["status"] != "ok" for row in self.rows)


def _predict_file(predictor, path, file_name, out_base, threshold, class_ids, top_k):
    scan = io_lib.read_image(path)
    prediction = predict_scan(predictor, scan, threshold, class_ids)
    findings = findings_json(file_name, predictor, scan, prediction, threshold, class_ids, top_k)
    os.makedirs(os.path.dirname(out_base), exist_ok=True)
    write_overlay(scan, prediction, predictor.metadata["class_names"],
                  top_findings(prediction, class_ids, top_k), out_base + ".png")
    with open(out_base + ".json", "w", encoding="utf-8") as f:  # last: it marks a complete file
        json.dump(findings, f, indent=2)
    return findings


def predict_files(predictor, input_path, output_dir, threshold=None, top_k=3, classes=None,
                  progress=True):
    """Predicts every image of `input_path` (see the module docstring) into `output_dir`.

    A file that fails (unreadable, or any error while predicting or writing) gets an `error`
    row in summary.csv with its message, and the batch goes on.

    Args:
        predictor: `load_predictor(...)`.
        input_path: a file or a folder.
        output_dir: where NAME.json, NAME.png and summary.csv go.
        threshold: the map threshold T_s of the regions (default: the model's).
        top_k: findings per image (>= 1).
        classes: class names to report (default: all).
        progress: show a tqdm bar.

    Returns:
        `Summary`.

    Raises:
        FileNotFoundError: `input_path` does not exist.
        ValueError: a bad argument, or no image file under `input_path`.
    """
    names = predictor.metadata["class_names"]
    class_ids = select_classes(names, classes)
    threshold = predictor.metadata["region_threshold"] if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (maps are probabilities), got {threshold}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    files, skipped = find_inputs(input_path, exclude=output_dir)
    if not files:
        raise ValueError(f"no PNG, JPEG or DICOM file under {input_path} (skipped: "
                         f"{', '.join(skipped) or 'nothing'})")
    root = input_path if os.path.isdir(input_path) else os.path.dirname(input_path) or "."
    os.makedirs(output_dir, exist_ok=True)
    rows = []
    for path, name in zip(tqdm(files, unit="img", desc="predict", disable=not progress),
                          output_names(files, root)):
        row = {"file": os.path.relpath(path, root), "name": name, "status": "ok", "error": "",
               "findings": ""}
        try:
            result = _predict_file(predictor, path, row["file"], os.path.join(output_dir, name),
                                   threshold, class_ids, top_k)
        except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop all)
            row.update(status="error", error=str(e) if isinstance(e, io_lib.ImageReadError)
                       else f"{path}: {type(e).__name__}: {e}")
            logging.error("%s", row["error"])
        else:
            row["findings"] = "; ".join(f"{c} {result['classes'][c]['probability']:.3f}"
                                        for c in result["findings"])
            row.update({c: f"{v['probability']:.6f}" for c, v in result["classes"].items()})
        rows.append(row)
    csv_path = os.path.join(output_dir, SUMMARY_FILE)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["file", "name", "status", "error", "findings"]
                                + [names[k] for k in class_ids], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return Summary(rows=rows, skipped=skipped, csv_path=csv_path)
