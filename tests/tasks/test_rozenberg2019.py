"""The Rozenberg et al. 2019 Task (chestxray_tf/tasks/rozenberg2019.py) and its config: the
stages of both phases through `cli.train :tiny`, stage 2 leaves the base bit-identical, the
compute stages write the thresholds, evaluate -> export -> predict on the result; the coupled
decay Adam and the per-round lr schedule against NumPy references."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import export, io as io_lib, predict, workdir as workdir_lib
from chestxray_tf.data import pipeline
from chestxray_tf.evaluation import evaluate
from chestxray_tf.labels import CLASS_NAMES
from chestxray_tf.losses.rozenberg2019 import THRESHOLD_NAMES
from chestxray_tf.tasks import get_task
from chestxray_tf.tasks.rozenberg2019 import round_train_config
from chestxray_tf.training import defaults, optimizers, schedules

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
from configs import rozenberg2019 as rozenberg_config  # noqa: E402  pylint: disable=C0413

STAGES = ["base_1", "thresholds_base_1", "base_2", "thresholds_base_2", "crf_1",
          "thresholds_crf_1"]


@pytest.fixture(scope="module")
def run(built_set, tmp_path_factory):
    """`cli.train --config=configs/rozenberg2019.py:tiny,unannotated=20` on `built_set`."""
    workdir = tmp_path_factory.mktemp("rozenberg2019")
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.train",
         "--config=configs/rozenberg2019.py:tiny,unannotated=20", f"--workdir={workdir}",
         f"--config.data.manifest={built_set}", "--config.train.strategy=default"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _stage_dir(workdir, name):
    return workdir_lib.stage_dir(str(workdir), STAGES.index(name), name)


def _variables(workdir, stage):
    """{path: value} of every model variable at the stage's final checkpoint."""
    config = workdir_lib.load_config(str(workdir))
    folder = os.path.join(_stage_dir(workdir, stage), workdir_lib.CHECKPOINTS)
    _, model, _ = workdir_lib.restore_model(str(workdir), workdir_lib.latest_checkpoint(folder),
                                            config=config)
    return {v.path: v.numpy() for v in model.variables}


def test_stages_of_the_tiny_run(run):
    assert sorted(os.listdir(os.path.join(run, "stages"))) == [
        f"{i}_{name}" for i, name in enumerate(STAGES)]
    for name in STAGES:
        with open(os.path.join(_stage_dir(run, name), workdir_lib.DONE_FILE)) as f:
            done = json.load(f)
        assert done["kind"] == ("compute" if name.startswith("thresholds") else "gradient")
        if name.startswith("crf"):
            assert done["trainable"] and all(n.startswith("crf") for n in done["trainable"])
        elif name.startswith("base"):
            assert not any(n.startswith("crf") for n in done["trainable"])
    config = workdir_lib.load_config(str(run))
    assert config.data.unannotated_fraction == 0.2 and config.eval.experiment == "un20"


def test_crf_stage_leaves_the_base_bit_identical_and_trains_the_crf(run):
    before, after = _variables(run, "thresholds_base_2"), _variables(run, "crf_1")
    base = [p for p in before if not p.startswith("crf")]
    crf = [p for p in before if p.startswith("crf") and "moving" not in p]
    assert base and crf
    for path in base:
        np.testing.assert_array_equal(before[path], after[path], err_msg=path)
    assert any(not np.array_equal(before[p], after[p]) for p in crf)


def test_base_stage_leaves_the_crf_and_thresholds_bit_identical(run):
    before, after = _variables(run, "thresholds_base_1"), _variables(run, "base_2")
    for path in before:
        if path.startswith("crf") or "thresholds" in path:
            np.testing.assert_array_equal(before[path], after[path], err_msg=path)
    assert any(not np.array_equal(before[p], after[p]) for p in before if "head_conv" in p)


