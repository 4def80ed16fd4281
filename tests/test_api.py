"""chestxray_tf/api.py and docs/python_api.md: the notebook API, its examples run as printed."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import chestxray_tf
from chestxray_tf import api, export, predict
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.evaluation import evaluate, report as report_lib
from chestxray_tf.labels import CLASS_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "python_api.md")


@pytest.fixture(scope="module")
def doc_folder(trained_run, nih_source, tmp_path_factory):
    """The folder the doc's examples expect: runs/li2018 (evaluated), exports/li2018,
    scan.png."""
    root = tmp_path_factory.mktemp("notebook")
    (root / "runs").mkdir()
    os.symlink(trained_run, root / "runs" / "li2018")
    evaluate.evaluate(str(trained_run), "latest", "test_fold", progress=False)
    config, model, _ = workdir_lib.restore_model(str(trained_run))
    export.export_saved_model(model, config, str(root / "exports" / "li2018"))
    scan = sorted((nih_source / "images").glob("*.png"))[0]
    Image.open(scan).save(root / "scan.png")
    return root


def code_blocks(path):
    with open(path, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_doc_examples_run(doc_folder, monkeypatch, capsys):
    blocks = code_blocks(DOC)
    assert len(blocks) >= 6
    monkeypatch.chdir(doc_folder)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC} block {i + 1}", "exec"), namespace)  # pylint: disable=exec-used
    printed = capsys.readouterr().out
    assert "li2018" in printed and "Atelectasis" in printed
    assert (doc_folder / "predictions" / "summary.csv").is_file()


def test_predict_matches_predict_scan_and_the_decision(doc_folder):
    model = chestxray_tf.load_model(doc_folder / "runs" / "li2018")
    assert model.class_names == list(CLASS_NAMES)
    pixels = np.random.default_rng(1).integers(0, 256, (48, 80), dtype=np.uint8)
    result = model.predict(pixels, decision_threshold=0.0, top_k=3)
    reference = predict.predict_scan(model.predictor, pixels, None, list(range(14)))
    np.testing.assert_allclose([result.probabilities[c] for c in CLASS_NAMES], reference.probs,
                               rtol=1e-6)
    top = sorted(range(14), key=lambda k: (-reference.probs[k], k))[:3]
    assert result.findings == [CLASS_NAMES[k] for k in top]
    assert model.predict(pixels, decision_threshold=1.0).findings == [] or \
        max(reference.probs) >= 1.0
    assert result.record["file"] is None and result.record["image"]["format"] == "array"
    table = result.table()
    assert table.index[0] == CLASS_NAMES[top[0]] and table["finding"].sum() == 3
    with pytest.raises(ValueError, match="decision_threshold must be in"):
        model.predict(pixels, decision_threshold=-1)
    with pytest.raises(FileNotFoundError, match="neither an exported SavedModel"):
        chestxray_tf.load_model(doc_folder)


def write(path, payload):
    path.write_text(json.dumps(payload))
    return path


def test_read_report_rows_against_the_results(tmp_path):
    results = {
        "auc": {"per_class": {"Mass": 0.75, "Nodule": None}, "mean": 0.75,
                "counts": {"Mass": 4, "Nodule": 0}},
        "localization": {"iou": {"0.1": {"per_class": {"Mass": 0.5}, "mean": 0.5,
                                         "counts": {"Mass": 2}},
                                 "0.5": {"per_class": {"Mass": 0.0}, "mean": 0.0}},
                         "inclusive": False},
        "thresholds": {"selection": "fixed", "values": {"Mass": 0.5}},
        "num_images": 7}
    path = write(tmp_path / "report.json", {"paper": "li2018", "checkpoint": "c", "stage": "s0",
                                            "variant": "", "compared_with": "paper",
                                            "results": results})
    frame = api.read_report(tmp_path)
    expected = [("auc", np.nan, "Mass", 0.75, 4.0), ("auc", np.nan, "Nodule", np.nan, 0.0),
                ("auc", np.nan, "mean", 0.75, np.nan),
                ("localization.iou", 0.1, "Mass", 0.5, 2.0),
                ("localization.iou", 0.1, "mean", 0.5, np.nan),
                ("localization.iou", 0.5, "Mass", 0.0, np.nan),
                ("localization.iou", 0.5, "mean", 0.0, np.nan)]
    pd.testing.assert_frame_equal(frame, pd.DataFrame(expected, columns=list(api.REPORT_COLUMNS)))
    assert frame.attrs["paper"] == "li2018" and frame.attrs["num_images"] == 7
    assert frame.attrs["thresholds"]["selection"] == "fixed"
    assert api.read_report(path).equals(frame)
    with pytest.raises(FileNotFoundError, match="report.json of evaluate"):
        api.read_report(tmp_path / "missing")
    with pytest.raises(ValueError, match="no 'results'"):
        api.read_report(write(tmp_path / "other.json", {"tables": []}))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        api.read_report(tmp_path / "broken.json")


def test_read_report_of_write_report(doc_folder):
    frame = api.read_report(doc_folder / "runs" / "li2018" / "eval" / "test_fold")
    with open(doc_folder / "runs" / "li2018" / "eval" / "test_fold" / "report.json") as f:
        results = report_lib.normalize_results(json.load(f)["results"])
    auc = frame[frame.metric == "auc"].set_index("class")["value"]
    for name, value in results["auc"]["per_class"].items():
        assert (np.isnan(auc[name]) if value is None else auc[name] == pytest.approx(value))
    iou = results["localization"]["iou"]
    assert sorted(frame[frame.metric == "localization.iou"].threshold.unique()) == sorted(
        float(t) for t in iou)


def test_import_chestxray_tf_stays_light():
    code = ("import sys, chestxray_tf; chestxray_tf.NOTICE; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True).stdout
    assert out.strip() == "['pandas']"  # the API's module; TensorFlow only with load_model
    assert chestxray_tf.NOTICE == predict.NOTICE == api.NOTICE
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        chestxray_tf.nothing  # pylint: disable=pointless-statement
