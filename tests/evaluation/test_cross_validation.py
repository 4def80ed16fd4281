"""chestxray_tf/cross_validation.py, cv_report and cli/cv.py over 2 folds of a tiny config."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from chestxray_tf import cross_validation

from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_folds_aggregate_and_finished_folds_are_skipped(built_set, tmp_path, capsys):
    config = tiny_config(built_set, num_steps=4, steps_per_epoch=4, num_val_images=0)
    paths = cross_validation.run(config, str(tmp_path), [0, 1], progress=False)
    folds = []
    for k in (0, 1):
        with open(tmp_path / f"fold_{k}" / "eval" / "test_fold" / "report.json") as f:
            folds.append(json.load(f))
        assert folds[-1]["config"]["data"]["test_fold"] == k
    with open(paths["json"]) as f:
        cv = json.load(f)
    auc = [f["results"]["auc"]["mean"] for f in folds]
    assert any(abs(v - np.mean(auc)) < 1e-9 for v in _numbers(cv))
    assert any(abs(v - np.std(auc, ddof=1)) < 1e-9 for v in _numbers(cv))
    assert os.path.exists(paths["markdown"])

    stamp = os.path.getmtime(tmp_path / "fold_0" / "eval" / "test_fold" / "report.json")
    capsys.readouterr()
    cross_validation.run(config, str(tmp_path), [0, 1], progress=False)
    assert capsys.readouterr().out.count("finished, skipped") == 2
    assert os.path.getmtime(tmp_path / "fold_0" / "eval" / "test_fold" / "report.json") == stamp


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield float(tree)


def test_print_commands():
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.cv", "--config=configs/li2018_table2.py",
         "--workdir=/tmp/cv", "--folds=0,2", "--print_commands",
         "--config.train.batch_size=10"], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, fold in zip(lines, (0, 2)):
        assert f"--workdir=/tmp/cv/fold_{fold} --config.data.test_fold={fold}" in line
        assert "--config.train.batch_size=10" in line and "cli.evaluate" in line
    assert "--folds=0,2" in lines[2]


def test_the_fold_is_cross_validations_to_set(tmp_path):
    """A --config.data.test_fold override would give every fold's command the same fold."""
    with pytest.raises(ValueError, match="sets the test fold of each run itself"):
        cross_validation.fold_commands("configs/li2018.py", ["--config.data.test_fold=0"],
                                       str(tmp_path), [0, 1])
    with pytest.raises(ValueError, match="not distinct"):
        cross_validation.run(None, str(tmp_path), [0, 0])


def test_cv_report_refuses_two_reports_of_one_fold(tmp_path):
    from chestxray_tf.evaluation import cv_report
    paths = []
    for k in range(2):
        path = tmp_path / f"r{k}.json"
        auc = {"per_class": {"Atelectasis": 0.5}, "mean": 0.5, "counts": {"Atelectasis": 1}}
        path.write_text(json.dumps({"paper": "li2018", "results": {"auc": auc},
                                    "config": {"data": {"test_fold": 3}}}))
        paths.append(str(path))
    with pytest.raises(ValueError, match=r"fold\(s\) \[3\] are tested by more than one"):
        cv_report.write_cv_report(tmp_path, paths)
