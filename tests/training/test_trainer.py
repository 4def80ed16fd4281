"""chestxray_tf/training/trainer.py: the loss falls, logs, resume, NaN stop, 2-replica step."""

import glob
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.tasks.li2018 import Li2018
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.training import trainer

from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _scalars(logdir):
    """{tag: [(step, value), ...]} and the image tags of the TensorBoard event files."""
    values, images = {}, set()
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                tensor = tf.make_ndarray(v.tensor)
                if v.metadata.plugin_data.plugin_name == "images":
                    images.add(v.tag)
                elif tensor.ndim == 0:
                    values.setdefault(v.tag, []).append((event.step, float(tensor)))
    return {k: sorted(v) for k, v in values.items()}, images


def test_loss_falls_and_tensorboard_has_the_terms(built_set, tmp_path):
    config = tiny_config(built_set, num_steps=60, learning_rate=3e-3, log_every_steps=6,
                         checkpoint_every_steps=30, steps_per_epoch=30)
    last = trainer.train(config, str(tmp_path))
    scalars, images = _scalars(tmp_path / "stages" / "0_train" / "logs")
    loss = [v for _, v in scalars["train/loss"]]
    assert len(loss) == 10
    assert np.mean(loss[-3:]) < 0.85 * np.mean(loss[:2]), loss
    for tag in ("train/box_term", "train/image_term", "train/regularization",
                "train/learning_rate", "train/images_per_second", "val/auc_mean"):
        assert tag in scalars, tag
    assert "val/heatmap_top_class" in images
    assert [s for s, _ in scalars["val/auc_mean"]] == [30, 60]
    assert math.isclose(last["learning_rate"], 3e-3, rel_tol=1e-6)
    assert os.path.exists(tmp_path / "config.json")
    assert tf.train.latest_checkpoint(str(tmp_path / "stages" / "0_train" / "checkpoints")).endswith("ckpt-60")
    assert os.path.exists(workdir_lib.resolve(str(tmp_path), "best") + ".index")


def _weights(workdir):
    _, model, _ = workdir_lib.restore_model(workdir)
    return model.get_weights()


def test_resume_continues_from_the_saved_step_in_the_same_data_order(built_set, tmp_path):
    straight = tiny_config(built_set, num_steps=12, steps_per_epoch=4, checkpoint_every_steps=3,
                           num_val_images=0)
    trainer.train(straight, str(tmp_path / "straight"))
    # The same run stopped at step 6 (mid-epoch: 2 batches into epoch 1), then resumed.
    interrupted = tiny_config(built_set, num_steps=6, steps_per_epoch=4,
                              checkpoint_every_steps=3, num_val_images=0)
    trainer.train(interrupted, str(tmp_path / "resumed"))
    resumed = trainer.stage_trainer(straight, str(tmp_path / "resumed"))
    assert resumed.manager.latest_checkpoint.endswith("ckpt-6")
    resumed.run()
    assert int(resumed.optimizer.iterations.numpy()) == 12
    for a, b in zip(_weights(str(tmp_path / "straight")), _weights(str(tmp_path / "resumed"))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(built_set, tmp_path, monkeypatch):
    """The loss turns NaN at step 8 (in the graph, mid-loop with 4 steps per call): the run
    stops naming step 8, and the last checkpoint (step 5) is the last good one."""
    calls = tf.Variable(0, dtype=tf.int64)
    loss_fn = Li2018.loss

    def poisoned_loss(self, batch, outputs):
        loss, terms = loss_fn(self, batch, outputs)
        calls.assign_add(1)
        return loss * tf.where(calls >= 8, float("nan"), 1.0), terms

    monkeypatch.setattr(Li2018, "loss", poisoned_loss)
    config = tiny_config(built_set, num_steps=20, checkpoint_every_steps=5, num_val_images=0,
                         log_every_steps=10, steps_per_loop=4)
    run = trainer.stage_trainer(config, str(tmp_path))
    with pytest.raises(trainer.TrainingDivergedError, match="step 8 .*ckpt-5"):
        run.run()
    assert int(calls.numpy()) == 8  # the loop stopped at the first non-finite step
    assert tf.train.latest_checkpoint(str(tmp_path / "stages" / "0_train" / "checkpoints")).endswith("ckpt-5")
    monkeypatch.undo()
    assert all(np.isfinite(w).all() for w in _weights(str(tmp_path)))


def test_steps_per_loop_gives_the_same_weights_and_resumes_exactly(built_set, tmp_path):
    """4 steps per call (loops cut at the log, checkpoint and epoch steps; under
    `OneDeviceStrategy`, whose input is prefetched to its device) train the same weights as 1
    step per call (the default strategy), on the same data in the same order; interrupted at step 6 and
    resumed, the same again. To float32 rounding: the graph of a loop is optimised differently
    from a single step's (1e-7 after the first epoch), so the test trains with a small SGD
    step (lr 1e-4), where rounding is not amplified: on this tiny model, SGD at lr 0.01
    multiplied a 1e-7 difference by 40-100 per step, and Adam's m / sqrt(v) turns the
    rounding of a near-zero gradient into a whole step. The loss logs are the same means."""
    def config(num_steps, steps_per_loop):
        return tiny_config(built_set, num_steps=num_steps, steps_per_epoch=5,
                           strategy="default" if steps_per_loop == 1 else "one_device",
                           checkpoint_every_steps=3, log_every_steps=6, num_val_images=0,
                           steps_per_loop=steps_per_loop, optimizer="sgd", momentum=0.0,
                           learning_rate=1e-4)

    initial = trainer.stage_trainer(config(12, 1), str(tmp_path / "initial")).model.get_weights()
    one = trainer.train(config(12, 1), str(tmp_path / "one"))
    four = trainer.train(config(12, 4), str(tmp_path / "four"))
    trainer.train(config(6, 4), str(tmp_path / "resumed"))
    resumed = trainer.stage_trainer(config(12, 4), str(tmp_path / "resumed"))
    assert resumed.manager.latest_checkpoint.endswith("ckpt-6")
    resumed.run()
    np.testing.assert_allclose(one["loss"], four["loss"], rtol=1e-5)
    for a, b, c in zip(_weights(str(tmp_path / "one")), _weights(str(tmp_path / "four")),
                       _weights(str(tmp_path / "resumed"))):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-6)
    assert max(float(np.max(np.abs(w - w0))) for w, w0 in zip(
        _weights(str(tmp_path / "one")), initial)) > 1e-4  # the weights moved
    checkpoints = sorted(int(p.rsplit("-", 1)[1].split(".")[0]) for p in glob.glob(
        str(tmp_path / "four" / "stages" / "0_train" / "checkpoints" / "ckpt-*.index")))
    assert checkpoints[-3:] == [9, 10, 12]  # every 3 steps and at each epoch's end (5, 10)


