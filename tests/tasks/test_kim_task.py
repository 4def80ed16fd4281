"""The `kim` task (chestxray_tf/tasks/kim.py, configs/kim.py): every stage of the pipeline
(s0 -> anchor -> s1 -> s2 -> s3 -> s4) on the tiny synthetic set, interrupted in s2 and resumed
in s2; what each stage trains, freezes and writes; the masks against a recomputation; the
evaluation of the s0 / s2 / s4 checkpoints beside the paper's Tables 1-4; the export (aligned
in-graph, maps in the original frame) and predict."""

import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import export, io as io_lib, predict, workdir as workdir_lib
from chestxray_tf.data import manifest as manifest_lib, pipeline, selection
from chestxray_tf.evaluation import evaluate
from chestxray_tf.labels import CLASS_NAMES
from chestxray_tf.models import kim_masks
from chestxray_tf.tasks import base, kim
from chestxray_tf.training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDERS = ["0_s0", "1_anchor", "2_s1", "3_s2", "4_s3", "5_s4"]
STEPS = {"s0": 3, "s1": 3, "s2": 4, "s4": 2}


def kim_config(arg="tiny"):
    spec = importlib.util.spec_from_file_location("kim_config", os.path.join(REPO, "configs",
                                                                             "kim.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_kim_config(manifest):
    config = kim_config()
    config.data.manifest = str(manifest)
    config.train.update(strategy="default", num_val_images=8)
    for name, steps in STEPS.items():
        config.stages[name].num_steps = steps
    return config


def _interrupt_at_trace(model, step):
    """A hook whose Python body runs once, when s2's step is traced: SIGINT, as Ctrl-C."""
    del model, step
    signal.raise_signal(signal.SIGINT)


def checkpoint(workdir, folder):
    return workdir_lib.latest_checkpoint(os.path.join(workdir, "stages", folder, "checkpoints"))


def weights_of(model, layer):
    return {v.path: v.numpy().copy() for v in model.get_layer(layer).weights}


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def kim_run(built_set, tmp_path_factory):
    """The tiny pipeline, SIGINT in s2's first call, then the same call again (resumes)."""
    config = tiny_kim_config(built_set)
    workdir = str(tmp_path_factory.mktemp("kim") / "run")
    stages = kim.Kim.stages

    def interrupted_stages(task):
        out = stages(task)
        out[3] = dataclasses.replace(out[3], hooks=out[3].hooks + (_interrupt_at_trace,))
        return out

    kim.Kim.stages = interrupted_stages
    try:
        with pytest.raises(trainer.Interrupted) as interrupted:
            trainer.train(config, workdir)
    finally:
        kim.Kim.stages = stages
    before = {f: os.path.getmtime(os.path.join(workdir, "stages", f, "done.json"))
              for f in FOLDERS[:3]}
    state = {"interrupted_at": interrupted.value.checkpoint,
             "done_after_interrupt": sorted(os.listdir(os.path.join(workdir, "stages"))),
             "s2_done_after_interrupt": os.path.exists(
                 os.path.join(workdir, "stages", "3_s2", "done.json"))}
    trainer.train(config, workdir)
    state["unchanged"] = all(
        os.path.getmtime(os.path.join(workdir, "stages", f, "done.json")) == t
        for f, t in before.items())
    models = {f: workdir_lib.restore_model(workdir, checkpoint(workdir, f))[1] for f in FOLDERS}
    return config, workdir, state, models


def test_every_stage_runs_and_a_kill_in_s2_resumes_in_s2(kim_run):
    config, workdir, state, _ = kim_run
    # SIGINT arrived while s2's first call was traced: the call's 2 steps (to the first log
    # step of :tiny) ran, then the run stopped with their checkpoint.
    assert config.stages.s2.get("log_every_steps", config.train.log_every_steps) == 2
    assert state["interrupted_at"].endswith(os.path.join("3_s2", "checkpoints", "ckpt-2"))
    assert state["done_after_interrupt"] == FOLDERS[:4] and not state["s2_done_after_interrupt"]
    assert state["unchanged"]  # s0, anchor, s1 were not run again
    assert [os.path.basename(f) for f in workdir_lib.stage_dirs(workdir)] == FOLDERS
    done = {f: workdir_lib.read_json(os.path.join(workdir, "stages", f, "done.json"))
            for f in FOLDERS}
    for folder, (name, steps) in zip(("0_s0", "2_s1", "3_s2", "5_s4"), STEPS.items()):
        assert done[folder]["stage"] == name and done[folder]["steps"] == steps
    assert done["0_s0"]["trainable"] == ["kim_base"]
    assert done["2_s1"]["trainable"] == ["kim_aligner"]
    assert done["3_s2"]["trainable"] == done["5_s4"]["trainable"] == ["kim_classifier"]
    # s2 resumed at step 1 with the optimizer state of its own checkpoint.
    reader = tf.train.load_checkpoint(checkpoint(workdir, "3_s2"))
    iterations = [k for k in reader.get_variable_to_shape_map() if "iterations" in k]
    assert iterations and reader.get_tensor(iterations[0]) == STEPS["s2"]
    assert config.stages.s1.optimizer == "sgd" and config.stages.s1.momentum == 0.0


def test_each_stage_trains_its_network_only_and_switches_the_outputs(kim_run):
    _, _, _, models = kim_run
    base_w = {f: weights_of(m, "kim_base") for f, m in models.items()}
    aligner = {f: weights_of(m, "kim_aligner") for f, m in models.items()}
    classifier = {f: weights_of(m, "kim_classifier") for f, m in models.items()}
    # s0 trained the base; nothing after it changes the base (BN statistics included).
    assert all(same(base_w["0_s0"], base_w[f]) for f in FOLDERS[1:])
    # s1 trained the aligner only; s2..s4 keep it bit-identical.
    assert not same(aligner["1_anchor"], aligner["2_s1"])
    assert all(same(aligner["2_s1"], aligner[f]) for f in FOLDERS[3:])
    assert same(classifier["0_s0"], classifier["2_s1"])
    assert not same(classifier["2_s1"], classifier["3_s2"])
    assert not same(classifier["4_s3"], classifier["5_s4"])
    switch = {f: float(m.get_layer("stage_switch").aligned.numpy()) for f, m in models.items()}
    assert switch == {"0_s0": 0.0, "1_anchor": 0.0, "2_s1": 0.0, "3_s2": 1.0, "4_s3": 1.0,
                      "5_s4": 1.0}
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    s0, s4 = models["0_s0"](images), models["5_s4"](images)
    np.testing.assert_array_equal(s0["image_probs"], s0["base_probs"])
    np.testing.assert_array_equal(s4["image_probs"], s4["aligned_probs"])


def test_anchor_is_the_mean_of_the_no_finding_training_images(kim_run):
    config, workdir, _, models = kim_run
    split = selection.select(config.data)
    table = manifest_lib.read_metadata(config.data.manifest)
    normal = [i for i, row in table.set_index("image_id").iterrows()
              if i in set(split.train) and all(row[c] == 0 for c in CLASS_NAMES)]
    total, count = np.zeros((64, 64, 3)), 0
    for batch in selection.dataset(config.data, normal, training=False, batch_size=5):
        for image in batch["image"].numpy():
            total += image
            count += 1
    stored = np.load(os.path.join(workdir, "stages", "1_anchor", "anchor.npy"))
    np.testing.assert_allclose(stored, total / count, atol=1e-5)
    np.testing.assert_array_equal(models["5_s4"].get_layer("anchor").image.numpy(), stored)
    done = workdir_lib.read_json(os.path.join(workdir, "stages", "1_anchor", "done.json"))
    assert done["num_images"] == count == len(normal) > 0
    assert os.path.getsize(os.path.join(workdir, "stages", "1_anchor", "anchor.png")) > 0


def test_masks_are_eq3_of_the_s2_cams_and_stay_in_s4(kim_run):
    config, workdir, _, models = kim_run
    s2 = models["3_s2"]
    cams, probs = [], []
    for batch in selection.dataset(config.data, selection.select(config.data).train,
                                   training=False, batch_size=8):
        outputs = s2(batch["image"], training=False)
        cams.append(outputs["aligned_cam_scores"].numpy())
        probs.append(outputs["aligned_probs"].numpy())
    expected, info = kim_masks.disease_masks(np.concatenate(cams), np.concatenate(probs),
                                             min_images=config.model.mask_min_images)
    folder = os.path.join(workdir, "stages", "4_s3")
    stored = np.load(os.path.join(folder, "masks.npy"))
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert stored.any()
    assert json.load(open(os.path.join(folder, "masks.json")))["counts"] == info["counts"]
    for f in ("4_s3", "5_s4"):
        head = models[f].get_layer("kim_classifier").get_layer("cam_head")
        np.testing.assert_array_equal(head.masks.numpy(), stored)
    assert not models["3_s2"].get_layer("kim_classifier").get_layer("cam_head").masks.numpy().any()
    assert os.path.getsize(os.path.join(folder, "masks.png")) > 0


@pytest.mark.parametrize("masks", ["pseudo", "none"])
def test_pseudo_masks_and_the_control_in_s3(kim_run, masks, tmp_path):
    config, _, _, models = kim_run
    config = kim_config(f"tiny,masks={masks}")
    task = kim.Kim(config)
    model = models["3_s2"]
    head = model.get_layer("kim_classifier").get_layer("cam_head")
    saved = head.masks.numpy()
    context = base.StageContext(task=task, model=model, config=config, split=None,
                                stage_dir=str(tmp_path), dataset=None)
    try:
        summary = task.compute_masks(context)
        psi = head.masks.numpy()
    finally:
        head.masks.assign(saved)
    assert summary["masks"] == masks
    if masks == "none":
        assert not psi.any()
    else:
        expected = kim_masks.pseudo_masks_from_file(kim.PDM_REGIONS, psi.shape[0])
        np.testing.assert_array_equal(psi, expected)
        heart = psi[..., CLASS_NAMES.index("Cardiomegaly")]
        lungs = psi[..., CLASS_NAMES.index("Mass")]
        assert heart.any() and lungs.any() and heart.sum() < lungs.sum()
    assert task.comparison_row("s4") == {"pseudo": "Base model+PDM",
                                         "none": "ResNet-50+Alignment"}[masks]


def test_evaluation_of_s0_and_s4_beside_the_papers_tables(kim_run):
    config, workdir, _, _ = kim_run
    task = kim.Kim(config)
    assert [task.comparison_row(s) for s in ("s0", "anchor", "s1", "s2", "s3", "s4")] == [
        "ResNet-50", "ResNet-50", "ResNet-50", "ResNet-50+Alignment", "paper", "paper"]
    expected = {"0_s0": "ResNet-50", "5_s4": "paper"}  # s2 runs the same path as s4
    for folder, row in expected.items():
        out = evaluate.evaluate(workdir, checkpoint(workdir, folder), split="test_fold",
                                progress=False)
        report = json.load(open(os.path.join(out["out_dir"], "report.json")))
        assert report["compared_with"] == row and report["stage"] == folder.split("_")[1]
        assert [t["reference"] for t in report["tables"]] == ["Table 1", "Table 2", "Table 3",
                                                               "Table 4"]
        table1 = report["tables"][0]
        assert [g["label"] for g in table1["groups"]] == [0.3, 0.5, 0.7] or \
            [float(g["label"]) for g in table1["groups"]] == [0.3, 0.5, 0.7]
        assert any(r["kind"] == "ours" for g in table1["groups"] for r in g["rows"])
        options = dict(map(tuple, report["details"]["Options of this run"]["rows"]))
        assert options["main outputs"] == ("base classifier (S0)" if folder == "0_s0" else
                                           "aligned classifier (S2/S4)")
        assert "Table 2" in open(os.path.join(out["out_dir"], "report.md")).read()


def test_export_aligns_in_graph_and_serves_maps_in_the_original_frame(kim_run, tmp_path):
    config, workdir, _, models = kim_run
    model = models["5_s4"]
    # A known alignment: t_x = 0.25 moves the content 8 px left (64 px); the map in the
    # original frame is the aligned-frame map 8 px to the right.
    regressor = model.get_layer("kim_aligner").get_layer("aligner_regressor")
    regressor.kernel.assign(np.zeros(regressor.kernel.shape))
    regressor.bias.assign([1.0, 1.0, 0.25, 0.0, 0.0])
    pixels = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 1)).astype(np.float32)
    image = pipeline.preprocess_image(tf.constant(pixels, tf.uint8), 64,
                                      config.data.normalization)
    outputs = model(image, training=False)
    np.testing.assert_allclose(outputs["aligned"][0, :, :-8], image[0, :, 8:], atol=1e-5)
    aligned = tf.image.resize(outputs["aligned_cam_scores"], (64, 64)).numpy()[0]
    aligned -= aligned.min(axis=(0, 1))
    reference = np.zeros_like(aligned)
    reference[:, 8:] = aligned[:, :-8]
    reference -= reference.min(axis=(0, 1))
    reference /= np.where(reference.max(axis=(0, 1)) > 0, reference.max(axis=(0, 1)), 1)
    np.testing.assert_allclose(outputs["cam"][0], reference, atol=1e-4)
    out = export.export_saved_model(model, config, str(tmp_path / "export"))
    served = tf.saved_model.load(out).signatures["serving_float"](pixels=tf.constant(pixels))
    np.testing.assert_allclose(served["maps"], outputs["cam"], atol=1e-5)
    np.testing.assert_allclose(served["scores"], outputs["image_probs"], atol=1e-6)
    predictor = predict.load_predictor(out)
    found = predict.predict_scan(predictor, io_lib.Scan(pixels=pixels[0, :, :, 0].astype(
        np.uint8), source={}), 0.5, [0, 1])
    np.testing.assert_allclose(found.maps, outputs["cam"][0], atol=1e-5)


