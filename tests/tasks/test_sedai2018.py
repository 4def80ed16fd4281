"""Sedai et al. 2018 as a Task (chestxray_tf/tasks/sedai2018.py, configs/sedai2018*.py): the
loss against a loop reference, the split on the real sample, and one tiny run through the CLI
-> evaluate -> export -> predict whose report has the paper's Table 1."""

import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import export, predict, workdir as workdir_lib
from chestxray_tf import io as io_lib
from chestxray_tf.data import nih, pipeline, selection
from chestxray_tf.evaluation import evaluate
from chestxray_tf.labels import CLASS_NAMES, NUM_CLASSES
from chestxray_tf.tasks import base, get_task

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(name="sedai2018", arg="tiny"):
    return runpy.run_path(os.path.join(REPO, "configs", f"{name}.py"))["get_config"](arg)


def _cli_train(manifest, workdir, name, *flags):
    command = [sys.executable, "-m", "chestxray_tf.cli.train",
               f"--config=configs/{name}.py:tiny", f"--workdir={workdir}",
               f"--config.data.manifest={manifest}", *flags]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def sedai_run(built_set, tmp_path_factory):
    """configs/sedai2018.py:tiny trained by the CLI: 10 steps, an epoch every 3 steps (so the
    plateau rule sees three validations)."""
    return _cli_train(built_set, tmp_path_factory.mktemp("sedai"), "sedai2018",
                      "--config.train.steps_per_epoch=3")


# ------------------------------------------------------------------ configs

def test_paper_config():
    config = _config(arg="")
    assert config.task == "sedai2018" and config.data.protocol == "sedai2018"
    assert config.data.image_size == 256 and config.data.augment == ""
    assert config.model.backbone == "densenet121" and config.model.weights is None
    assert tuple(config.model.taps) == ("pool3_relu", "pool4_relu", "relu")
    t = config.train
    assert (t.batch_size, t.optimizer, t.learning_rate, t.weight_decay) == (32, "adam", 1e-3, 0)
    assert (t.lr_schedule, t.plateau_patience, t.plateau_factor, t.plateau_min_lr,
            t.select_by) == ("plateau", 1, 0.1, 1e-6, "val_loss")
    assert t.num_val_images > 11_212 and t.num_steps == 30 * 2_453   # whole val; 30 epochs
    e = config.eval
    assert (e.localization, e.region_keep, e.region_threshold, e.inclusive, e.afp,
            e.threshold_selection) == ("boxes", "each", 0.5, False, True, "fixed")
    assert tuple(e.iou_thresholds) == (0.3, 0.5) and e.max_regions > 1
    tuned = _config(arg="tiny,selection=test-tuned,all_thresholds=1")
    assert tuned.eval.threshold_selection == "test-tuned" and tuned.eval.tune_per_threshold
    assert len(tuned.eval.iou_thresholds) == 7 and tuned.model.backbone == "densenet_tiny"
    assert tuple(_config("sedai2018_dncam").model.taps) == ("relu",)
    with pytest.raises(ValueError, match="grid=4"):
        _config(arg="tiny,grid=4")


# ------------------------------------------------------------------ loss

def _loop_loss(labels, logits, beta):
    """Sec. 2.2 with loops: sum_c -beta_c y log p - (1 - beta_c)(1 - y) log(1 - p), float64,
    log p = -log(1 + e^-z) written stably per element."""
    def log_sigmoid(z):
        return -np.log1p(np.exp(-z)) if z >= 0 else z - np.log1p(np.exp(z))
    out = []
    for i in range(labels.shape[0]):
        total = 0.0
        for c in range(labels.shape[1]):
            z, y = float(logits[i, c]), float(labels[i, c])
            total += -beta[c] * y * log_sigmoid(z) - (1 - beta[c]) * (1 - y) * log_sigmoid(-z)
        out.append(total)
    return np.array(out)


def _stats(labels):
    positives = labels.sum(axis=0).astype(np.int64)
    return base.DataStats(num_images=len(labels), num_boxed=0, positives=positives,
                          negatives=len(labels) - positives)


