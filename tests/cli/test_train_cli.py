"""chestxray_tf/cli/train.py: SIGKILL mid-run, re-run the same command, resume at the saved step."""

import os
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from processes import sigkill_when

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 80


def _command(manifest, workdir):
    return [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/demo.py",
            f"--workdir={workdir}", f"--config.data.manifest={manifest}",
            "--config.data.image_size=64", "--config.model.grid=4",
            "--config.model.head_width=16", "--config.train.batch_size=4",
            f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every_steps=5",
            "--config.train.steps_per_epoch=20", "--config.train.num_val_images=0",
            "--config.train.progress_bar=False"]


def _latest_step(workdir):
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "stages", "0_train", "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_at_the_saved_step(built_set, tmp_path):
    workdir = str(tmp_path / "run")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = _command(built_set / "manifest.json", workdir)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    sigkill_when(process, lambda: _latest_step(workdir) >= 10, timeout=240, poll=0.2)
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    saved = _latest_step(workdir)
    assert 10 <= saved < NUM_STEPS, saved

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"resumed from \S+ckpt-(\d+) at step (\d+)", rerun.stderr)
    assert resumed, rerun.stderr[-3000:]
    assert int(resumed.group(1)) == int(resumed.group(2)) >= saved
    assert _latest_step(workdir) == NUM_STEPS
    reader = tf.train.load_checkpoint(os.path.join(workdir, "stages", "0_train", "checkpoints", f"ckpt-{NUM_STEPS}"))
    iterations = [k for k in reader.get_variable_to_shape_map() if "iterations" in k]
    assert iterations and reader.get_tensor(iterations[0]) == NUM_STEPS