def test_cli_train_accepts_the_tiny_config_and_a_finished_run_does_nothing(kim_run):
    config, workdir, _, _ = kim_run
    mtime = os.path.getmtime(os.path.join(workdir, "stages", "5_s4", "done.json"))
    flags = [f"--config.data.manifest={config.data.manifest}",
             "--config.train.strategy=default", "--config.train.num_val_images=8"]
    flags += [f"--config.stages.{name}.num_steps={steps}" for name, steps in STEPS.items()]
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/kim.py:tiny",
         f"--workdir={workdir}", *flags], cwd=REPO, capture_output=True, text=True,
        timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.getmtime(os.path.join(workdir, "stages", "5_s4", "done.json")) == mtime


@pytest.mark.parametrize("arg, name, threshold, masks", [
    ("tiny", "kim", 180 / 255, "disease"),
    ("tiny,masks=pseudo", "kim_pdm", 180 / 255, "pseudo"),
    ("masks=none,tiny", "kim_control", 180 / 255, "none"),
    ("tiny,threshold=60", "kim_t60", 60 / 255, "disease"),
    ("", "kim", 180 / 255, "disease")])
def test_configs(arg, name, threshold, masks):
    config = kim_config(arg)
    assert (config.name, config.model.masks) == (name, masks)
    assert config.eval.region_threshold == pytest.approx(threshold)
    assert (config.eval.localization, config.eval.region_keep, config.eval.inclusive) == (
        "boxes", "each", False)
    assert tuple(config.eval.iou_thresholds) == (0.3, 0.5, 0.7)
    assert config.data.protocol == "official" and config.data.augment == ""
    tiny = "tiny" in arg
    assert config.data.image_size == (64 if tiny else 512)
    assert config.model.backbone == ("resnet50_tiny" if tiny else "resnet50")
    assert config.stages.s0.batch_size == (4 if tiny else 32)
    assert config.stages.s1.batch_size == (4 if tiny else 16)
    assert all(s.num_steps <= 10 for s in config.stages.values()) == tiny


