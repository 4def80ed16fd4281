"""The `results` dict of an evaluated run: every metric per class and mean (SPEC §6).

The evaluation code fills it (with `class_table` / `accuracy_tables` from the outputs of
`chestxray_tf.metrics`); `report.write_report` writes it beside the papers' published tables,
`cv_report` averages it over folds. Every entry is optional, but at least one metric is needed:

    {
      "auc":       TABLE,   # ROC AUC at 200 thresholds (Li et al. 2018, footnote 4)
      "auc_exact": TABLE,   # rank-based ROC AUC
      "localization": {
        "iou": {"0.1": TABLE, ..., "0.7": TABLE},  # accuracy at T(IoU) = key (Li Table 2)
        "ior": {"0.1": TABLE, ...},                # accuracy at T(IoR) = key
        "inclusive": False,  # a hit is overlap >= T (True) or overlap > T (False)
      },
      "localization_chance": {...},  # as "localization", for the model's own regions moved
                                     # to random places: what location alone is worth
      "average_iou": TABLE,  # IoU of the predicted box, averaged (Hermoza et al. Table 2)
      "cdice": TABLE,        # continuous Dice (Hermoza et al. Table 2, SPEC §5)
      "afp": {"0.3": TABLE, "0.5": TABLE},  # average false positives at T(IoU) (Sedai Table 1)
      "thresholds": {        # the binarisation thresholds of the maps
        "selection": "fixed" | "validation" | "test-tuned" | "cross-tuned",
        "values": {class: float},       # cross-tuned: the mean of the two halves'
        "per_threshold": {T: {class: float}},  # optional: tuned per (class, T) (Sedai)
        "halves": [{"values", ...}, ...],      # cross-tuned: each patient half's thresholds
      },
      "experiment": "B",     # which of the paper's experiments the run reproduces (the
                             # "experiment" of a published table or row), if it has several
      "split": "test_fold",  # free text
      "num_images": 176,
    }
    TABLE = {"per_class": {class: float | None}, "mean": float | None,
             "counts": {class: int}}  # counts (optional): test images of the class

The five papers fit: Li et al. (AUC; accuracy at T(IoU) and T(IoR) 0.1-0.7), Rozenberg et al.
(T(IoU) = T(IoR) = 0.1, inclusive), Kim et al. (T(IoU) 0.3/0.5/0.7), Sedai et al. (T(IoU)
0.3/0.5 and AFP), Hermoza et al. (AUC, average IoU, cDice, T(IoU) 0.3/0.5/0.6, inclusive,
test-tuned thresholds). Class names are canonical (`chestxray_tf.labels`; aliases accepted);
threshold keys may be numbers or strings ("0.1"). NaN, and the value of a class whose count is
0, become None (printed "—").
"""

import math

import numpy as np

from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES, canonical_name

LOCALIZATION_METRICS = ("localization.iou", "localization.ior")
THRESHOLDED_METRICS = LOCALIZATION_METRICS + ("afp",)
# The metrics a published table can name; "localization.iou" is results["localization"]["iou"].
METRICS = ("auc", "auc_exact", "average_iou", "cdice") + THRESHOLDED_METRICS
RESULT_KEYS = ("auc", "auc_exact", "localization", "localization_chance", "average_iou", "cdice",
               "afp", "thresholds", "experiment", "split", "num_images")
THRESHOLD_SELECTIONS = ("fixed", "validation", "test-tuned", "cross-tuned")


def threshold_key(threshold):
    """The key of a threshold in `results` and in the published files: 0.1 -> "0.1"."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold {threshold!r} is not a number") from None
    return format(value, "g")


def number_or_none(value, where):
    """A finite float, or None for None / NaN."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{where}: {value!r} is not a number")
    value = float(value)
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise ValueError(f"{where}: {value} is not finite")
    return value


def _aligned(values, class_names, where):
    """{class: value} from a dict keyed by class names or a sequence aligned with class_names."""
    if isinstance(values, dict):
        return {canonical_name(k, where): v for k, v in values.items()}
    values = list(np.asarray(values, dtype=object).ravel())
    if len(values) != len(class_names):
        raise ValueError(f"{where}: {len(values)} values for {len(class_names)} classes "
                         f"({', '.join(class_names)})")
    return {canonical_name(k, where): v for k, v in zip(class_names, values)}


def class_table(per_class, mean=None, counts=None, class_names=CLASS_NAMES):
    """A TABLE of `results` (see the module docstring).

    Args:
        per_class: {class: value}, or values aligned with `class_names` (NaN = undefined),
            e.g. `AUCResult.per_class` or `ClassTable.per_class` of `chestxray_tf.metrics`.
        mean: the mean over classes; None computes it over the defined values.
        counts: optional {class: n} or counts aligned with `class_names`.
        class_names: the classes of sequence inputs.
    """
    table = {"per_class": _aligned(per_class, class_names, "per_class"), "mean": mean}
    if counts is not None:
        table["counts"] = _aligned(counts, class_names, "counts")
    table = _normalize_table(table, "class_table")
    if mean is None:
        table["mean"] = mean_of(table["per_class"].values())
    return table