def test_loop_length_ends_at_every_event():
    """From step s, a loop ends at the next log / validation / checkpoint step or `end`."""
    class Config:
        steps_per_loop, log_every_steps, eval_every_steps, checkpoint_every_steps = 10, 6, 0, 4

    loop = trainer.StageTrainer._loop_length
    fake = type("T", (), {"config": Config})()
    assert [loop(fake, s, 30) for s in (0, 4, 6, 8, 12, 28)] == [4, 2, 2, 4, 4, 2]
    Config.eval_every_steps, Config.checkpoint_every_steps = 7, 100
    assert [loop(fake, s, 30) for s in (0, 6, 7, 12)] == [6, 1, 5, 2]
    assert loop(fake, 25, 27) == 2


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])  # tests/, for tiny.py
    from tiny import tiny_config
    from chestxray_tf.training import trainer

    def one_step(strategy, workdir, weights=None):
        config = tiny_config(sys.argv[1], strategy=strategy, batch_size=4 if strategy == "default"
                             else 2, optimizer="sgd", momentum=0.0, learning_rate=0.1,
                             num_val_images=0)
        config.train.sync_batch_norm = True
        run = trainer.stage_trainer(config, workdir)
        assert run.global_batch == 4 and run.strategy.num_replicas_in_sync == (
            1 if strategy == "default" else 2)
        if weights is not None:
            run.model.set_weights(weights)
        before = run.model.get_weights()
        logs, skipped, steps, finite = run._train_loop(run._iterator(0, 0),
                                                       tf.constant(1, tf.int64))
        assert int(skipped) == 0 and int(steps) == 1 and bool(finite)
        return before, {k: float(v) for k, v in logs.items()}, run.model.get_weights()

    before, single, after_single = one_step("default", sys.argv[3] + "/single")
    _, mirrored, after_mirrored = one_step("mirrored", sys.argv[3] + "/mirrored", before)
    grads_single = [(b - a) / 0.1 for b, a in zip(before, after_single)]
    grads_mirrored = [(b - a) / 0.1 for b, a in zip(before, after_mirrored)]
    print(json.dumps({
        "loss": [single["loss"], mirrored["loss"]],
        "max_grad_diff": max(float(np.max(np.abs(g - h))) for g, h in zip(grads_single,
                                                                           grads_mirrored)),
        "max_grad": max(float(np.max(np.abs(g))) for g in grads_single),
    }))
""")


@pytest.mark.slow
def test_mirrored_step_equals_the_single_device_step(built_set, tmp_path):
    """MirroredStrategy over 2 logical CPUs, global batch 4 (2 per replica) vs one device with
    batch 4: the same loss and the same gradients (SGD without momentum: update = lr x grad)."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(built_set),
                          os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    single, mirrored = result["loss"]
    assert abs(single - mirrored) <= 1e-4 * max(1.0, abs(single)), result
    assert result["max_grad"] > 0
    assert result["max_grad_diff"] <= 1e-4, result


@pytest.mark.slow
def test_xla_step_matches_the_plain_step(built_set, tmp_path):
    """`train.jit_compile=True` compiles the replica step with XLA: the same loss (1e-5) and
    the same update of the weights, to 1% of its norm (XLA's fused float32 reductions round
    differently; over several steps the differences grow)."""
    results = []
    for jit in (False, True):
        config = tiny_config(built_set, num_steps=1, num_val_images=0, jit_compile=jit,
                             optimizer="sgd", momentum=0.0)
        run = trainer.stage_trainer(config, str(tmp_path / f"jit_{jit}"))
        before = run.model.get_weights()
        logs = run.run()
        results.append((logs["loss"], [w - b for w, b in zip(run.model.get_weights(), before)]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    plain, xla = (np.concatenate([u.ravel() for u in r[1]]) for r in results)
    assert np.linalg.norm(plain) > 0
    assert np.linalg.norm(xla - plain) <= 1e-2 * np.linalg.norm(plain)
