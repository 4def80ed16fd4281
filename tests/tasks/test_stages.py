"""The stage runner (chestxray_tf/training/trainer.py, tasks/base.py) on a two-stage toy task:
frozen variables bit-identical, a compute stage's variable checkpointed and exported, a kill in
stage 2 resumes in stage 2 at its step, a finished run re-run does nothing; the plateau rule
against a hand-worked sequence; per-task config keys isolated."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import export, workdir as workdir_lib
from chestxray_tf.training import defaults, schedules, trainer
from processes import sigkill_when
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_task import head_weight_paths, toy_config, weights_by_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_stages_freeze_compute_and_export(built_set, tmp_path):
    config = toy_config(built_set)
    workdir = str(tmp_path / "run")
    run = trainer.Run(config, workdir)
    run.run()
    folders = [os.path.basename(f) for f in workdir_lib.stage_dirs(workdir)]
    assert folders == ["0_base", "1_fit", "2_head"]
    done = [workdir_lib.read_json(os.path.join(workdir, "stages", f, "done.json"))
            for f in folders]
    assert done[0]["steps"] == 4 and done[2]["steps"] == 3
    assert done[1]["num_images"] == len(run.split.train)
    # Stage 2 started from the compute stage's checkpoint and trained only the head.
    _, after_fit, _ = workdir_lib.restore_model(
        workdir, workdir_lib.latest_checkpoint(os.path.join(workdir, "stages", "1_fit",
                                                            "checkpoints")))
    _, final, _ = workdir_lib.restore_model(workdir)
    before, after = weights_by_path(after_fit), weights_by_path(final)
    head = head_weight_paths(final)
    frozen = [p for p in before if p not in head]
    assert frozen and all(np.array_equal(before[p], after[p]) for p in frozen)
    assert any(not np.array_equal(before[p], after[p]) for p in head)
    # The compute stage's variable is in the final checkpoint and in the export.
    offset = final.get_layer("offset").offset.numpy()
    assert offset == len(run.split.train)
    out = export.export_saved_model(final, config, str(tmp_path / "export"))

    reader = tf.train.load_checkpoint(os.path.join(out, "variables", "variables"))
    scalars = [reader.get_tensor(k) for k, shape in reader.get_variable_to_shape_map().items()
               if shape == [] and k != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert offset in scalars
    # A finished run re-run does nothing.
    mtimes = {f: os.path.getmtime(os.path.join(workdir, "stages", f, "done.json"))
              for f in folders}
    assert trainer.train(config, workdir) == {}
    assert mtimes == {f: os.path.getmtime(os.path.join(workdir, "stages", f, "done.json"))
                      for f in folders}


KILL_SCRIPT = """
import sys, time
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tasks"]
from toy_task import toy_config
from chestxray_tf.training import trainer
config = toy_config(sys.argv[1])
config.stages.head.num_steps = 200
trainer.train(config, sys.argv[3])
"""


@pytest.mark.slow
def test_kill_in_stage_two_resumes_in_stage_two(built_set, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    workdir = tmp_path / "run"
    head = workdir / "stages" / "2_head" / "checkpoints"

    def in_stage_two():
        return head.is_dir() and any(p.name == "ckpt-2.index" for p in head.iterdir())

    process = subprocess.Popen([sys.executable, str(script), str(built_set), TESTS,
                                str(workdir)], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=open(tmp_path / "train.log", "w"),
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    sigkill_when(process, in_stage_two, timeout=300)
    assert process.returncode == -9, (tmp_path / "train.log").read_text()[-3000:]
    assert (workdir / "stages" / "0_base" / "done.json").exists()
    assert not (workdir / "stages" / "2_head" / "done.json").exists()
    saved = workdir_lib.latest_checkpoint(str(head))
    step = int(saved.rsplit("-", 1)[1])
    config = toy_config(built_set)
    config.stages.head.num_steps = step + 2
    run = trainer.Run(config, str(workdir))
    stage = trainer.StageTrainer(run, run.stages[2], run.stage_dir(2))
    assert stage._restore() == step          # resumed in stage 2, at its step
    stage.run()
    assert int(stage.optimizer.iterations.numpy()) == step + 2
    # The compute stage was not redone: its done.json is the first run's.
    assert json.loads((workdir / "stages" / "1_fit" / "done.json").read_text())["num_images"]


def test_plateau_rule_against_a_hand_worked_sequence():
    """lr 1e-3, patience 1, factor 0.1, min_delta 1e-4, stop at a plateau with lr <= 1e-5:
    losses 1.0 (best), 0.99995 (not better by 1e-4: 1e-4), 0.9 (best), 0.95 (1e-5),
    0.8 (best), 0.85 (plateau at 1e-5: stop)."""
    rule = schedules.Plateau(patience=1, factor=0.1, min_delta=1e-4, min_lr=1e-5)
    state = schedules.PlateauState(learning_rate=1e-3)
    lrs, stops = [], []
    for value in (1.0, 0.99995, 0.9, 0.95, 0.8, 0.85):
        state = rule.update(state, value)
        lrs.append(state.learning_rate)
        stops.append(state.stop)
    np.testing.assert_allclose(lrs, [1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5])
    assert stops == [False] * 5 + [True]
    patient = schedules.Plateau(patience=2, factor=0.5)
    state = schedules.PlateauState(learning_rate=1.0)
    for value, lr in ((1.0, 1.0), (1.0, 1.0), (1.0, 0.5), (1.0, 0.5), (1.0, 0.25)):
        state = patient.update(state, value)
        assert state.learning_rate == lr
    with pytest.raises(ValueError, match="non-finite"):
        rule.update(state, float("nan"))


def test_task_config_keys_are_isolated():
    """A key of one task's section does not exist in another's: the config (locked, as the
    binaries lock it) refuses it, so it cannot reach Li's builder."""
    li = defaults.base_config("li2018")
    li.lock()
    with pytest.raises(AttributeError):
        li.model.fpn_channels = 256
    assert "grid" not in defaults.base_config("baseline").model
    assert set(li.model) == {"backbone", "weights", "grid", "head_width", "num_classes",
                             "smoothing", "weight_decay"}


def test_cli_refuses_a_key_of_another_task(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/li2018.py:tiny",
         f"--workdir={tmp_path}", "--config.model.fpn_channels=256"], capture_output=True,
        text=True, timeout=120, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode != 0 and "fpn_channels" in result.stderr
    assert not (tmp_path / "config.json").exists()


def test_stage_overrides_must_be_train_fields(built_set):
    config = toy_config(built_set)
    config.stages.base.unknown_field = 1
    with pytest.raises(ValueError, match="config.stages.base.unknown_field is not a field"):
        trainer.Run(config, "/nonexistent/never/written")
