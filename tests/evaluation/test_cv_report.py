"""Tests of chestxray_tf/evaluation/cv_report.py: mean ± std over folds, checked against values
computed here with loops from the per-fold report.json files."""

import json
import math

import numpy as np
import pytest

from chestxray_tf.evaluation import cv_report, report
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES

THRESHOLDS = (0.1, 0.3, 0.5, 0.7)


def fold_results(seed, empty_class=None, inclusive=False):
    """Random results of one fold; `empty_class` has no test image in this fold."""
    rng = np.random.default_rng(seed)
    counts = {name: 0 if name == empty_class else int(rng.integers(3, 30))
              for name in BOXED_CLASSES}
    iou = {t: {"per_class": {name: float(rng.uniform()) for name in BOXED_CLASSES},
               "counts": counts} for t in THRESHOLDS}
    return {
        "auc": {"per_class": {name: float(rng.uniform(0.5, 1.0)) for name in CLASS_NAMES},
                "mean": float(rng.uniform())},
        "localization": {"iou": iou, "inclusive": inclusive},
        "average_iou": {"per_class": {name: float(rng.uniform()) for name in BOXED_CLASSES}},
    }


def write_folds(tmp_path, folds, paper="li2018"):
    """Per-fold reports in tmp_path/fold_k/eval; returns their report.json paths."""
    paths = []
    for k, results in enumerate(folds):
        written = report.write_report(tmp_path / f"fold_{k}" / "eval", results, paper,
                                      checkpoint=f"fold_{k}/ckpt-3")
        paths.append(written["json"])
    return paths


def reference_statistics(values, ddof):
    """(mean, std, n) by loops over the folds that have a value."""
    present = [v for v in values if v is not None]
    total = 0.0
    for v in present:
        total += v
    mean = total / len(present)
    squares = 0.0
    for v in present:
        squares += (v - mean) ** 2
    std = math.sqrt(squares / (len(present) - ddof)) if len(present) > ddof else None
    return mean, std, len(present)


def fold_values(paths, *keys):
    """The value at results[keys...] of every fold's report.json (None where absent)."""
    values = []
    for path in paths:
        with open(path) as f:
            entry = json.load(f)["results"]
        for key in keys:
            entry = entry.get(key) if entry is not None else None
        values.append(entry)
    return values


def cell(text, group, method, column):
    """A cell of a grouped classes-across Markdown table in `text`."""
    header, group_now = None, None
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == "Model":
            header = cells
            continue
        group_now = cells[0] or group_now
        if header and group_now == group and cells[1] == method and column in header:
            return cells[header.index(column)]
    raise AssertionError(f"no cell {group}/{method}/{column}")


@pytest.mark.parametrize("ddof", [1, 0])
def test_json_statistics_match_the_fold_reports(tmp_path, ddof):
    folds = [fold_results(0), fold_results(1, empty_class="Mass"), fold_results(2)]
    paths = write_folds(tmp_path, folds)
    written = cv_report.write_cv_report(tmp_path, paths, ddof=ddof)
    with open(written["json"]) as f:
        cv = json.load(f)
    assert cv["ddof"] == ddof and f"ddof={ddof}" in cv["std"]
    assert [fold["report"] for fold in cv["folds"]] == [
        f"fold_{k}/eval/report.json" for k in range(3)]
    checked = 0
    for t in ("0.1", "0.5"):
        for name in BOXED_CLASSES:
            keys = ("localization", "iou", t, "per_class", name)
            values = fold_values(paths, *keys)
            got = cv["results"]
            for key in keys:
                got = got[key]
            mean, std, n = reference_statistics(values, ddof)
            assert got["mean"] == pytest.approx(mean) and got["n"] == n
            assert got["folds"] == values
            assert got["std"] == pytest.approx(std)
            checked += 1
    assert cv["results"]["localization"]["iou"]["0.1"]["per_class"]["Mass"]["n"] == 2
    for name in CLASS_NAMES:
        mean, std, _ = reference_statistics(fold_values(paths, "auc", "per_class", name), ddof)
        assert cv["results"]["auc"]["per_class"][name]["mean"] == pytest.approx(mean)
        assert cv["results"]["auc"]["per_class"][name]["std"] == pytest.approx(std)
    assert cv["results"]["localization"]["inclusive"] is False
    assert checked == 16


