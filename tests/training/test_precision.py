"""chestxray_tf/training/precision.py and the trainer under each `train.precision`: every task
trains a few steps with a falling loss and float32 outputs and variables under each mixed
policy; float16 loss scaling skips an overflowing step (trained weights unchanged, scale
halved, the step counted) and trains on, in the plain, the 2-replica and the XLA step; Li et al.'s Eq. 1-2 products in float32; batch-norm statistics in
float32; a mixed run's checkpoint restores into the float32 model and evaluates; bad values
named."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import run_identity, tasks as tasks_lib, workdir as workdir_lib
from chestxray_tf.data import pipeline
from chestxray_tf.evaluation import evaluate
from chestxray_tf.losses import li2018 as li2018_losses
from chestxray_tf.tasks.li2018 import Li2018
from chestxray_tf.training import precision, trainer

from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def first_gradient_trainer(config, workdir):
    """The `StageTrainer` of the task's first gradient stage, built under its precision."""
    run = trainer.Run(config, workdir)
    index = next(i for i, s in enumerate(run.stages) if s.kind == "gradient")
    return trainer.StageTrainer(run, run.stages[index], run.stage_dir(index))


def train_on(stage_trainer, iterator, steps, max_skipped=16):
    """The logged losses of training until `steps` steps applied an update. Under loss scaling
    a step whose gradients overflow is skipped (the scale halves); a tiny model of a task whose
    loss is a sum over classes and patches skips its first few float16 steps while the scale
    comes down from 2^15: at most `max_skipped` such steps are run on top."""
    optimizer, losses, applied = stage_trainer.optimizer, [], 0
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    while applied < steps and len(losses) < steps + max_skipped:
        scale = float(optimizer.dynamic_scale.numpy()) if scaled else None
        logs, *_ = stage_trainer._train_loop(iterator, tf.constant(1, tf.int64))
        losses.append(float(logs["loss"]))
        applied += not scaled or float(optimizer.dynamic_scale.numpy()) >= scale
    return losses, applied


def trained(model):
    """The values of the model's trainable variables (batch-norm moving statistics, updated by
    every training forward pass, skipped step or not, are not)."""
    return [v.numpy() for v in model.trainable_variables]


def repeated_batch(stage_trainer):
    """One training batch of the stage's input, repeated forever (the loss on it must fall)."""
    batch = next(stage_trainer._iterator(0, 0))
    return iter(tf.data.Dataset.from_tensors(batch).repeat())


# float32, the default, trains every task in the tests of tests/tasks, tests/training and
# tests/evaluation; Hermoza et al.'s first train step costs ~35 s to trace.
MIXED = [p for p in precision.PRECISIONS if p != "float32"]
TASKS = [pytest.param(t, marks=pytest.mark.slow) if t == "hermoza2020" else t
         for t in sorted(tasks_lib.TASKS)]


@pytest.mark.parametrize("policy", MIXED)
@pytest.mark.parametrize("task", TASKS)
def test_every_task_trains_under_every_mixed_policy(built_set, tmp_path, task, policy):
    config = tiny_config(built_set, task=task, precision=policy, num_val_images=0)
    stage = first_gradient_trainer(config, str(tmp_path))
    assert keras.config.dtype_policy().name == "float32"  # restored after the build
    iterator = repeated_batch(stage)
    losses, applied = train_on(stage, iterator, STEPS)
    assert applied == STEPS, losses
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    assert int(stage.optimizer.iterations.numpy()) == len(losses)
    assert policy in {layer.dtype_policy.name for layer in stage.model._flatten_layers()}
    images = pipeline.normalize(next(iterator)["image"], config.data.normalization)
    outputs = stage.model(images, training=False)
    assert {k: v.dtype for k, v in outputs.items()} == {k: tf.float32 for k in outputs}
    assert all(np.isfinite(v.numpy()).all() for v in outputs.values())
    # Variables (batch-norm statistics included) stay float32: checkpoints are interchangeable.
    assert {v.dtype for v in stage.model.weights} == {"float32"}
    assert isinstance(stage.optimizer, keras.optimizers.LossScaleOptimizer) == (
        policy == "mixed_float16")


