"""Tests of chestxray_tf/losses/weighted_bce.py against Sedai et al. 2018, Sec. 2.2.

The reference is the paper's L(W) with explicit sums over the positive and the negative samples
of each class, per example, in float64: -beta_c log p for y = 1, -(1 - beta_c) log(1 - p) for
y = 0, with log p computed from the logit in float64 so that extreme logits stay exact.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.weighted_bce import (batch_negative_fraction, class_balanced_bce,
                                              negative_fraction)


def log_sigmoid(z):
    """log(1 / (1 + exp(-z))) in float64 without overflow."""
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def reference_loss(labels, logits, beta):
    batch, classes = labels.shape
    loss = np.zeros(batch)
    for n in range(batch):
        for c in range(classes):
            z = float(logits[n, c])
            if labels[n, c] == 1:
                loss[n] += -beta[c] * log_sigmoid(z)            # log p
            else:
                loss[n] += -(1.0 - beta[c]) * log_sigmoid(-z)   # log(1 - p)
    return loss


def reference_negative_fraction(labels):
    """beta_c = |y_c = 0| / |y_c| by counting."""
    batch, classes = labels.shape
    beta = np.zeros(classes)
    for c in range(classes):
        negatives = sum(1 for n in range(batch) if labels[n, c] == 0)
        beta[c] = negatives / batch
    return beta


def test_hand_computed_case():
    labels = np.array([[1, 0], [0, 0]], np.float32)
    logits = np.array([[0.0, 2.0], [-1.0, 0.0]], np.float32)
    beta = np.array([0.5, 0.9], np.float32)
    # Row 0: 0.5 * -log sigmoid(0) + 0.1 * -log(1 - sigmoid(2)) = 0.5 ln 2 + 0.1 ln(1 + e^2)
    #      = 0.346574 + 0.212693.
    # Row 1: 0.5 * -log(1 - sigmoid(-1)) + 0.1 * -log(1 - sigmoid(0))
    #      = 0.5 ln(1 + e^-1) + 0.1 ln 2 = 0.156631 + 0.069315.
    expected = [0.5 * math.log(2) + 0.1 * math.log(1 + math.e ** 2),
                0.5 * math.log(1 + math.exp(-1)) + 0.1 * math.log(2)]
    np.testing.assert_allclose(class_balanced_bce(labels, logits, beta), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, [0.559266, 0.225946], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_batches_match_reference(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((16, 14)) < rng.uniform(0.05, 0.6, 14)).astype(np.float32)
    logits = rng.normal(0.0, 3.0, (16, 14)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, 14).astype(np.float32)
    loss = class_balanced_bce(labels, logits, beta)
    assert loss.dtype == "float32" and tuple(loss.shape) == (16,)
    np.testing.assert_allclose(loss, reference_loss(labels, logits.astype(np.float64),
                                                    beta.astype(np.float64)), rtol=1e-5)


def test_all_negative_class_costs_nothing_with_its_own_beta():
    # A class with no positive in the selection has beta = 1: its negatives weigh 0.
    labels = np.array([[1, 0], [0, 0], [1, 0]], np.float32)
    beta = negative_fraction(labels.sum(axis=0), len(labels))
    np.testing.assert_allclose(beta, [1 / 3, 1.0])
    logits = np.array([[0.3, 5.0], [-2.0, -7.0], [1.0, 0.0]], np.float32)
    loss = class_balanced_bce(labels, logits, beta)
    only_class_0 = class_balanced_bce(labels[:, :1], logits[:, :1], beta[:1])
    np.testing.assert_allclose(loss, only_class_0, rtol=1e-6)
    np.testing.assert_allclose(loss, reference_loss(labels, logits, beta), rtol=1e-5)


@pytest.mark.parametrize("magnitude", [50.0, 1e4])
def test_extreme_logits_are_finite_with_finite_gradients(magnitude):
    labels = np.array([[1, 0, 1, 0]], np.float32)
    logits = tf.constant([[magnitude, magnitude, -magnitude, -magnitude]], tf.float32)
    beta = np.array([0.8, 0.8, 0.8, 0.8], np.float32)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = class_balanced_bce(labels, logits, beta)
    gradient = tape.gradient(loss, logits).numpy()
    # Right answers cost ~0; wrong ones cost weight * |z| (-log sigmoid(-z) ~ z).
    np.testing.assert_allclose(loss, [0.2 * magnitude + 0.8 * magnitude], rtol=1e-5)
    np.testing.assert_allclose(loss, reference_loss(labels, logits.numpy(), beta), rtol=1e-5)
    # d/dz of -beta log sigmoid(z) = -beta (1 - sigmoid(z)); of -(1-beta) log(1 - sigmoid(z))
    # = (1 - beta) sigmoid(z).
    np.testing.assert_allclose(gradient, [[0.0, 0.2, -0.8, 0.0]], atol=1e-6)


def test_negative_fraction_counts_the_negatives():
    rng = np.random.default_rng(3)
    labels = (rng.random((40, 6)) < 0.3).astype(np.int64)
    labels[:, 5] = 1  # an all-positive class: beta = 0
    np.testing.assert_allclose(negative_fraction(labels.sum(axis=0), 40),
                               reference_negative_fraction(labels), rtol=1e-12)
    np.testing.assert_allclose(batch_negative_fraction(labels),
                               reference_negative_fraction(labels), rtol=1e-6)
    np.testing.assert_allclose(negative_fraction([1, 2], [4, 8]), [0.75, 0.75])


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="class 1 has no images"):
        negative_fraction([0, 0, 1], [3, 0, 2])
    with pytest.raises(ValueError, match="class 0 has no images"):
        negative_fraction([0, 0], 0)
    with pytest.raises(ValueError, match=r"positive_counts\[1\] = 5 exceeds num_images 4"):
        negative_fraction([1, 5], 4)
    with pytest.raises(ValueError, match=r"positive_counts\[0\] = -1.0 is not a count"):
        negative_fraction([-1, 2], 4)
    with pytest.raises(ValueError, match="must be a \\[K\\] vector"):
        negative_fraction([[1, 2]], 4)
    with pytest.raises(ValueError, match=r"negative_fraction must have shape \[3\]"):
        class_balanced_bce(np.zeros((2, 3)), np.zeros((2, 3)), np.full(4, 0.5))