def test_compute_stage_writes_the_fitted_thresholds(run):
    folder = _stage_dir(run, "thresholds_crf_1")
    with open(os.path.join(folder, "thresholds.json")) as f:
        fitted = json.load(f)
    assert fitted["map"] == "z" and fitted["method"] == "youden"
    values = np.array([fitted["thresholds"][n] for n in THRESHOLD_NAMES], np.float32)
    stored = [v for p, v in _variables(run, "thresholds_crf_1").items() if "thresholds" in p]
    assert len(stored) == 1
    np.testing.assert_array_equal(stored[0], values)


@pytest.fixture(scope="module")
def evaluated(run):
    return evaluate.evaluate(str(run), "latest", "test_fold", progress=False)


def test_report_has_table1_the_variants_and_the_thresholds(evaluated):
    with open(evaluated["json"]) as f:
        report = json.load(f)
    assert report["paper"] == "rozenberg2019"
    assert report["config"]["eval"]["inclusive"] and report["config"]["eval"]["region_inclusive"]
    markdown = open(evaluated["markdown"]).read()
    for text in ("Table 1 (IoU accuracy)", "Table 1 (IoR accuracy)", "**this run**",
                 "Fitted thresholds", "Options of this run", "adam_l2"):
        assert text in markdown, text
    details = report["details"]["Fitted thresholds"]
    assert details["columns"] == ["class", *THRESHOLD_NAMES]
    assert [row[0] for row in details["rows"]] == list(CLASS_NAMES)
    assert set(evaluated["variants"]) == {"", "unary"}
    assert os.path.dirname(evaluated["variants"]["unary"]["json"]).endswith("unary")