def accuracy_tables(per_class, thresholds, mean=None, counts=None, class_names=BOXED_CLASSES):
    """{threshold key: TABLE} for `results["localization"]["iou"]` (or "ior", or "afp").

    Args:
        per_class: [len(thresholds), K], e.g. `localization_accuracy(...).per_class`.
        thresholds: the T values of the rows.
        mean: optional [len(thresholds)] means over classes.
        counts: optional [K] test images per class.
        class_names: the K classes of the columns.
    """
    rows = np.asarray(per_class, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] != len(thresholds):
        raise ValueError(f"per_class must be [{len(thresholds)}, K] (one row per threshold), "
                         f"got shape {rows.shape}")
    means = [None] * len(thresholds) if mean is None else list(np.ravel(mean))
    return {threshold_key(t): class_table(row, m, counts, class_names)
            for t, row, m in zip(thresholds, rows, means)}


def mean_of(values):
    """The mean of the values that are not None (None when all are)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _normalize_table(table, where):
    if not isinstance(table, dict) or "per_class" not in table:
        raise ValueError(f"{where} must be a dict with 'per_class' (and 'mean', 'counts')")
    unknown = set(table) - {"per_class", "mean", "counts"}
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}")
    per_class = {canonical_name(k, where): number_or_none(v, f"{where}.per_class[{k}]")
                 for k, v in table["per_class"].items()}
    out = {"per_class": per_class, "mean": number_or_none(table.get("mean"), f"{where}.mean")}
    if table.get("counts") is not None:
        counts = {}
        for k, v in table["counts"].items():
            n = number_or_none(v, f"{where}.counts[{k}]")
            if n is None or n < 0 or n != int(n):
                raise ValueError(f"{where}.counts[{k}] = {v!r} is not a count")
            counts[canonical_name(k, where)] = int(n)
        out["counts"] = counts
        for name, n in counts.items():
            if n == 0:
                per_class[name] = None
    return out


def _normalize_thresholded(tables, where):
    if not isinstance(tables, dict):
        raise ValueError(f"{where} must be a dict {{threshold: TABLE}}")
    return {threshold_key(t): _normalize_table(v, f"{where}[{t}]") for t, v in tables.items()}


def normalize_results(results):
    """A JSON-ready copy of `results` (see the module docstring); raises ValueError naming the
    entry on anything malformed."""
    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    unknown = set(results) - set(RESULT_KEYS)
    if unknown:
        raise ValueError(f"results has unknown keys {sorted(unknown)}; expected some of "
                         f"{', '.join(RESULT_KEYS)}")
    out = {}
    for key in ("auc", "auc_exact", "average_iou", "cdice"):
        if key in results:
            out[key] = _normalize_table(results[key], f"results[{key!r}]")
    if "afp" in results:
        out["afp"] = _normalize_thresholded(results["afp"], "results['afp']")
    for name in ("localization", "localization_chance"):
        if name not in results:
            continue
        loc = results[name]
        if not isinstance(loc, dict) or set(loc) - {"iou", "ior", "inclusive"}:
            raise ValueError(f"results[{name!r}] must be a dict with 'iou', 'ior', 'inclusive'")
        out[name] = {k: _normalize_thresholded(loc[k], f"results[{name!r}][{k!r}]")
                     for k in ("iou", "ior") if k in loc}
        if "inclusive" in loc:
            out[name]["inclusive"] = bool(loc["inclusive"])
    if "thresholds" in results:
        out["thresholds"] = _normalize_selection(results["thresholds"])
    for key in ("experiment", "split"):
        if key in results:
            out[key] = str(results[key])
    if "num_images" in results:
        out["num_images"] = int(results["num_images"])
    if not set(out) & {"auc", "auc_exact", "localization", "average_iou", "cdice", "afp"}:
        raise ValueError("results has no metric (auc, localization, average_iou, cdice, afp)")
    return out


def _class_values(values, where):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a dict {{class: threshold}}")
    return {canonical_name(k, where): number_or_none(v, f"{where}[{k}]")
            for k, v in values.items()}


def _normalize_selection(thresholds):
    where = "results['thresholds']"
    if not isinstance(thresholds, dict) or set(thresholds) - {"selection", "values",
                                                              "per_threshold", "halves"}:
        raise ValueError(f"{where} must be a dict with 'selection' and 'values' (and "
                         "'per_threshold', 'halves')")
    selection = thresholds.get("selection")
    if selection not in THRESHOLD_SELECTIONS:
        raise ValueError(f"{where}['selection'] = {selection!r}, expected one of "
                         f"{THRESHOLD_SELECTIONS}")
    out = {"selection": selection,
           "values": _class_values(thresholds.get("values", {}), f"{where}['values']")}
    if "per_threshold" in thresholds:
        out["per_threshold"] = {
            threshold_key(t): _class_values(v, f"{where}['per_threshold'][{t}]")
            for t, v in thresholds["per_threshold"].items()}
    if "halves" in thresholds:
        out["halves"] = [_normalize_selection({"selection": selection, **half})
                         for half in thresholds["halves"]]
        for half in out["halves"]:
            del half["selection"]
    return out


def metric_table(results, metric, threshold):
    """The TABLE of `metric` (at `threshold`) in normalised results, or None."""
    if metric in LOCALIZATION_METRICS:
        tables = results.get("localization", {}).get(metric.split(".")[1], {})
    elif metric == "afp":
        tables = results.get("afp", {})
    else:
        return results.get(metric)
    return tables.get(threshold_key(threshold))
