"""Issue 13, items 4-9 and 12 (training side): a run is never silently mixed with another,
files a later run reads are whole, Ctrl-C keeps the steps, one trainer per workdir."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from chestxray_tf import workdir as workdir_lib
from chestxray_tf.evaluation import evaluate
from chestxray_tf.training import trainer
from processes import sigkill_when
from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _copy(trained_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained_run, workdir)
    return workdir


def test_resume_with_another_run_is_refused_naming_each_field(trained_run, built_set, tmp_path):
    workdir = _copy(trained_run, tmp_path)
    before = (workdir / "config.json").read_text()
    config = tiny_config(built_set, num_steps=12, steps_per_epoch=6)
    config.model.grid = 3
    config.data.test_fold = 1
    config.train.learning_rate = 0.5
    with pytest.raises(ValueError) as error:
        trainer.train(config, str(workdir))
    message = str(error.value)
    for field in ("model.grid", "data.test_fold", "train.learning_rate", "split_sha256"):
        assert field in message, message
    assert (workdir / "config.json").read_text() == before  # not rewritten
    # Fields that do not change the run stay free: more steps, other logging.
    free = tiny_config(built_set, num_steps=14, steps_per_epoch=6, log_every_steps=1,
                       progress_bar=False)
    free.eval.batch_size = 3
    trainer.train(free, str(workdir))
    assert workdir_lib.resolve(str(workdir)).endswith("ckpt-14")


def test_evaluate_refuses_a_rebuilt_set(trained_run, built_set, tmp_path):
    workdir = _copy(trained_run, tmp_path)
    rebuilt = tmp_path / "set"
    shutil.copytree(built_set, rebuilt)
    manifest = json.loads((rebuilt / "manifest.json").read_text())
    manifest["command"] = "rebuilt"
    (rebuilt / "manifest.json").write_text(json.dumps(manifest))
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["manifest"] = str(rebuilt)
    (workdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="changed since .* trained on it"):
        evaluate.evaluate(str(workdir), progress=False)


def test_one_trainer_per_workdir_and_stale_locks(trained_run, built_set, tmp_path):
    workdir = _copy(trained_run, tmp_path)
    config = tiny_config(built_set, num_steps=12, steps_per_epoch=6)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (workdir / ".lock").write_text(json.dumps({"host": os.uname().nodename,
                                                   "pid": sleeper.pid}))
        with pytest.raises(workdir_lib.WorkdirLocked, match=f"process {sleeper.pid}"):
            trainer.train(config, str(workdir))
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    # The owner is gone: the lock is stale, taken over, and released at the end.
    trainer.train(config, str(workdir))
    assert not (workdir / ".lock").exists()


def test_damaged_best_json_names_the_file(trained_run, tmp_path):
    workdir = _copy(trained_run, tmp_path)
    best = workdir / "stages" / "0_train" / "checkpoints" / "best" / "best.json"
    assert best.exists()
    best.write_text("")
    with pytest.raises(ValueError, match=r"best\.json is not valid JSON"):
        workdir_lib.resolve(str(workdir), "best")


def test_new_best_keeps_the_previous_whole_until_it_is_written(built_set, tmp_path):
    config = tiny_config(built_set, num_steps=12, steps_per_epoch=3)
    trainer.train(config, str(tmp_path))
    folder = tmp_path / "stages" / "0_train" / "checkpoints" / "best"
    record = json.loads((folder / "best.json").read_text())
    names = sorted(os.listdir(folder))
    assert names == sorted(["best.json", record["checkpoint"] + ".index",
                            record["checkpoint"] + ".data-00000-of-00001"])
    assert not [n for n in names if ".tmp" in n]


@pytest.mark.parametrize("field,value", [("checkpoint_every_steps", 0),
                                         ("log_every_steps", 0), ("batch_size", -1),
                                         ("num_steps", -5)])
def test_train_settings_are_checked_before_any_work(built_set, tmp_path, field, value):
    config = tiny_config(built_set, **{field: value})
    with pytest.raises(ValueError, match=f"{field}={value}"):
        trainer.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "stages").exists()


def test_eval_folders_per_split_and_checkpoint(tmp_path):
    assert evaluate.eval_dir("W", "test_fold") == os.path.join("W", "eval", "test_fold")
    assert evaluate.eval_dir("W", "val", "best") == os.path.join("W", "eval", "val-best")
    assert evaluate.eval_dir("W", "val", "/x/ckpt-7") == os.path.join("W", "eval", "val-ckpt-7")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_a_checkpoint_and_says_where(built_set, tmp_path, signum):
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/li2018.py:tiny",
               f"--workdir={workdir}", f"--config.data.manifest={built_set}",
               "--config.train.num_steps=100000", "--config.train.checkpoint_every_steps=100000",
               "--config.train.log_every_steps=1", "--config.train.strategy=default"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    logs = workdir / "stages" / "0_train" / "logs"
    try:
        deadline = time.time() + 240
        def trained_a_few_steps():  # train/* scalars of several steps in the events file
            return logs.is_dir() and sum(p.stat().st_size for p in logs.iterdir()) > 2000
        while time.time() < deadline and not trained_a_few_steps():
            time.sleep(0.2)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        sigkill_when(process, lambda: True, timeout=0)
    assert process.returncode == 128 + signum, err[-3000:]
    saved = workdir_lib.latest_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints"))
    assert saved and f"checkpoint {saved} saved" in err
    assert int(saved.rsplit("-", 1)[1]) > 0
    assert "Traceback" not in err
    tf.train.load_checkpoint(saved)


def test_a_checkpoint_of_another_run_is_refused(trained_run, tmp_path):
    workdir = _copy(trained_run, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    foreign = workdir_lib.resolve(str(other))
    with pytest.raises(ValueError, match="belongs to another run"):
        evaluate.evaluate(str(workdir), foreign, progress=False)
    own = workdir_lib.resolve(str(workdir))
    assert workdir_lib.resolve(str(workdir), own) == own
