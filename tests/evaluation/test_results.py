"""Tests of chestxray_tf/evaluation/results.py: the results dict and its builders."""

import numpy as np
import pytest

from chestxray_tf.evaluation.results import (accuracy_tables, class_table, normalize_results,
                                             threshold_key)
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES
from chestxray_tf.metrics.auc import roc_auc_exact
from chestxray_tf.metrics.localization import localization_accuracy

LI_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def test_threshold_key():
    assert [threshold_key(t) for t in (0.1, "0.30", 0.1 + 0.2, 1)] == ["0.1", "0.3", "0.3", "1"]
    with pytest.raises(ValueError, match="not a number"):
        threshold_key("high")


def test_accuracy_tables_from_localization_accuracy():
    rng = np.random.default_rng(3)
    class_ids = rng.integers(0, 7, size=60)  # class 7 (Pneumothorax) has no image
    overlaps = rng.uniform(0, 1, size=60)
    table = localization_accuracy(class_ids, overlaps, LI_THRESHOLDS)
    tables = accuracy_tables(table.per_class, LI_THRESHOLDS, table.mean, table.counts)
    assert sorted(tables) == sorted(threshold_key(t) for t in LI_THRESHOLDS)
    for t in LI_THRESHOLDS:
        for k, name in enumerate(BOXED_CLASSES):
            hits = total = 0
            for c, o in zip(class_ids, overlaps):
                if c == k:
                    total += 1
                    hits += o > t
            got = tables[threshold_key(t)]["per_class"][name]
            assert got is None if total == 0 else got == pytest.approx(hits / total)
            assert tables[threshold_key(t)]["counts"][name] == total


def test_class_table_from_auc_result_and_aliases():
    rng = np.random.default_rng(4)
    labels = (rng.uniform(size=(30, 14)) < 0.4).astype(int)
    labels[:, 13] = 0  # Hernia: no positive -> undefined
    result = roc_auc_exact(labels, rng.uniform(size=(30, 14)))
    table = class_table(result.per_class, result.mean)
    assert list(table["per_class"]) == list(CLASS_NAMES)
    assert table["per_class"]["Hernia"] is None
    assert table["per_class"]["Mass"] == pytest.approx(result.per_class[4])
    assert table["mean"] == pytest.approx(result.mean)
    by_alias = class_table({"Infiltrate": 0.5, "Mass": 0.7})
    assert by_alias == {"per_class": {"Infiltration": 0.5, "Mass": 0.7}, "mean": 0.6}


@pytest.mark.parametrize("results, message", [
    ({"auc": {"per_class": {"Atelectasys": 0.5}}}, "Atelectasys"),
    ({"auc": {"per_class": {"Mass": "high"}}}, "not a number"),
    ({"auc": {"per_class": {"Mass": float("inf")}}}, "not finite"),
    ({"auc": {"per_class": {"Mass": 0.5}, "std": 1}}, "unknown keys"),
    ({"loss": 1.0, "auc": {"per_class": {}}}, "unknown keys"),
    ({"split": "test"}, "no metric"),
    ({"localization": {"iou": {0.1: {"per_class": {}, "counts": {"Mass": -1}}}}}, "count"),
    ({"localization": {"iou": {"low": {"per_class": {}}}}}, "not a number"),
    ({"auc": {"per_class": {}}, "thresholds": {"selection": "tuned"}}, "selection"),
])
def test_bad_results_are_clear_errors(results, message):
    with pytest.raises(ValueError, match=message):
        normalize_results(results)