def test_float16_loss_scaling_skips_an_overflowing_step_and_trains_on(built_set, tmp_path,
                                                                       li_loss_poison):
    """Keras' documented dynamic loss scaling: a step whose scaled gradients overflow float16
    changes no trained weight and halves the scale; the next finite steps train. The skipped
    step is counted in `iterations` (the trainer's step)."""
    poison = li_loss_poison
    stage = first_gradient_trainer(
        tiny_config(built_set, precision="mixed_float16", num_val_images=0), str(tmp_path))
    iterator = repeated_batch(stage)
    optimizer = stage.optimizer
    stage._train_loop(iterator, tf.constant(1, tf.int64))
    scale, before = float(optimizer.dynamic_scale.numpy()), trained(stage.model)
    # A finite float32 loss of ~1e11: x 2^15 its gradients overflow float16 (max 65504).
    poison.assign(1e10)
    logs, *_ = stage._train_loop(iterator, tf.constant(1, tf.int64))
    assert np.isfinite(float(logs["loss"]))
    assert all(np.array_equal(a, b) for a, b in zip(before, trained(stage.model)))
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    assert int(optimizer.iterations.numpy()) == 2
    poison.assign(1.0)
    for _ in range(2):
        stage._train_loop(iterator, tf.constant(1, tf.int64))
    after = trained(stage.model)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    assert all(np.isfinite(w).all() for w in after)
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    assert int(optimizer.iterations.numpy()) == 4
    # The scale and the step are checkpointed with the optimizer (a resume continues them).
    path = stage.manager.save(checkpoint_number=4)
    optimizer.dynamic_scale.assign(1.0)
    optimizer.iterations.assign(0)
    stage.checkpoint.restore(path)
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2
    assert int(optimizer.iterations.numpy()) == 4


def test_li_eq_1_2_products_are_float32_under_float16():
    """The image score 1 - prod_j (1 - p_jk)~ of a mixed_float16 Li model equals the float32
    computation from the same (float16) patch logits, and so does the loss (Eq. 1-4)."""
    config = tiny_config("unused")
    with precision.policy_scope("mixed_float16"):
        model = Li2018(config).build_model()
    probe = keras.Model(model.input, [model.get_layer("patch_logits").output,
                                      model.output["patch_probs"],
                                      model.output["image_probs"]])
    images = tf.random.stateless_uniform((2, 64, 64, 3), (1, 2), -1.0, 1.0)
    logits, patch_probs, image_probs = probe(images, training=False)
    assert logits.dtype == tf.float16 and image_probs.dtype == tf.float32
    reference = tf.sigmoid(tf.cast(logits, tf.float32))
    np.testing.assert_allclose(patch_probs.numpy(), reference.numpy(), rtol=1e-6, atol=1e-7)
    smoothing = config.model.smoothing
    np.testing.assert_allclose(image_probs.numpy(),
                               li2018_losses.image_probs(reference, smoothing).numpy(),
                               rtol=1e-6, atol=1e-7)
    grid = patch_probs.shape[1]
    labels = tf.one_hot([1, 3], 14)
    box_mask = tf.zeros((2, grid, grid, 14)) + tf.reshape(labels, (2, 1, 1, 14)) * tf.cast(
        tf.range(grid)[None, :, None, None] < grid // 2, tf.float32)
    has_box = labels * tf.constant([[1.0], [0.0]])
    loss = li2018_losses.li2018_loss(labels, box_mask, has_box, tf.cast(patch_probs, tf.float16),
                                     smoothing=smoothing)
    np.testing.assert_allclose(
        loss.numpy(), li2018_losses.li2018_loss(labels, box_mask, has_box,
                                                tf.cast(tf.cast(patch_probs, tf.float16),
                                                        tf.float32),
                                                smoothing=smoothing).numpy(), rtol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_batch_norm_statistics_stay_float32(policy):
    """Activations of 300 square to 9e4, past float16's 65504: Keras' BatchNormalization
    computes its moments in float32 and keeps its moving statistics in float32."""
    with precision.policy_scope(policy):
        layer = keras.layers.BatchNormalization(momentum=0.0)
    x = tf.cast(300.0 + 10.0 * tf.random.stateless_normal((8, 4, 4, 2), (3, 4)),
                layer.compute_dtype)
    layer(x, training=True)
    assert layer.compute_dtype == policy.removeprefix("mixed_")
    assert layer.moving_mean.dtype == "float32" and layer.moving_variance.dtype == "float32"
    x32 = tf.cast(x, tf.float32).numpy()
    np.testing.assert_allclose(layer.moving_mean.numpy(), x32.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), x32.var(axis=(0, 1, 2)),
                               rtol=1e-3)


def test_a_mixed_run_restores_into_the_float32_model_and_evaluates(built_set, tmp_path):
    workdir = str(tmp_path)
    config = tiny_config(built_set, precision="mixed_bfloat16", num_steps=3, num_val_images=0)
    assert ", precision mixed_bfloat16\n" in trainer.Run(config, workdir).plan()
    trainer.train(config, workdir)
    assert workdir_lib.load_config(workdir).train.precision == "mixed_bfloat16"
    _, model, _ = workdir_lib.restore_model(workdir)
    assert {layer.dtype_policy.name for layer in model._flatten_layers()} == {"float32"}
    written = evaluate.evaluate(workdir, "latest", "test_fold", progress=False)
    with open(written["json"]) as f:
        results = json.load(f)["results"]
    assert results["num_images"] > 0
    assert all(0.0 <= v <= 1.0 for v in results["auc"]["per_class"].values()
               if v is not None), results["auc"]


def test_bad_precision_is_named(built_set, tmp_path):
    with pytest.raises(ValueError, match="train.precision must be one of float32, "
                                         "mixed_bfloat16, mixed_float16, got 'float16'"):
        trainer.Run(tiny_config(built_set, precision="float16"), str(tmp_path))
    config = tiny_config(built_set)
    config.stages.train.precision = "mixed_float16"
    with pytest.raises(ValueError, match="config.stages.train.precision: the precision is the "
                                         "run's"):
        trainer.Run(config, str(tmp_path))


def test_policy_scope_restores_the_previous_policy_on_error():
    with pytest.raises(RuntimeError):
        with precision.policy_scope("mixed_bfloat16"):
            assert keras.layers.Dense(1).compute_dtype == "bfloat16"
            raise RuntimeError("model build failed")
    assert keras.config.dtype_policy().name == "float32"


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])  # tests/, for tiny.py
    from tiny import tiny_config
    from chestxray_tf.tasks.li2018 import Li2018
    from chestxray_tf.training import trainer

    poison = tf.Variable(1.0)
    loss_fn = Li2018.loss

    def replica_poisoned_loss(self, batch, outputs):
        # Only the last replica overflows (with 2, the first one's gradients stay finite).
        context = tf.distribute.get_replica_context()
        last = context.replica_id_in_sync_group == context.num_replicas_in_sync - 1
        loss, terms = loss_fn(self, batch, outputs)
        return loss * tf.where(last, poison, 1.0), terms

    Li2018.loss = replica_poisoned_loss
    result = {}
    for name, strategy, jit in (("mirrored", "mirrored", False), ("xla", "default", True)):
        config = tiny_config(sys.argv[1], strategy=strategy, batch_size=4 if jit else 2,
                             precision="mixed_float16", jit_compile=jit, num_val_images=0)
        run = trainer.stage_trainer(config, sys.argv[3] + "/" + name)
        batch_iterator = run._iterator(0, 0)

        def step(value):
            poison.assign(value)
            before = [v.numpy() for v in run.model.trainable_variables]
            logs, *_ = run._train_loop(batch_iterator, tf.constant(1, tf.int64))
            after = [v.numpy() for v in run.model.trainable_variables]
            return {"loss": float(logs["loss"]),
                    "changed": any(not np.array_equal(a, b) for a, b in zip(before, after)),
                    "finite": all(np.isfinite(w).all() for w in after),
                    "scale": float(run.optimizer.dynamic_scale.numpy()),
                    "iterations": int(run.optimizer.iterations.numpy())}

        warm = [step(1.0)]  # until the scale has come down to one that trains
        while not warm[-1]["changed"] and len(warm) < 16:
            warm.append(step(1.0))
        result[name] = [warm[-1], step(1e10), step(1.0)]
    print(json.dumps(result))
