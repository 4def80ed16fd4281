"""MultiWorkerMirroredStrategy: 2 `cli.train` processes on 127.0.0.1 train the tiny Li et al.
config like one process with the same global batch, and resume from the chief's checkpoint.

The trainer's custom loop is what runs under the strategy (Keras 3's `model.fit` fails under it,
keras-team/keras#20585).
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.training import trainer

import events
from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH_PER_REPLICA = 2
NUM_WORKERS = 2
RUN_TIMEOUT_S = 240
# The run both sides share (`tiny_config` overrides of config.train): plain SGD, so an update
# is lr x gradient. At lr 1e-2 and above this tiny run amplifies float rounding chaotically (a
# 1e-6 relative change of the initial weights grew to 1e-2 absolute in 4 steps); at 1e-3 it
# does not, so the two runs can be compared closely.
TRAIN = dict(steps_per_epoch=3, checkpoint_every_steps=2, optimizer="sgd", momentum=0.0,
             learning_rate=1e-3, num_val_images=0)
# The runs differ only in float rounding (sync batch norm and the gradients are summed over the
# workers): measured max |difference| 1.2e-7 of the weights, 1.6e-7 relative of the losses.
RTOL, ATOL = 1e-5, 1e-6
CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
from tiny import tiny_config


def get_config():
    config = tiny_config({manifest!r}, strategy="multi_worker", batch_size={batch}, **{train!r})
    config.train.sync_batch_norm = True
    return config
"""


def _single_process_config(manifest, num_steps):
    """The config file's run on one replica with the workers' global batch."""
    config = tiny_config(manifest, strategy="default", batch_size=BATCH_PER_REPLICA * NUM_WORKERS,
                         num_steps=num_steps, **TRAIN)
    config.train.sync_batch_norm = True
    return config


