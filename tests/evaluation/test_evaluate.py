"""chestxray_tf/evaluation/evaluate.py and cli/evaluate.py on a tiny trained run."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from chestxray_tf.data import nih
from chestxray_tf.evaluation import evaluate
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.data import selection as data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def evaluated(trained_run):
    return evaluate.evaluate(str(trained_run), "latest", "test_fold", progress=False)


def test_files_and_keys(evaluated, trained_run, nih_source):
    out = evaluated["out_dir"]
    for name in ("report.json", "report.md", "roc_curves.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(evaluated["json"]) as f:
        report = json.load(f)
    results = report["results"]
    assert report["checkpoint"].endswith("ckpt-12") and report["paper"] == "li2018"
    config = workdir_lib.load_config(str(trained_run))
    test_ids = data.select(config.data).test
    assert results["num_images"] == len(test_ids)
    assert set(results["auc"]["per_class"]) == set(CLASS_NAMES)
    assert set(results["localization"]["iou"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6",
                                                   "0.7"}
    # Per class, the localization counts are the test images with a box of that class.
    meta = nih.load_metadata(nih_source / "Data_Entry_2017_v2020.csv",
                             nih_source / "BBox_List_2017.csv")
    boxes = meta.boxes[meta.boxes["image_id"].isin(test_ids)]
    counts = results["localization"]["iou"]["0.1"]["counts"]
    for name in BOXED_CLASSES:
        assert counts.get(name, 0) == boxes.loc[boxes["label"] == name, "image_id"].nunique()
    # Accuracy falls (weakly) as T rises, and IoR >= IoU region by region.
    means = [results["localization"]["iou"][t]["mean"] for t in ("0.1", "0.3", "0.5", "0.7")]
    assert all(a >= b for a, b in zip(means, means[1:]))
    for name in BOXED_CLASSES:
        iou = results["localization"]["iou"]["0.1"]["per_class"].get(name)
        ior = results["localization"]["ior"]["0.1"]["per_class"].get(name)
        if iou is not None:
            assert ior >= iou
    chance = results["localization_chance"]
    assert chance["iou"]["0.1"]["counts"] == counts
    assert set(chance["ior"]) == set(results["localization"]["ior"])
    galleries = [n for n in os.listdir(out) if n.startswith("heatmaps_")]
    assert galleries and all(n[len("heatmaps_"):-4] in BOXED_CLASSES for n in galleries)
    report_md = open(evaluated["markdown"]).read()
    assert "Table 1" in report_md and "Table 2" in report_md


def test_corrupt_checkpoint_is_a_clear_error(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    path = workdir_lib.resolve(str(workdir), "latest")
    data_file = path + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.truncate(os.path.getsize(data_file) // 2)
    with pytest.raises(ValueError, match=r"checkpoint .*ckpt-12 cannot be restored"):
        evaluate.evaluate(str(workdir), "latest", "test_fold", progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere/ckpt-3"):
        evaluate.evaluate(str(workdir), str(tmp_path / "nowhere" / "ckpt-3"), progress=False)


def test_cli_evaluate_official_test_split(trained_run, tmp_path, nih_source):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.evaluate", f"--workdir={workdir}",
         "--checkpoint=latest", "--split=official_test"], capture_output=True, text=True,
        timeout=300, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "eval" / "official_test" / "report.json") as f:
        results = json.load(f)["results"]
    official_test = nih.read_image_list(nih_source / "test_list.txt")
    assert results["split"] == "official_test"
    assert results["num_images"] == len(official_test)


def test_another_model_evaluates_through_the_same_path(built_set, tmp_path):
    """The global-pooling baseline (map key "cam", a 2x2 CAM at 64 px) trains and evaluates
    with the same code, against Li et al.'s published tables."""
    from chestxray_tf.training import trainer
    from tiny import tiny_config
    config = tiny_config(built_set, task="baseline", num_steps=2, num_val_images=0)
    trainer.train(config, str(tmp_path))
    paths = evaluate.evaluate(str(tmp_path), "latest", "test_fold", progress=False)
    with open(paths["json"]) as f:
        report = json.load(f)
    assert report["paper"] == "li2018" and report["config"]["task"] == "baseline"
    # Its difference row is taken to the paper's reference (baseline) rows, not Li's own.
    assert report["compared_with"] == "baseline"
    differences = [row["method"] for table in report["tables"] for group in table["groups"]
                   for row in group["rows"] if row["kind"] == "difference"]
    assert differences and all("paper (" in m for m in differences)
    published = {row["method"] for table in report["tables"] for group in table["groups"]
                 for row in group["rows"] if row["role"] == "baseline"}
    assert any(m.endswith(f"({name})") for m in differences for name in published)
    assert "localization" in report["results"]