""")


@pytest.mark.slow
def test_loss_scaling_under_mirrored_strategy_and_xla(built_set, tmp_path):
    """LossScaleOptimizer inside `strategy.run` over 2 logical CPUs (an overflow on the second
    replica alone skips the step on both) and in the XLA-compiled step (default strategy): an
    overflowing step changes no weight and halves the scale, the others train."""
    script = tmp_path / "distributed.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(built_set), TESTS, str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for name, (trains, overflows, trains_on) in result.items():
        assert [trains["changed"], overflows["changed"], trains_on["changed"]] == [
            True, False, True], (name, result)
        assert overflows["scale"] == trains_on["scale"] == trains["scale"] / 2, (name, result)
        assert overflows["iterations"] == trains["iterations"] + 1 == trains_on["iterations"] - 1
        assert all(s["finite"] and np.isfinite(s["loss"]) for s in result[name]), result


def test_a_run_recorded_before_the_field_resumes_as_float32_only():
    """A run.json written before `train.precision` existed trained in float32: it resumes
    under float32, and a mixed resume of it is refused naming the field."""
    recorded = {"fields": {"train.learning_rate": 1e-3}}
    same = {"fields": {"train.learning_rate": 1e-3, "train.precision": "float32"}}
    assert run_identity.differences(recorded, same) == {}
    mixed = {"fields": {"train.learning_rate": 1e-3, "train.precision": "mixed_bfloat16"}}
    assert run_identity.differences(recorded, mixed) == {
        "train.precision": ("float32", "mixed_bfloat16")}
