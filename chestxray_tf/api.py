"""The Python API for notebooks (`docs/python_api.md`): load a model, predict on an array or a
file, read an evaluation report as a table.

    import chestxray_tf
    model = chestxray_tf.load_model("runs/li2018")   # a training workdir or an exported SavedModel
    result = model.predict("scan.png")              # or a numpy array [H, W] / [H, W, 3]

`result.findings` are the classes whose probability reaches the decision threshold,
`result.table()` has a row per class. `chestxray_tf.read_report("runs/li2018/eval/test_fold")`
is the `report.json` of `evaluate` as a tidy DataFrame. For research only, not for diagnosis
(`NOTICE`).

TensorFlow is imported by `load_model`, not by `import chestxray_tf`.
"""

import dataclasses
import json
import os

import numpy as np
import pandas as pd

DECISION_THRESHOLD = 0.5  # the default decision threshold of a finding (`predict` too)
NOTICE = ("For research only, not for diagnosis: these models reproduce research papers, are "
          "not validated for clinical use and must not guide the care of a patient.")
REPORT_FILE = "report.json"
REPORT_COLUMNS = ("metric", "threshold", "class", "value", "count")


@dataclasses.dataclass(frozen=True)
class Result:
    """A model's answer on one image.

    findings: class names whose probability is >= their decision threshold, highest first.
    probabilities: {class: the task's image-level probability} (`Task.scores`).
    regions: {class: [{"box": [x, y, w, h] pixels of the image, "score"}]}, highest first.
    maps: float [h, w, K] localization maps over the image padded to a square.
    record: everything, as predict's NAME.json (`chestxray_tf.predict`), with `notice`.
    """
    findings: list
    probabilities: dict
    regions: dict
    maps: np.ndarray
    record: dict

    def table(self):
        """A DataFrame indexed by class: probability, decision_threshold, finding (bool),
        regions (count), highest first."""
        thresholds = self.record["decision_threshold"]
        frame = pd.DataFrame({
            "probability": self.probabilities,
            "decision_threshold": {c: thresholds[c] for c in self.probabilities},
            "finding": {c: c in self.findings for c in self.probabilities},
            "regions": {c: len(r) for c, r in self.regions.items()}})
        frame.index.name = "class"
        return frame.sort_values("probability", ascending=False, kind="stable")


class Model:
    """A loaded model (`load_model`): `predict(image)` and its `class_names`."""

    def __init__(self, predictor):
        self.predictor = predictor

    @property
    def class_names(self):
        return list(self.predictor.metadata["class_names"])

    @property
    def map_threshold(self):
        """The map threshold of the regions the model was exported / configured with."""
        return self.predictor.metadata["region_threshold"]

    def predict(self, image, *, decision_threshold=DECISION_THRESHOLD, map_threshold=None,
                classes=None, top_k=None):
        """Runs the model on one image.

        Args:
            image: a file path (PNG, JPEG, DICOM), a numpy array ([H, W], [H, W, 1] or
                [H, W, 3]; uint8 as is, other dtypes min-max scaled: `predict.as_scan`) or an
                `io.Scan`.
            decision_threshold: a class is a finding when its probability is >= this (one
                number, or {class: number}).
            map_threshold: the map threshold of the regions (default: the model's).
            classes: class names to report (default: all).
            top_k: at most this many findings (default: every class that passes).

        Returns:
            `Result`.
        """
        from chestxray_tf import predict  # pylint: disable=import-outside-toplevel
        names = self.class_names
        top_k = len(names) if top_k is None else top_k
        predict.check_arguments(map_threshold, top_k, decision_threshold)
        class_ids = predict.select_classes(names, classes)
        thresholds = predict.decision_thresholds(names, decision_threshold)
        scan = predict.as_scan(image)
        map_threshold = self.map_threshold if map_threshold is None else map_threshold
        prediction = predict.predict_scan(self.predictor, scan, map_threshold, class_ids)
        file_name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
        record = predict.findings_json(file_name, self.predictor, scan, prediction,
                                       map_threshold, class_ids, top_k, thresholds)
        return Result(findings=record["findings"],
                      probabilities={c: v["probability"] for c, v in record["classes"].items()},
                      regions={c: v["regions"] for c, v in record["classes"].items()},
                      maps=prediction.maps, record=record)


def load_model(path, checkpoint="latest"):
    """A `Model` from an exported SavedModel folder or a training workdir (its `checkpoint`:
    latest, best, or a checkpoint path).

    Raises:
        FileNotFoundError: `path` is neither.
    """
    from chestxray_tf import predict  # pylint: disable=import-outside-toplevel
    return Model(predict.load_predictor(os.fspath(path), checkpoint))


def _tables(node, path=()):
    """(metric path, TABLE) of every `results` table under `node` (see `results.py`)."""
    if isinstance(node, dict) and "per_class" in node:
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _tables(value, path + (str(key),))


def _threshold(key):
    try:
        return float(key)
    except ValueError:
        return None


def read_report(path):
    """The metrics of an evaluation report as a tidy DataFrame.

    Args:
        path: a `report.json` written by `evaluate` (`evaluation.report.write_report`), or
            the folder holding it (e.g. W/eval/test_fold).

    Returns:
        DataFrame with a row per (metric, threshold, class): `metric` ("auc",
        "localization.iou", "afp", ...; "localization_chance.iou" for the chance level),
        `threshold` (the T of a thresholded metric, else NaN), `class` (a class name or
        "mean"), `value` (NaN where undefined), `count` (the class's test images when the
        report has them, else NaN). `frame.attrs` holds the report's paper, checkpoint, stage,
        variant, compared_with and the results' split, num_images and thresholds.
        `frame.pivot_table(index="class", columns=["metric", "threshold"], values="value",
        dropna=False)` gives the classes-by-metrics grid.

    Raises:
        FileNotFoundError: no report there. ValueError: a file that is not a report.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, REPORT_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: give a report.json of evaluate or its folder")
    with open(path, encoding="utf-8") as f:
        try:
            report = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not JSON: {e}") from e
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict):
        raise ValueError(f"{path} has no 'results': not a report.json of evaluate")
    rows = []
    for keys, table in _tables(report["results"]):
        threshold = _threshold(keys[-1]) if len(keys) > 1 else None
        metric = ".".join(keys[:-1] if threshold is not None else keys)
        counts = table.get("counts") or {}
        for name, value in [*table["per_class"].items(), ("mean", table.get("mean"))]:
            rows.append((metric, threshold, name, value, counts.get(name)))
    frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).astype(
        {"threshold": float, "value": float, "count": float})
    frame.attrs = {key: report.get(key) for key in ("paper", "checkpoint", "stage", "variant",
                                                    "compared_with")}
    frame.attrs.update({key: report["results"].get(key)
                        for key in ("split", "num_images", "thresholds")})
    return frame
