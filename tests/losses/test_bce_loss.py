"""Tests of chestxray_tf/losses/bce.py against a NumPy loop reference."""

import math

import numpy as np

from chestxray_tf.losses.bce import bce_loss

EPSILON = 1e-7
# Keras clips in float32, where 1 - 1e-7 rounds to 1 - 2 ** -23 (and log of it to ~-1.19e-7).
UPPER = float(np.float32(1.0 - EPSILON))


def reference_bce(labels, probs):
    """sum_k -(y log p + (1 - y) log(1 - p)) per image, p clipped to [EPSILON, UPPER]."""
    out = []
    for y_row, p_row in zip(labels, probs):
        total = 0.0
        for y, p in zip(y_row, p_row):
            p = min(max(p, EPSILON), UPPER)
            total -= y * math.log(p) + (1.0 - y) * math.log(1.0 - p)
        out.append(total)
    return np.array(out)


def test_hand_checked_case():
    labels = np.array([[1.0, 0.0], [0.0, 0.0]])
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    # Image 0: -log 0.5 - log 0.5 = 2 log 2; image 1: -log 0.1 - log 0.9.
    want = [2 * math.log(2), -math.log(0.1) - math.log(0.9)]
    np.testing.assert_allclose(bce_loss(labels, probs).numpy(), want, rtol=1e-5)


def test_random_against_loop_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (6, 14)).astype("float32")
    probs = rng.uniform(0, 1, (6, 14)).astype("float32")
    got = bce_loss(labels, probs).numpy()
    assert got.shape == (6,)
    np.testing.assert_allclose(got, reference_bce(labels, probs.astype(np.float64)), rtol=1e-4)


def test_saturated_probabilities_are_finite_and_clipped():
    labels = np.array([[1.0, 0.0, 1.0, 0.0]])
    probs = np.array([[0.0, 1.0, 1.0, 0.0]], dtype="float32")
    got = bce_loss(labels, probs).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, reference_bce(labels, probs), rtol=1e-3)