def test_markdown_prints_mean_and_std_in_the_papers_tables(tmp_path):
    folds = [fold_results(10), fold_results(11), fold_results(12, empty_class="Nodule")]
    paths = write_folds(tmp_path, folds)
    written = cv_report.write_cv_report(tmp_path, paths)
    markdown = open(written["markdown"], encoding="utf-8").read()
    label = "**this CV (3 folds)**"
    values = fold_values(paths, "localization", "iou", "0.3", "per_class", "Atelectasis")
    mean, std, _ = reference_statistics(values, 1)
    assert cell(markdown, "0.3", label, "Atelectasis") == f"{mean:.2f} ± {std:.2f}"
    assert cell(markdown, "0.3", "*Δ this CV (3 folds) - paper (ours)*", "Atelectasis") == \
        f"{mean - 0.36:+.2f}"
    nodule = fold_values(paths, "localization", "iou", "0.3", "per_class", "Nodule")
    mean, std, n = reference_statistics(nodule, 1)
    assert n == 2 and cell(markdown, "0.3", label, "Nodule") == f"{mean:.2f} ± {std:.2f}"
    assert "Mean ± standard deviation over folds, numpy.std(ddof=1), over 3 folds" in markdown
    assert "[fold_1/eval/report.json](fold_1/eval/report.json)" in markdown


def test_a_mean_column_is_averaged_per_fold_first(tmp_path):
    folds = [fold_results(20), fold_results(21, empty_class="Effusion")]
    paths = write_folds(tmp_path, folds, paper="kim")
    markdown = open(cv_report.write_cv_report(tmp_path, paths)["markdown"],
                    encoding="utf-8").read()
    per_fold_means = []
    for path in paths:
        values = fold_values([path], "localization", "iou", "0.3", "per_class")[0]
        present = [values[name] for name in BOXED_CLASSES if values[name] is not None]
        per_fold_means.append(sum(present) / len(present))
    mean, std, _ = reference_statistics(per_fold_means, 1)
    assert cell(markdown, "0.3", "**this CV (2 folds)**", "Mean") == f"{mean:.2f} ± {std:.2f}"


def test_one_fold_has_no_std(tmp_path):
    paths = write_folds(tmp_path, [fold_results(30)])
    written = cv_report.write_cv_report(tmp_path, paths)
    with open(written["json"]) as f:
        entry = json.load(f)["results"]["auc"]["per_class"]["Edema"]
    assert entry["std"] is None and entry["n"] == 1
    markdown = open(written["markdown"], encoding="utf-8").read()
    assert cell(markdown, "0.1", "**this CV (1 fold)**", "Mass").count("±") == 0


def test_aggregate_recurses_and_checks_agreement():
    assert cv_report.aggregate([{"a": 1.0, "b": "x"}, {"a": 3.0, "b": "x"}, None]) == {
        "a": {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0)),
              "sem": pytest.approx(1.0), "n": 2, "folds": [1.0, 3.0, None]},
        "b": "x"}
    with pytest.raises(ValueError, match="results.b differs between folds"):
        cv_report.aggregate([{"b": "x"}, {"b": "y"}])


def test_folds_must_agree(tmp_path):
    strict = write_folds(tmp_path / "strict", [fold_results(40)])
    inclusive = write_folds(tmp_path / "inclusive", [fold_results(41, inclusive=True)])
    with pytest.raises(ValueError, match="inclusive differs between folds"):
        cv_report.write_cv_report(tmp_path, strict + inclusive)
    other_paper = write_folds(tmp_path / "kim", [fold_results(42)], paper="kim")
    with pytest.raises(ValueError, match="different papers"):
        cv_report.write_cv_report(tmp_path, strict + other_paper)


def test_missing_or_corrupt_fold_reports_are_clear_errors(tmp_path):
    paths = write_folds(tmp_path, [fold_results(50)])
    with pytest.raises(FileNotFoundError, match="fold_9"):
        cv_report.write_cv_report(tmp_path, paths + [str(tmp_path / "fold_9" / "report.json")])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt.json"):
        cv_report.write_cv_report(tmp_path, paths + [str(corrupt)])
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"results": {}}')
    with pytest.raises(ValueError, match="other.json is not a report.json"):
        cv_report.write_cv_report(tmp_path, paths + [str(not_a_report)])
    with pytest.raises(ValueError, match="no fold report"):
        cv_report.write_cv_report(tmp_path, [])
