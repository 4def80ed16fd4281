"""A run killed while it writes a checkpoint, or a checkpoint damaged on disk: restoring gives the
last complete checkpoint or fails naming it, never a model of mixed or garbage weights.

The checkpoints hold recognisable states: checkpoint N is the tiny model with every weight
equal to N (`save_numbered`), so a restored model shows which save it came from.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import workdir as workdir_lib
from chestxray_tf.training import trainer

from processes import sigkill_when
from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_FILE = ".data-00000-of-00001"

SAVE_LOOP = """
import itertools, sys
sys.path[:0] = [{tests!r}, {here!r}]
from tiny import tiny_config
from chestxray_tf.training import trainer
from test_kill_during_checkpoint import save_numbered

run = trainer.stage_trainer(tiny_config({manifest!r}, num_val_images=0), {workdir!r})
for n in itertools.count(1):
    save_numbered(run, n)
    print(n, flush=True)
"""


def save_numbered(run, n):
    """Sets every model weight of the trainer `run` to n and its step to n; saves ckpt-n."""
    for variable in run.model.weights:
        variable.assign(tf.fill(variable.shape, float(n)))
    run.optimizer.iterations.assign(n)
    return run.manager.save(checkpoint_number=n)


def _number(path):
    return int(path.rsplit("-", 1)[1])


def _assert_restores_as_saved(workdir, which="latest"):
    """restore_model gives checkpoint N with every weight N; returns N."""
    _, model, path = workdir_lib.restore_model(str(workdir), which)
    n = _number(path)
    for weight in model.weights:
        np.testing.assert_array_equal(weight.numpy(), n, err_msg=f"{weight.path} of {path}")
    return n


def test_sigkill_while_saving_keeps_the_last_complete_checkpoint(built_set, tmp_path):
    """A process saving in a loop is killed as soon as a save's temporary files appear (the
    kill usually lands before the save renames them into place)."""
    workdir = tmp_path / "run"
    script = tmp_path / "save_loop.py"
    script.write_text(SAVE_LOOP.format(tests=TESTS, here=os.path.dirname(__file__),
                                       manifest=str(built_set), workdir=str(workdir)))
    out = tmp_path / "saved.txt"
    folder = workdir / "stages" / "0_train" / "checkpoints"
    with open(out, "w") as stdout:
        process = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=stdout,
                                   stderr=subprocess.DEVNULL,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    sigkill_when(process, lambda: len(out.read_text().split()) >= 3 and any(
        "_temp" in name for name in os.listdir(folder)), timeout=180)
    assert process.returncode == -signal.SIGKILL, "the save loop ended before it was killed"
    announced = int(out.read_text().split()[-1])

    n = _assert_restores_as_saved(workdir)
    assert announced <= n <= announced + 1  # the kill may land after a save, before its print
    state = tf.train.get_checkpoint_state(str(folder))
    assert [_number(p) for p in state.all_model_checkpoint_paths] == [n - 2, n - 1, n]
    for path in state.all_model_checkpoint_paths:
        assert _assert_restores_as_saved(workdir, path) == _number(path)


@pytest.fixture(scope="module")
def numbered_run(built_set, tmp_path_factory):
    """A workdir with ckpt-1 and ckpt-2 written by `save_numbered`."""
    workdir = tmp_path_factory.mktemp("numbered")
    run = trainer.stage_trainer(tiny_config(built_set, num_val_images=0), str(workdir))
    for n in (1, 2):
        save_numbered(run, n)
    return workdir


def _copy(workdir, tmp_path):
    return shutil.copytree(workdir, tmp_path / "run")


def test_leftover_files_of_an_interrupted_save_are_ignored(built_set, numbered_run, tmp_path):
    """The files a save killed half-way leaves (TF writes ckpt-N_temp/, then renames into place,
    then names ckpt-N in the `checkpoint` file): restore and resume use ckpt-2, and the next
    save of step 3 is not disturbed by them."""
    workdir = _copy(numbered_run, tmp_path)
    temp = workdir / "stages" / "0_train" / "checkpoints" / "ckpt-3_temp"
    temp.mkdir()
    (temp / f"part-00000-of-00001{DATA_FILE}.tempstate123").write_bytes(b"\x07" * 1000)
    assert _assert_restores_as_saved(workdir) == 2

    run = trainer.stage_trainer(tiny_config(built_set, num_val_images=0, num_steps=2), str(workdir))
    run.run()  # resumes at step 2, which is already num_steps
    assert int(run.optimizer.iterations.numpy()) == 2
    assert all(np.all(w.numpy() == 2) for w in run.model.weights)
    save_numbered(run, 3)
    assert _assert_restores_as_saved(workdir) == 3


def _truncate(path, suffix):
    data = open(path + suffix, "rb").read()
    with open(path + suffix, "wb") as f:
        f.write(data[:len(data) // 2])


def _flip_a_weight_byte(path):
    """Flips one byte in the middle of the longest run of the weights' value (inside a model
    weight: the other saved values, optimizer slots, are 0)."""
    data = bytearray(open(path + DATA_FILE, "rb").read())
    word = np.float32(_number(path)).tobytes()
    values = np.frombuffer(bytes(data[:len(data) // 4 * 4]), np.uint32)
    is_weight = np.concatenate([[0], values == np.frombuffer(word, np.uint32)[0], [0]])
    starts, ends = np.flatnonzero(np.diff(is_weight) == 1), np.flatnonzero(np.diff(is_weight) == -1)
    longest = np.argmax(ends - starts)
    assert ends[longest] - starts[longest] > 1000
    data[4 * (starts[longest] + ends[longest]) // 2 + 1] ^= 0xFF
    with open(path + DATA_FILE, "wb") as f:
        f.write(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: _truncate(p, DATA_FILE), "Read less bytes than requested"),
    (lambda p: _truncate(p, ".index"), "not an sstable"),
    (_flip_a_weight_byte, "Checksum does not match"),
    (lambda p: os.remove(p + DATA_FILE), "No such file"),
], ids=["truncated_data", "truncated_index", "flipped_weight_byte", "missing_data"])
def test_damaged_checkpoint_is_an_error_naming_it(built_set, numbered_run, tmp_path, damage,
                                                  message):
    """Damage a kill cannot cause with TF's write-then-rename, but a copy or a disk can: the
    restore fails, for the model (`restore_model`) and for a resumed run (`Trainer.run`)."""
    workdir = _copy(numbered_run, tmp_path)
    latest = tf.train.latest_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints"))
    assert latest.endswith("ckpt-2")
    damage(latest)
    with pytest.raises(ValueError, match=f"checkpoint {latest} cannot be restored.*{message}"):
        workdir_lib.restore_model(str(workdir))
    run = trainer.stage_trainer(tiny_config(built_set, num_val_images=0, num_steps=3), str(workdir))
    with pytest.raises(ValueError, match=f"checkpoint {latest} cannot be restored to resume "
                                         f"the run.*{message}"):
        run.run()
    assert tf.train.latest_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints")) == latest


def test_checkpoint_named_but_missing_is_an_error_not_a_fresh_start(built_set, numbered_run,
                                                                   tmp_path):
    """A workdir copied without the files of its latest checkpoint: resuming (and
    `restore_model`) stops with an error naming it instead of training again from step 0."""
    workdir = _copy(numbered_run, tmp_path)
    latest = tf.train.latest_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints"))
    for path in glob.glob(latest + ".*"):
        os.remove(path)
    message = re.escape(f"checkpoints/checkpoint names the checkpoint {latest}, whose files are "
                        "missing")
    run = trainer.stage_trainer(tiny_config(built_set, num_val_images=0, num_steps=3), str(workdir))
    with pytest.raises(FileNotFoundError, match=message):
        run.run()
    with pytest.raises(FileNotFoundError, match=message):
        workdir_lib.restore_model(str(workdir))
