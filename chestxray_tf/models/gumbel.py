"""Straight-through Gumbel-softmax selection of one proposal per class (Hermoza et al. 2020,
Sec. 3.2, after Jang et al. 2017) and the annealing of its temperature tau (Sec. 4.2).

Per image and class k, over the N proposals with confidences c_{n,k}:
    g_n = -log(-log u_n), u_n ~ U(0, 1);  y_soft = softmax((c_{., k} + g) / tau);
    forward: y = one_hot(argmax_n y_soft);  backward: dy/dc = d y_soft / dc
(y = y_hard - stop_gradient(y_soft) + y_soft). The selected box is b~_k = sum_n y_n r_{n,k}, so
the gradient reaches both the confidences and the refined boxes. At inference there is no noise:
y = one_hot(argmax_n c_{n,k}) (the authors' eval mode).
"""

import keras
import tensorflow as tf

from chestxray_tf.models.layers import Float32Layer

TAU_SCHEDULES = ("stages_2_3", "stage2", "per_stage", "constant")
TAU_START = 1.0
TAU_END = 1e-3


def straight_through_softmax(logits, temperature, axis=1):
    """One-hot of argmax(logits) forward, the gradient of softmax(logits / temperature)
    backward, along `axis`. Returns float32 of the shape of `logits`."""
    logits = tf.cast(logits, tf.float32)
    soft = tf.nn.softmax(logits / temperature, axis=axis)
    depth = logits.shape[axis]
    hard = tf.one_hot(tf.argmax(logits, axis=axis), depth, axis=axis, dtype=tf.float32)
    return hard - tf.stop_gradient(soft) + soft


def gumbel_noise(shape, seed):
    """Standard Gumbel samples -log(-log u), u ~ U(0, 1) (kept away from 0 and 1)."""
    tiny = 1e-20
    uniform = keras.random.uniform(shape, minval=tiny, maxval=1.0, seed=seed)
    return -tf.math.log(-tf.math.log(uniform) + tiny)


def select(weights, boxes):
    """b~[b, k] = sum_n weights[b, n, k] * boxes[b, n, k]: [B, N, K] x [B, N, K, 4] -> [B, K, 4]."""
    return tf.einsum("bnk,bnkc->bkc", weights, tf.cast(boxes, tf.float32))


@keras.saving.register_keras_serializable(package="chestxray_tf")
class GumbelPick(Float32Layer):
    """[B, N, K] confidences -> [B, N, K] one-hot selection over the N proposals of each class.

    Training: straight-through Gumbel-softmax at the temperature `tau` (a non-trainable weight,
    set from outside with `layer.tau.assign(...)`, e.g. by `temperature`); inference: the argmax
    of the confidences, no noise. The selection's forward value is exactly one-hot either way.
    Float32 under any policy: (c + g) / tau at tau = 1e-3 overflows float16.
    """

    def __init__(self, tau=TAU_START, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not tau > 0:
            raise ValueError(f"GumbelPick tau must be positive, got {tau!r}")
        self.initial_tau = float(tau)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None:
            raise ValueError(f"GumbelPick expects [B, N, K] with a static N, got {input_shape}")
        self.tau = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            self.initial_tau), trainable=False, name="tau",
            aggregation="only_first_replica")

    def call(self, confidences, training=False):
        confidences = tf.cast(confidences, tf.float32)
        if training:
            noisy = confidences + gumbel_noise(tf.shape(confidences), self.seed_generator)
            return straight_through_softmax(noisy, self.tau, axis=1)
        return tf.one_hot(tf.argmax(confidences, axis=1), confidences.shape[1], axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "tau": self.initial_tau, "seed": self.seed}


def annealed_tau(step, num_steps, start=TAU_START, end=TAU_END):
    """tau_t = start (end / start)^(t / (T - 1)) for t = 0..T-1 (exponential annealing,
    Sec. 4.2: "from 1 to 0.001"); t >= T - 1 gives `end`."""
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step!r}")
    fraction = 1.0 if num_steps == 1 else min(step / (num_steps - 1), 1.0)
    return float(start * (end / start) ** fraction)


def annealing_span(stage, stage_steps, schedule="stages_2_3"):
    """The annealing that gives the temperature of training stage `stage` (Sec. 4.2: "tau is
    exponentially annealed from 1 to 0.001 on stages 2 of 3"): (offset, total, end) such that
    tau at step t of the stage is `annealed_tau(offset + t, total, end=end)`. Schedules:
    * "stages_2_3" (default, brief D-tau): one annealing over the steps of stages 2 and 3;
    * "stage2": annealed over stage 2, held at 0.001 in stage 3;
    * "per_stage": restarted from 1 in each of stages 2 and 3;
    * "constant": tau = 1 (the authors' released code never anneals).
    Stage 1 trains the classification module only: tau = 1.

    Args:
        stage: 1, 2 or 3.
        stage_steps: {2: T_2, 3: T_3}, the number of steps of stages 2 and 3.
        schedule: one of TAU_SCHEDULES.
    """
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"schedule must be one of {TAU_SCHEDULES}, got {schedule!r}")
    if stage not in (1, 2, 3):
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
    if stage == 1 or schedule == "constant":
        return 0, 1, TAU_START
    if schedule == "per_stage":
        return 0, stage_steps[stage], TAU_END
    if schedule == "stage2":
        return (0 if stage == 2 else stage_steps[2]), stage_steps[2], TAU_END
    return (0 if stage == 2 else stage_steps[2]), stage_steps[2] + stage_steps[3], TAU_END


def temperature(stage, step, stage_steps, schedule="stages_2_3"):
    """The Gumbel temperature at `step` (0-based, counted within the stage) of a training stage
    (`annealing_span`)."""
    offset, total, end = annealing_span(stage, stage_steps, schedule)
    return annealed_tau(offset + step, total, end=end)


def annealed_tau_in_graph(step, offset, total, end=TAU_END, start=TAU_START):
    """`annealed_tau(offset + step, total, start, end)` for a step tensor (a stage's
    optimizer iterations), float32: the in-graph form the training hooks assign."""
    if int(total) != total or total < 1:
        raise ValueError(f"total must be a positive integer, got {total!r}")
    t = tf.cast(step, tf.float64) + float(offset)
    fraction = tf.constant(1.0, tf.float64) if total == 1 else tf.minimum(t / (total - 1), 1.0)
    return tf.cast(start * tf.pow(tf.constant(end / start, tf.float64), fraction), tf.float32)
