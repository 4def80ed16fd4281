"""The Hermoza et al. 2020 Task (chestxray_tf/tasks/hermoza2020.py) and its config
(configs/hermoza2020.py): the losses of Eq. 1 and 2 per stage against a loop reference, the
in-graph temperature hook against `gumbel.temperature`, the stages' trainable parts (a stage
after another one included), the map variants and their published rows, the LeakyReLU copy of
the backbones, and (slow) the tiny three-stage run -> evaluate -> export -> predict."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.evaluation import paper_tables, protocol
from chestxray_tf.labels import CLASS_NAMES, NUM_CLASSES
from chestxray_tf.models import gumbel
from chestxray_tf.models.hermoza2020 import with_leaky_relu
from chestxray_tf.tasks import get_task
from chestxray_tf.tasks.base import DataStats, select_trainable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def get_config(arg="tiny"):
    spec = importlib.util.spec_from_file_location(
        "hermoza_config", os.path.join(REPO, "configs", "hermoza2020.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def stats(num_images=10):
    positives = np.arange(NUM_CLASSES) % num_images
    return DataStats(num_images=num_images, num_boxed=0, positives=positives,
                     negatives=num_images - positives)


@pytest.fixture(scope="module")
def task():
    return get_task("hermoza2020")(get_config(), stats())


@pytest.fixture(scope="module")
def model(task):
    return task.build_model()


def test_config_paper_settings_and_arguments():
    config = get_config("")
    assert (config.data.protocol, config.data.image_size, config.data.normalization,
            config.data.augment) == ("official", 512, "imagenet", "hermoza")
    assert (config.train.optimizer, config.train.weight_decay, config.train.batch_size) == (
        "adamw", 1e-3, 8)
    assert [config.stages[s].learning_rate for s in ("classification", "detection", "joint")] \
        == [1e-3, 1e-3, 3e-4]
    p = protocol.Protocol.from_config(config.eval)
    assert (p.localization, p.inclusive, p.iou_thresholds, p.threshold_selection,
            p.tune_metric) == ("boxes", True, (0.3, 0.5, 0.6), "test-tuned", "average_iou")
    assert p.candidates[0] == 0.6 and p.candidates[-1] == 1.0 and len(p.candidates) == 41
    tiny = get_config("tiny,selection=cross-tuned,tau=constant")
    assert tiny.data.image_size == 64 and tiny.eval.threshold_selection == "cross-tuned"
    assert max(tiny.stages[s].num_steps for s in tiny.stages) <= 10
    assert tiny.loss.tau_schedule == "constant"
    with pytest.raises(ValueError, match="selectoin"):
        get_config("tiny,selectoin=fixed")
    bad = get_config("tiny")
    bad.loss.tau_schedule = "linear"
    with pytest.raises(ValueError, match="tau_schedule"):
        get_task("hermoza2020")(bad)


def reference_bce(labels, logits, positives, num_images):
    """Eq. 1 summed over classes, loops: -beta_P y log s(z) - beta_N (1 - y) log(1 - s(z)),
    beta_P = 1 - P_k / |D|, beta_N = P_k / |D|."""
    out = np.zeros(labels.shape[0])
    for n in range(labels.shape[0]):
        for k in range(labels.shape[1]):
            p = 1.0 / (1.0 + math.exp(-logits[n, k]))
            beta_p = 1.0 - positives[k] / num_images
            beta_n = positives[k] / num_images
            out[n] += -beta_p * labels[n, k] * math.log(p) - beta_n * (
                1 - labels[n, k]) * math.log(1 - p)
    return out


def test_stage_losses_against_a_loop_reference(task):
    rng = np.random.default_rng(0)
    labels = (rng.random((3, NUM_CLASSES)) < 0.4).astype(np.float32)
    outputs = {"image_logits": rng.normal(size=(3, NUM_CLASSES)).astype(np.float32),
               "crop_logits": rng.normal(size=(3, NUM_CLASSES)).astype(np.float32)}
    batch = {"labels": labels}
    s = task.stats
    cls = reference_bce(labels, outputs["image_logits"], s.positives, s.num_images)
    rpn = reference_bce(labels, outputs["crop_logits"], s.positives, s.num_images)
    loss, terms = task.classification_loss(batch, outputs)
    np.testing.assert_allclose(loss, cls, rtol=1e-5)
    loss, terms = task.detection_loss(batch, outputs)
    np.testing.assert_allclose(loss, rpn, rtol=1e-5)
    assert set(terms) == {"l_rpn"}
    loss, terms = task.joint_loss(batch, outputs)
    np.testing.assert_allclose(loss, cls + rpn, rtol=1e-5)
    code = get_task("hermoza2020")(get_config(), s)
    code.config.loss.stage2 = "code"
    loss, terms = code.detection_loss(batch, outputs)
    np.testing.assert_allclose(loss, cls + rpn, rtol=1e-5)
    with pytest.raises(ValueError, match="counts"):
        get_task("hermoza2020")(get_config()).classification_loss(batch, outputs)


@pytest.mark.parametrize("schedule", gumbel.TAU_SCHEDULES)
def test_tau_hooks_assign_the_schedule_in_graph(model, schedule):
    config = get_config(f"tiny,tau={schedule}")
    config.stages.detection.num_steps, config.stages.joint.num_steps = 5, 4
    hermoza = get_task("hermoza2020")(config, stats())
    tau = model.get_layer("detection").get_layer("gumbel_pick").tau
    for stage, steps in ((2, 5), (3, 4)):
        hook = tf.function(hermoza.tau_hook(stage))
        got = []
        for step in range(steps + 1):
            hook(model, tf.constant(step, tf.int64))
            got.append(float(tau.numpy()))
        want = [gumbel.temperature(stage, t, {2: 5, 3: 4}, schedule) for t in range(steps + 1)]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    if schedule == "stages_2_3":  # one exponential from 1 to 0.001 over the 9 steps
        np.testing.assert_allclose(want[-2], 1e-3, rtol=1e-5)
        np.testing.assert_allclose(gumbel.temperature(2, 4, {2: 5, 3: 4}), 1e-3 ** 0.5,
                                   rtol=1e-9)
    tau.assign(1.0)


def test_stages_train_their_modules(task, model):
    stages = task.stages()
    assert [s.name for s in stages] == ["classification", "detection", "joint"]
    assert [s.train.learning_rate for s in stages] == [1e-3, 1e-3, 3e-4]
    classification = {id(v) for v in model.get_layer("classification").trainable_variables}
    detection = {id(v) for v in model.get_layer("detection").trainable_variables}
    assert classification and detection and not classification & detection
    for stage, want in zip(stages, (classification, detection, classification | detection)):
        select_trainable(model, stage.trainable)   # after the previous stage's freezing
        assert {id(v) for v in model.trainable_variables} == want, stage.name
    assert len(stages[1].hooks) == len(stages[2].hooks) == 1 and not stages[0].hooks


def test_maps_rows_and_details(task, model):
    assert task.map_variants() == ("mix", "sal", "det")
    outputs = {"fused_map": 1, "saliency": 2, "rpn_map": 3}
    assert [task.maps(outputs, v) for v in ("", "mix", "sal", "det")] == [1, 1, 2, 3]
    assert [task.comparison_row("joint", v) for v in task.map_variants()] == [
        "Mix", "Sal", "Det"]
    with pytest.raises(ValueError, match="variant"):
        task.maps(outputs, "cam")
    details = task.report_details(model)
    sharpness = next(t for title, t in details.items() if "LSE" in title)
    assert [r[0] for r in sharpness["rows"]] == list(CLASS_NAMES)
    assert all(r[1] == pytest.approx(1.0) for r in sharpness["rows"])   # exp(0) at start
    options = dict(next(t for title, t in details.items() if "Options" in title)["rows"])
    assert options["loss.stage2"] == "paper" and options["eval.region_keep"] == "largest"
    published = paper_tables.load_published("hermoza2020")
    methods = {r["method"] for t in published["tables"] for r in t["rows"]}
    assert {"Sal", "Det", "Mix", "Released code re-run (Mix + union)"} <= methods


def test_with_leaky_relu_replaces_every_relu():
    x = keras.Input((5,))
    y = keras.layers.Activation("relu", name="a_relu")(keras.layers.Dense(4, name="d")(x))
    y = keras.layers.ReLU(name="b_relu")(keras.layers.Dense(3, name="e")(y))
    relu_model = keras.Model(x, y)
    leaky = with_leaky_relu(relu_model)
    assert [type(leaky.get_layer(n)).__name__ for n in ("a_relu", "b_relu")] == ["LeakyReLU"] * 2
    inputs = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
    (k1, b1), (k2, b2) = [relu_model.get_layer(n).get_weights() for n in ("d", "e")]
    want = np.zeros((2, 3))
    for n in range(2):
        hidden = [sum(inputs[n, i] * k1[i, j] for i in range(5)) + b1[j] for j in range(4)]
        hidden = [h if h > 0 else 0.1 * h for h in hidden]
        for j in range(3):
            out = sum(hidden[i] * k2[i, j] for i in range(4)) + b2[j]
            want[n, j] = out if out > 0 else 0.1 * out
    np.testing.assert_allclose(leaky(inputs), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_tiny_three_stages_evaluate_export_predict(built_set, tmp_path):
    """`configs/hermoza2020.py:tiny` through cli.train: three stages, the frozen module
    bit-identical, tau annealed to 0.001; the evaluation reports of Mix / Sal / Det with Tables
    2 and 3 (test-tuned), the export and predict of the Mix map."""
    from chestxray_tf import export, predict, workdir as workdir_lib
    from chestxray_tf.evaluation import evaluate
    from PIL import Image

    workdir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/hermoza2020.py:tiny",
         f"--config.data.manifest={built_set}", "--config.train.strategy=default",
         "--config.train.num_val_images=8", f"--workdir={workdir}"], capture_output=True,
        text=True, timeout=1200, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    folders = [os.path.basename(f) for f in workdir_lib.stage_dirs(workdir)]
    assert folders == ["0_classification", "1_detection", "2_joint"]

    def weights(stage, module):
        path = workdir_lib.latest_checkpoint(os.path.join(workdir, "stages", stage,
                                                          "checkpoints"))
        model = workdir_lib.restore_model(workdir, path)[1]
        return [v.numpy() for v in model.get_layer(module).weights]

    cls_after_1 = weights("0_classification", "classification")
    cls_after_2 = weights("1_detection", "classification")
    det_after_1 = weights("0_classification", "detection")
    det_after_2 = weights("1_detection", "detection")
    # Stage 2 freezes the classification module; stage 1 the detection module.
    assert all(np.array_equal(a, b) for a, b in zip(cls_after_1, cls_after_2))
    assert any(not np.array_equal(a, b) for a, b in zip(det_after_1, det_after_2))
    config, model, _ = workdir_lib.restore_model(workdir)
    tau = float(model.get_layer("detection").get_layer("gumbel_pick").tau.numpy())
    assert tau == pytest.approx(gumbel.temperature(3, 9, {2: 10, 3: 10}), rel=1e-5)  # 0.001

    written = evaluate.evaluate(workdir, progress=False)
    assert set(written["variants"]) == {"mix", "sal", "det"}
    for variant, row in (("mix", "Mix"), ("sal", "Sal"), ("det", "Det")):
        folder = written["out_dir"] if variant == "mix" else os.path.join(written["out_dir"],
                                                                          variant)
        report = json.loads(open(os.path.join(folder, "report.json")).read())
        assert report["compared_with"] == row and report["variant"] == variant
        text = open(os.path.join(folder, "report.md")).read()
        assert "Table 2" in text and "Table 3" in text and "test-tuned" in text
        assert "Released code re-run" in text and "LSE sharpness" in text

    out = export.export_saved_model(model, config, str(tmp_path / "export"))
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 64), np.uint8)).save(
        images / "a.png")
    summary = predict.predict_files(predict.load_predictor(out), str(images),
                                    str(tmp_path / "out"), progress=False)
    assert summary and (tmp_path / "out" / "a.json").exists()