def test_loss_matches_the_loop_reference():
    rng = np.random.default_rng(3)
    train_labels = (rng.random((40, NUM_CLASSES)) < 0.3).astype(np.float32)
    train_labels[:, 2] = 0.0                                   # an all-negative class
    task = get_task("sedai2018")(_config(), _stats(train_labels))
    beta = np.array([np.mean([1 - y for y in train_labels[:, c]]) for c in range(NUM_CLASSES)])
    assert beta[2] == 1.0
    np.testing.assert_allclose(task.negative_fraction(), beta, rtol=1e-6)
    labels = (rng.random((6, NUM_CLASSES)) < 0.5).astype(np.float32)
    logits = rng.normal(0, 3, (6, NUM_CLASSES)).astype(np.float32)
    logits[0, :4] = [50.0, -50.0, 1e4, -1e4]                   # extreme logits stay finite
    loss, terms = task.loss({"labels": labels}, {"logits": logits})
    np.testing.assert_allclose(loss, _loop_loss(labels, logits, beta), rtol=1e-5)
    np.testing.assert_array_equal(terms["image_term"], loss)
    # Hand case: one class, beta = 0.75, y = 1, z = 0 -> 0.75 log 2.
    one = get_task("sedai2018")(_config(), _stats(np.eye(4, NUM_CLASSES, dtype=np.float32)))
    hand, _ = one.loss({"labels": np.eye(1, NUM_CLASSES, dtype=np.float32)},
                       {"logits": np.zeros((1, NUM_CLASSES), np.float32)})
    expected = 0.75 * np.log(2) + sum((1 - b) * np.log(2) for b in [0.75] * 3 + [1.0] * 10)
    np.testing.assert_allclose(hand, [expected], rtol=1e-6)
    with pytest.raises(ValueError, match="training selection's counts"):
        get_task("sedai2018")(_config()).loss({"labels": labels}, {"logits": logits})
    config = _config()
    config.loss.beta = "median"
    with pytest.raises(ValueError, match="config.loss.beta='median'"):
        get_task("sedai2018")(config, _stats(train_labels)).loss({"labels": labels},
                                                                {"logits": logits})


# ------------------------------------------------------------------ plateau schedule

def test_plateau_of_the_paper_config_stops_at_1e_6_with_a_float32_lr():
    """D-12 with the lr read back from a float32 optimizer variable, as the trainer does:
    never-improving validations give 1e-4, 1e-5, 1e-6, then stop (not 1e-7)."""
    from chestxray_tf.training import schedules
    rule = schedules.Plateau.from_config(_config(arg="").train)
    state = schedules.PlateauState(learning_rate=float(np.float32(1e-3)))
    lrs = []
    for value in (0.5, 0.6, 0.6, 0.6, 0.6):
        state = rule.update(state, value)
        state = schedules.PlateauState(learning_rate=float(np.float32(state.learning_rate)),
                                       best=state.best, wait=state.wait, stop=state.stop)
        lrs.append(state.learning_rate)
        if state.stop:
            break
    np.testing.assert_allclose(lrs, [1e-3, 1e-4, 1e-5, 1e-6, 1e-6], rtol=1e-6)
    assert state.stop and lrs[3] > 1e-6                   # float32's 1.0000001e-6 stops too


# ------------------------------------------------------------------ split on the real sample

