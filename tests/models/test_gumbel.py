"""Tests of chestxray_tf/models/gumbel.py: the straight-through Gumbel-softmax selection
(Hermoza et al. 2020, Sec. 3.2) and the temperature schedules (Sec. 4.2, brief D-tau)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from chestxray_tf.models import gumbel


def reference_soft_gradient(logits, weights, tau):
    """d/dl_m sum_n w_n softmax(l / tau)_n = (1/tau) s_m (w_m - sum_n s_n w_n), looped over the
    proposals of each (image, class)."""
    batch, count, classes = logits.shape
    grad = np.zeros_like(logits, dtype=np.float64)
    for b in range(batch):
        for k in range(classes):
            z = [logits[b, n, k] / tau for n in range(count)]
            top = max(z)
            e = [math.exp(v - top) for v in z]
            s = [v / sum(e) for v in e]
            mean_w = sum(s[n] * weights[b, n, k] for n in range(count))
            for m in range(count):
                grad[b, m, k] = s[m] * (weights[b, m, k] - mean_w) / tau
    return grad


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_straight_through_forward_one_hot_backward_softmax(tau):
    rng = np.random.default_rng(int(tau * 10))
    logits = tf.constant(rng.normal(size=(3, 7, 2)), tf.float32)
    weights = rng.normal(size=(3, 7, 2))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        y = gumbel.straight_through_softmax(logits, tau, axis=1)
        loss = tf.reduce_sum(y * weights)
    y = y.numpy()
    assert set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(y.sum(axis=1), np.ones((3, 2)))
    np.testing.assert_array_equal(y.argmax(axis=1), logits.numpy().argmax(axis=1))
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(),
                               reference_soft_gradient(logits.numpy(), weights, tau), atol=1e-5)


def test_pick_training_uses_noise_and_temperature_variable():
    layer = gumbel.GumbelPick(seed=3)
    confidences = tf.constant(np.random.default_rng(0).normal(size=(64, 5, 3)), tf.float32)
    y = layer(confidences, training=True).numpy()
    np.testing.assert_array_equal(y.sum(axis=1), np.ones((64, 3)))
    assert set(np.unique(y)) == {0.0, 1.0}
    # With noise the pick is not always the argmax; in inference it is.
    assert np.any(y.argmax(axis=1) != confidences.numpy().argmax(axis=1))
    inference = layer(confidences).numpy()
    np.testing.assert_array_equal(inference, tf.one_hot(tf.argmax(confidences, 1), 5, axis=1))
    # The backward pass scales with 1 / tau read from the weight.
    weights = np.random.default_rng(1).normal(size=(64, 5, 3))
    grads = []
    for tau in (1.0, 0.25):
        layer.tau.assign(tau)
        with tf.GradientTape() as tape:
            tape.watch(confidences)
            loss = tf.reduce_sum(layer(confidences, training=True) * weights)
        grads.append(tape.gradient(loss, confidences).numpy())
    assert layer.trainable_weights == [] and float(layer.tau.numpy()) == 0.25
    assert np.abs(grads[1]).max() > 0 and not np.allclose(grads[0], grads[1])


def test_gumbel_max_frequencies_follow_softmax_of_confidences():
    confidences = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    draws = 20000
    layer = gumbel.GumbelPick(tau=0.01, seed=11)
    picks = layer(np.tile(confidences[None, :, None], (draws, 1, 1)), training=True).numpy()
    counts = picks[:, :, 0].sum(axis=0)
    expected = draws * np.array([0.1, 0.2, 0.3, 0.4])
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.999, df=3), (counts, expected)


def test_select_picks_the_boxes():
    boxes = np.random.default_rng(2).uniform(0, 100, size=(2, 4, 3, 4)).astype(np.float32)
    choice = np.array([[0, 3, 1], [2, 2, 0]])
    weights = tf.one_hot(choice, 4, axis=1)
    picked = gumbel.select(weights, boxes).numpy()
    for b in range(2):
        for k in range(3):
            np.testing.assert_array_equal(picked[b, k], boxes[b, choice[b, k], k])


def test_round_trip_keeps_tau(tmp_path):
    inputs = keras.Input((6, 2))
    model = keras.Model(inputs, gumbel.GumbelPick(tau=0.5, seed=1, name="pick")(inputs))
    model.get_layer("pick").tau.assign(0.02)
    model.save(tmp_path / "pick.keras")
    loaded = keras.models.load_model(tmp_path / "pick.keras")
    assert float(loaded.get_layer("pick").tau.numpy()) == pytest.approx(0.02)
    x = np.random.default_rng(3).normal(size=(4, 6, 2)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_annealed_tau_values():
    assert gumbel.annealed_tau(0, 11) == 1.0
    assert gumbel.annealed_tau(10, 11) == pytest.approx(1e-3)
    assert gumbel.annealed_tau(5, 11) == pytest.approx(math.sqrt(1e-3))
    assert gumbel.annealed_tau(50, 11) == pytest.approx(1e-3)
    values = [gumbel.annealed_tau(t, 11) for t in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))
    ratios = np.array(values[1:]) / np.array(values[:-1])
    np.testing.assert_allclose(ratios, 1e-3 ** 0.1)  # exponential: a constant ratio


def test_temperature_schedules():
    steps = {2: 4, 3: 6}
    t = gumbel.temperature
    assert t(1, 7, steps) == 1.0
    # stages_2_3: one annealing over 10 steps.
    assert t(2, 0, steps) == 1.0 and t(3, 5, steps) == pytest.approx(1e-3)
    assert t(3, 0, steps) == pytest.approx(gumbel.annealed_tau(4, 10))
    assert t(2, 3, steps) > t(3, 0, steps)
    assert t(2, 3, steps, "stage2") == pytest.approx(1e-3) and t(3, 0, steps, "stage2") == 1e-3
    assert t(3, 0, steps, "per_stage") == 1.0 and t(3, 5, steps, "per_stage") == pytest.approx(1e-3)
    assert t(3, 5, steps, "constant") == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule must be one of .* got 'linear'"):
        gumbel.temperature(2, 0, {2: 1, 3: 1}, "linear")
    with pytest.raises(ValueError, match="stage must be 1, 2 or 3, got 4"):
        gumbel.temperature(4, 0, {2: 1, 3: 1})
    with pytest.raises(ValueError, match="num_steps must be a positive integer, got 0"):
        gumbel.annealed_tau(0, 0)
    with pytest.raises(ValueError, match="tau must be positive, got 0"):
        gumbel.GumbelPick(tau=0)