def test_bad_config_arguments_and_fields_are_named():
    with pytest.raises(ValueError, match="masks='learned'"):
        kim_config("tiny,masks=learned")
    with pytest.raises(ValueError, match="threshold=100"):
        kim_config("threshold=100")
    config = kim_config("tiny")
    config.model.masks = "soft"
    with pytest.raises(ValueError, match="config.model.masks must be one of"):
        kim.Kim(config).build_model()


def test_select_trainable_unfreezes_nested_layers_an_earlier_stage_froze():
    import keras
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="inner")
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="e")], name="other")
    x = keras.Input((3,))
    model = keras.Model(x, [inner(x), other(x)])
    assert base.select_trainable(model, ("other",)) == ["other"]
    assert len(model.trainable_variables) == 2 and not inner.trainable
    assert base.select_trainable(model, ("inner",)) == ["inner"]
    assert {v.path for v in model.trainable_variables} == {v.path for v in inner.weights}


def test_full_size_networks_build_with_the_papers_layers():
    """The paper's ResNet-50 / ResNet-18 (not tiny) in the task's model, at 64 px for speed."""
    config = kim_config("")
    config.data.image_size = 64
    config.model.update(weights=None, cam_size=16)
    assert (config.model.backbone, config.model.aligner_backbone) == ("resnet50", "resnet18")
    model = kim.Kim(config).build_model()
    outputs = model(np.zeros((1, 64, 64, 3), np.float32))
    assert outputs["base_cam_scores"].shape == (1, 2, 2, 14)  # stride 32
    assert outputs["cam"].shape == (1, 16, 16, 14) and outputs["params"].shape == (1, 5)
    features = model.get_layer("kim_base").get_layer("kim_base_backbone").output
    assert features.shape[-1] == 2048
    aligner = model.get_layer("kim_aligner").get_layer("kim_aligner_backbone").output
    assert aligner.shape[-1] == 512
    np.testing.assert_allclose(outputs["params"], [[1, 1, 0, 0, 0]])  # identity at init