def test_split_on_the_real_sample(nih_sample_dir):
    meta = nih.load_metadata(nih_sample_dir / "Data_Entry_2017_v2020.csv",
                             nih_sample_dir / "BBox_List_2017.csv")
    train, val, test = nih.sedai2018_split(meta, seed=0)
    images = meta.images.set_index("image_id")
    assert sorted(train + val + test) == sorted(images.index)
    boxed = set(images.index[images["has_box"].astype(bool)])
    assert boxed and boxed <= set(test) and not boxed & set(train + val)
    # Every image of a boxed patient is in test; no patient in two parts.
    boxed_patients = set(images.loc[sorted(boxed), "patient_id"])
    assert set(images.index[images["patient_id"].isin(boxed_patients)]) <= set(test)
    parts = [set(images.loc[ids, "patient_id"]) for ids in (train, val, test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # The sample is rich in boxes: its boxed patients alone are over 20% of it, so test is
    # exactly their images; val takes 10% of ALL images (whole patients), train the rest.
    in_boxed = images["patient_id"].isin(boxed_patients)
    assert in_boxed.sum() > 0.2 * len(images) and set(test) == set(images.index[in_boxed])
    largest = images[~in_boxed].groupby("patient_id").size().max()
    assert abs(len(val) - 0.1 * len(images)) < largest
    assert len(train) == len(images) - len(test) - len(val) > 0


# ------------------------------------------------------------------ a tiny run end to end

def test_training_keeps_the_relevance_weights_on_the_simplex(sedai_run):
    config, model, _ = workdir_lib.restore_model(str(sedai_run))
    assert config.train.lr_schedule == "plateau" and config.train.select_by == "val_loss"
    w = np.asarray(model.get_layer("relevance").relevance_weights())
    assert w.shape == (3, NUM_CLASSES) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-6)
    assert np.abs(w - 1 / 3).max() > 1e-4                      # training moved them
    with open(os.path.join(sedai_run, "stages", "0_train", "done.json")) as f:
        done = json.load(f)
    assert done["steps"] >= 3 and "stopped_by_plateau" in done


@pytest.fixture(scope="module")
def evaluated(sedai_run):
    return evaluate.evaluate(str(sedai_run), "best", "test_fold", progress=False)


def test_report_has_table1_and_the_relevance_weights(evaluated):
    with open(evaluated["json"]) as f:
        report = json.load(f)
    assert report["paper"] == "sedai2018" and report["compared_with"] == "A-CNN"
    results = report["results"]
    assert set(results["localization"]["iou"]) == {"0.3", "0.5"}
    assert set(results["afp"]) == {"0.3", "0.5"} and "average_iou" in results
    assert [t["reference"] for t in report["tables"]] == ["Table 1"]
    methods = {row["method"] for g in report["tables"][0]["groups"] for row in g["rows"]}
    assert {"A-CNN", "DN-CAM", "RN-CAM"} <= methods
    details = report["details"]
    weights = next(v for k, v in details.items() if k.startswith("Relevance weights"))
    assert [row[0] for row in weights["rows"]] == list(CLASS_NAMES)
    assert all(abs(sum(row[1:]) - 1) < 1e-3 for row in weights["rows"])
    markdown = open(evaluated["markdown"]).read()
    assert "Relevance weights" in markdown and "Table 1" in markdown
    # The deepest block's map alone is the second variant, compared with DN-CAM.
    deepest = os.path.join(os.path.dirname(evaluated["json"]), "deepest", "report.json")
    with open(deepest) as f:
        assert json.load(f)["compared_with"] == "DN-CAM"


def test_export_and_predict_serve_the_attention_map(sedai_run, tmp_path):
    config, model, _ = workdir_lib.restore_model(str(sedai_run))
    out = export.export_saved_model(model, config, str(tmp_path / "saved_model"))
    assert export.read_metadata(out)["region_rule"]["keep"] == "each"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64), dtype=np.uint8)
    square, _ = io_lib.pad_to_square(pixels)
    expected = model(pipeline.preprocess_image(square[None, :, :, None], config.data.image_size,
                                               config.data.normalization), training=False)
    for predictor in (predict.load_predictor(out), predict.load_predictor(str(sedai_run))):
        prediction = predict.predict_scan(predictor, io_lib.Scan(pixels=pixels, source={}),
                                          0.5, [0, 1])
        np.testing.assert_allclose(prediction.probs, expected["image_probs"][0], atol=1e-5)
        np.testing.assert_allclose(prediction.maps, expected["attention"][0], atol=1e-5)


def test_dncam_config_through_the_cli_flag(built_set):
    """configs/sedai2018_dncam.py:tiny read by the CLI's config flag (as `cli.train` does); its
    model (B = 1) gives a finite class-balanced loss with a gradient to every FC weight."""
    from absl import flags
    from ml_collections import config_flags
    from chestxray_tf.training import trainer
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    values([sys.argv[0], f"--config={REPO}/configs/sedai2018_dncam.py:tiny"])
    config = values.config
    config.data.manifest = str(built_set)
    assert tuple(config.model.taps) == ("relu",) and config.name == "sedai2018_dncam"
    split = selection.select(config.data)
    task = get_task("sedai2018")(config, trainer.training_stats(config, split))
    model = task.build_model()
    np.testing.assert_array_equal(model.get_layer("relevance").relevance_weights(),
                                  np.ones((1, NUM_CLASSES)))
    labels = np.eye(4, NUM_CLASSES, dtype=np.float32)
    images = np.random.default_rng(1).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
    stage, = task.stages()
    with tf.GradientTape() as tape:
        loss, _ = stage.loss({"labels": labels}, model(images, training=True))
        mean = tf.reduce_mean(loss)
    grads = tape.gradient(mean, model.get_layer("block1_fc").trainable_variables)
    assert np.all(np.isfinite(loss)) and all(np.any(g.numpy() != 0) for g in grads)
    assert task.map_variants() == ("",) and task.comparison_row("train") == "DN-CAM"