def _free_loopback_ports(count):
    """Ports the OS picks as free on 127.0.0.1 (all bound at once, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tf_config(ports, task_type, index):
    return json.dumps({"cluster": {"chief": [f"127.0.0.1:{ports[0]}"],
                                   "worker": [f"127.0.0.1:{p}" for p in ports[1:]]},
                       "task": {"type": task_type, "index": index}})


def _train_on_two_workers(config_file, workdir, num_steps, log_dir):
    """Runs the chief and one worker to `num_steps`; returns their output (stdout and stderr).

    Both processes are bounded by RUN_TIMEOUT_S and killed and reaped whatever happens.
    """
    ports = _free_loopback_ports(NUM_WORKERS)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # loopback only
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "chestxray_tf.cli.train", f"--config={config_file}",
               f"--workdir={workdir}", f"--config.train.num_steps={num_steps}"]
    tasks = [("chief", 0)] + [("worker", i) for i in range(NUM_WORKERS - 1)]
    logs = [log_dir / f"{t}{i}_{num_steps}.log" for t, i in tasks]
    processes = []
    try:
        for (task_type, index), log in zip(tasks, logs):
            with open(log, "w") as out:
                processes.append(subprocess.Popen(
                    command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                    env=dict(env, TF_CONFIG=_tf_config(ports, task_type, index))))
        deadline = time.time() + RUN_TIMEOUT_S
        while any(p.poll() is None for p in processes) and time.time() < deadline:
            if any(p.poll() not in (None, 0) for p in processes):
                break  # one failed: the other would wait for it until the deadline
            time.sleep(0.5)
        codes = [p.poll() for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
    texts = [log.read_text() for log in logs]
    assert codes == [0] * NUM_WORKERS, (
        f"exit codes {codes} (None: still running after {RUN_TIMEOUT_S} s)\n" +
        "\n".join(f"--- {log.name}\n{text[-3000:]}" for log, text in zip(logs, texts)))
    return texts


def _reference_run(config, workdir):
    """One process, one replica, global batch = the workers' sum, fed each step the union of
    what the two workers' input pipelines give (`StageTrainer._dataset_fn` with their contexts).

    Returns the largest change of a trainable weight over the run.
    """
    run = trainer.stage_trainer(config, workdir)
    assert run.strategy.num_replicas_in_sync == 1
    assert run.global_batch == BATCH_PER_REPLICA * NUM_WORKERS

    def iterator(epoch, skip_batches):
        parts = [run._dataset_fn(epoch, skip_batches)(tf.distribute.InputContext(
            num_input_pipelines=NUM_WORKERS, input_pipeline_id=i,
            num_replicas_in_sync=NUM_WORKERS)) for i in range(NUM_WORKERS)]
        return iter(tf.data.Dataset.zip(*parts).map(
            lambda *batches: {k: tf.concat([b[k] for b in batches], 0) for k in batches[0]}))

    run._iterator = iterator
    initial = [w.numpy() for w in run.model.trainable_weights]
    run.run()
    return max(np.abs(w.numpy() - w0).max() for w, w0 in zip(run.model.trainable_weights,
                                                              initial))


def _trained_variables(workdir, step):
    """{checkpoint key: value} of the variables in WORKDIR/checkpoints/ckpt-STEP (the model's,
    some filed under the optimizer that tracks them, and the step counter)."""
    reader = tf.train.load_checkpoint(os.path.join(workdir, "stages", "0_train", "checkpoints", f"ckpt-{step}"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter")}


@pytest.mark.slow
def test_two_workers_train_like_one_process_and_resume_from_the_chief(built_set, tmp_path):
    config_file = tmp_path / "config.py"
    config_file.write_text(CONFIG_FILE.format(tests=TESTS, manifest=str(built_set),
                                              batch=BATCH_PER_REPLICA, train=TRAIN))
    workdir = tmp_path / "multi_worker"

    # 4 steps (1 into the second epoch), then the worker's private checkpoint folder is lost
    # (as on a new machine) and the same command trains on to step 6.
    _train_on_two_workers(config_file, workdir, 4, tmp_path)
    assert {os.path.basename(p) for p in tf.io.gfile.glob(str(workdir / "stages" / "0_train" / "checkpoints" / "*.index"))
            } == {"ckpt-2.index", "ckpt-3.index", "ckpt-4.index"}
    # The worker takes part in every save, into a folder of its own that is never read.
    assert tf.train.latest_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints" / "tmp_worker" / "0")).endswith(
        "ckpt-4")
    tf.io.gfile.rmtree(str(workdir / "stages" / "0_train" / "checkpoints" / "tmp_worker"))
    logs = _train_on_two_workers(config_file, workdir, 6, tmp_path)
    for log in logs:
        assert "resumed from " + str(workdir / "stages" / "0_train" / "checkpoints" / "ckpt-4") + " at step 4" in log

    # The chief alone writes WORKDIR: config, checkpoints and one TensorBoard file per run.
    assert tf.train.latest_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints")).endswith("ckpt-6")
    reader = tf.train.load_checkpoint(str(workdir / "stages" / "0_train" / "checkpoints" / "ckpt-6"))
    [iterations] = [k for k in reader.get_variable_to_shape_map() if "iterations" in k]
    assert reader.get_tensor(iterations) == 6
    assert json.loads((workdir / "config.json").read_text())["train"]["strategy"] == "multi_worker"
    assert len(tf.io.gfile.glob(str(workdir / "stages" / "0_train" / "logs" / "events.out.tfevents.*"))) == 2
    losses = events.scalars(str(workdir / "stages" / "0_train" / "logs"), "train/loss")
    assert sorted(losses) == [2, 3, 4, 6], losses  # every 2 steps and at epoch ends

    largest_change = _reference_run(_single_process_config(built_set, 6), str(tmp_path / "single"))
    reference_losses = events.scalars(str(tmp_path / "single" / "stages" / "0_train" / "logs"), "train/loss")
    assert sorted(reference_losses) == sorted(losses)
    for step in losses:
        assert losses[step] == pytest.approx(reference_losses[step], rel=RTOL), step
    assert largest_change > 100 * ATOL
    for step in (3, 4, 6):
        ours = _trained_variables(workdir, step)
        theirs = _trained_variables(tmp_path / "single", step)
        assert len(ours) > 80 and sorted(ours) == sorted(theirs)
        for key, value in ours.items():
            np.testing.assert_allclose(value, theirs[key], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{key} at step {step}")
