"""Mixed precision: `config.train.precision` = "float32" | "mixed_bfloat16" | "mixed_float16".

A mixed policy (Keras' dtype policies, `keras.config.set_dtype_policy`) makes every layer
built under it compute in bfloat16 or float16 while its variables stay float32, so a
checkpoint of a mixed run restores into the float32 model that evaluation, export and predict
build (and back). What stays float32 whatever the policy:

* the variables, batch-norm moving statistics included (Keras' BatchNormalization keeps its
  statistics in the variable dtype and normalises in float32 under float16 / bfloat16);
* each model's outputs (its output layers are built with `dtype="float32"`), hence the losses,
  the metrics and the scores and maps evaluation reads;
* the products over patches of Li et al.'s Eq. 1-2 (1 - prod_j (1 - p_jk) over 64-400
  patches underflows in float16): the patch probabilities are float32 before them.

"mixed_float16" also scales the loss (`LossScaleOptimizer`): float16 gradients below ~6e-8
flush to zero, so the loss is multiplied by a dynamic scale before the gradients and the
gradients divided by it before the update; a step whose gradients overflow is skipped and
halves the scale, and 2000 finite steps double it (Micikevicius et al. 2018, "Mixed
Precision Training"; Keras' `LossScaleOptimizer`). bfloat16 has float32's exponent range and
needs no scaling.

The policy is process-global in Keras: `policy_scope` sets it while the trainer builds the
model and restores the previous one after, so models built later (tests, evaluation in the
same process) are not affected.
"""

import contextlib

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def check(precision):
    """`precision` if it is one of `PRECISIONS`; otherwise a ValueError naming the field."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got "
                         f"{precision!r}")
    return precision


def of_config(config):
    """The run's precision, `config.train.precision` (validated). It is the run's, not a
    stage's: the model is built once under it, so a stage override is refused."""
    for name, stage in (config.get("stages") or {}).items():
        if "precision" in stage:
            raise ValueError(f"config.stages.{name}.precision: the precision is the run's "
                             "(train.precision), one model is built under it for every stage")
    return check(config.train.get("precision", "float32"))


@contextlib.contextmanager
def policy_scope(precision):
    """Sets Keras' global dtype policy to `precision` inside the block (layers built there
    compute in it) and restores the previous policy after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(check(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling (see the module docstring) whose skipped steps still count:
    a step with non-finite gradients leaves the weights and the inner optimizer's moments
    unchanged and halves the scale, and increments `iterations`, as TF 2's Keras
    `LossScaleOptimizer` did. The trainer's step counter, learning-rate schedule, stage hooks
    and exact resume all read `iterations`, which must equal the steps run (Keras 3's own
    leaves it behind by one per skipped step)."""

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)


def wrap_optimizer(optimizer, precision):
    """`optimizer` with loss scaling under "mixed_float16" (its state, scale included, is
    checkpointed with it), `optimizer` itself otherwise."""
    if check(precision) == "mixed_float16":
        return LossScaleOptimizer(optimizer)
    return optimizer


def scale_loss(optimizer, loss):
    """The loss to differentiate (inside the tape): `loss` x the dynamic scale with loss
    scaling, `loss` otherwise."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(loss)
    return loss


def apply_gradients(optimizer, grads, variables):
    """Applies the gradients of `scale_loss(optimizer, loss)`. With loss scaling the optimizer
    unscales them, or skips the step when any is non-finite; under a strategy with several
    replicas the replicas first agree (one all-reduced flag), since Keras decides from the
    first replica's gradients before they are summed, so an overflow on another replica
    alone would reach the weights."""
    if (isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            and tf.distribute.get_replica_context() is not None
            and tf.distribute.get_strategy().num_replicas_in_sync > 1):
        grads = _poison_unless_all_finite(grads)
    optimizer.apply_gradients(zip(grads, variables))


def _poison_unless_all_finite(grads):
    """`grads`, made NaN on every replica when any replica has a non-finite gradient."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
    # The replicas that overflowed, summed (all-reduce has SUM and MEAN, no MIN).
    overflowed = tf.distribute.get_replica_context().all_reduce(
        "SUM", 1.0 - tf.cast(finite, tf.float32))
    poison = tf.where(overflowed > 0, float("nan"), 0.0)
    return [g if g is None else g + tf.cast(poison, g.dtype) for g in grads]