def test_export_and_predict_serve_z(run, tmp_path):
    config, model, _ = workdir_lib.restore_model(str(run))
    out = tmp_path / "saved_model"
    export.export_saved_model(model, config, str(out))
    predictor = predict.load_predictor(str(out))
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    prediction = predict.predict_scan(predictor, io_lib.Scan(pixels=pixels, source={}), 0.5,
                                      [0, 1])
    expected = model(pipeline.preprocess_image(pixels[None, :, :, None], config.data.image_size,
                                               config.data.normalization), training=False)
    np.testing.assert_allclose(prediction.maps, expected["z"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prediction.probs, expected["image_probs"][0], rtol=1e-5,
                               atol=1e-6)
    assert export.read_metadata(str(out))["region_rule"]["inclusive"] is True


# ------------------------------------------------------------------ config and task

def test_config_arguments():
    un0 = rozenberg_config.get_config("unannotated=0")
    assert (un0.data.unannotated_fraction, un0.eval.experiment) == (0.0, "un0")
    assert un0.train.batch_size == 48 and un0.train.optimizer == "adam_l2"
    assert un0.stages.base.num_steps == 3000 and un0.stages.crf.num_steps == 1000
    tiny = rozenberg_config.get_config("tiny,unannotated=20,test_fold=3")
    assert tiny.data.test_fold == 3 and tiny.data.image_size == 64
    assert all(stage.num_steps <= 10 for stage in tiny.stages.values())
    with pytest.raises(ValueError, match="unannotated=50: Table 1 has 0 and 20"):
        rozenberg_config.get_config("unannotated=50")


@pytest.mark.parametrize("field,value", [("loss.gamma", "median"), ("loss.stage1", "sedai"),
                                         ("thresholds.fit", "learned")])
def test_bad_options_are_refused(field, value):
    config = rozenberg_config.get_config("tiny")
    section, key = field.split(".")
    config[section][key] = value
    with pytest.raises(ValueError, match=f"config.{field} must be one of"):
        get_task("rozenberg2019")(config)


def test_stage1_li_loss_option_builds_its_stages():
    config = rozenberg_config.get_config("tiny")
    config.loss.stage1 = "li2018"
    task = get_task("rozenberg2019")(config)
    stages = task.stages()
    assert [s.name for s in stages] == STAGES
    assert stages[0].loss == task.li_loss


def test_batch_gamma_is_the_batch_ratio():
    config = rozenberg_config.get_config("tiny")
    config.loss.gamma = "batch"
    labels = np.array([[1, 0, 0], [1, 1, 0]], np.float32)
    assert float(get_task("rozenberg2019")(config).gamma(labels)) == pytest.approx(3 / 3)


# ------------------------------------------------------------------ optimizer and schedule

def _adam_reference(w, grads, lr, decay, beta1=0.9, beta2=0.999, eps=1e-7):
    """Adam (Kingma & Ba, Keras' epsilon placement) on g + decay * w, one element at a time."""
    w = w.astype(np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        for i in range(w.size):
            gi = g.flat[i] + decay * w.flat[i]
            m.flat[i] = beta1 * m.flat[i] + (1 - beta1) * gi
            v.flat[i] = beta2 * v.flat[i] + (1 - beta2) * gi * gi
            alpha = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            w.flat[i] -= alpha * m.flat[i] / (np.sqrt(v.flat[i]) + eps)
    return w


def test_coupled_decay_adam_matches_the_reference():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    grads = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(3)]
    train = defaults.shared_config().train
    train.update(optimizer="adam_l2", weight_decay=0.5, learning_rate=0.1, lr_decay_epochs=0)
    optimizer = optimizers.make_optimizer(train, steps_per_epoch=1)
    variable = keras.Variable(w0)
    for g in grads:
        optimizer.apply_gradients([(tf.constant(g), variable)])
    np.testing.assert_allclose(variable.numpy(), _adam_reference(w0, grads, 0.1, 0.5),
                               rtol=1e-5, atol=1e-6)
    # With zero gradients the coupled decay alone moves the weight towards 0.
    assert not np.allclose(_adam_reference(w0, [0 * g for g in grads], 0.1, 0.5), w0)
    train.weight_decay = -1.0
    with pytest.raises(ValueError, match="train.weight_decay must be >= 0"):
        optimizers.make_optimizer(train, steps_per_epoch=1)


def test_rounds_continue_one_decay_over_the_phase():
    train = defaults.shared_config().train
    train.update(learning_rate=1e-3, num_steps=300, lr_decay_epochs=1, lr_decay_factor=0.1,
                 lr_staircase=False, lr_decay_min_fraction=0.5)
    phase = schedules.learning_rate_schedule(train, steps_per_epoch=10)  # period 150 steps
    for index in range(3):
        part = round_train_config(train, 3, index)
        assert part.num_steps == 100
        schedule = schedules.learning_rate_schedule(part, steps_per_epoch=10)
        for step in (0, 37, 99):
            expected = 1e-3 * 0.1 ** ((index * 100 + step) / 150)
            assert float(schedule(step)) == pytest.approx(expected, rel=1e-5)
            assert float(phase(index * 100 + step)) == pytest.approx(expected, rel=1e-5)


def test_a_later_stage_can_train_layers_an_earlier_stage_froze():
    """`select_trainable` unfreezes nested layers first (a Functional model's `trainable = True`
    does not reach them), so stage 2 trains the CRF part stage 1 froze."""
    from chestxray_tf.tasks.base import select_trainable
    task = get_task("rozenberg2019")(rozenberg_config.get_config("tiny"))
    model = task.build_model(pretrained=False)
    base_stage, crf_stage = task.stages()[0], task.stages()[-2]
    select_trainable(model, base_stage.trainable)
    assert not any(v.path.startswith("crf") for v in model.trainable_variables)
    select_trainable(model, crf_stage.trainable)
    paths = [v.path for v in model.trainable_variables]
    assert paths and all(p.startswith("crf") for p in paths)


def test_the_papers_full_size_model_builds_from_the_config():
    """configs/rozenberg2019.py as published: 512 px, AA ResNet-v2-50, P = 20, K = 14, a 19 x 19
    CRF window (shapes only; the weights are not loaded)."""
    config = rozenberg_config.get_config("unannotated=0")
    model = get_task("rozenberg2019")(config).build_model(pretrained=False)
    assert model.input_shape == (None, 512, 512, 3)
    assert model.output["z"].shape[1:] == (20, 20, 14)
    assert model.output["thresholds"].shape[1:] == (4, 14)
    assert model.get_layer("crf").window == 19
    assert sum(1 for layer in model.get_layer("resnet_v2_50").layers
               if type(layer).__name__ == "BlurPool2D") == 7
