"""Tests of chestxray_tf/losses/li2018.py against Li et al. 2018, Eq. 1, 2 and 4.

The reference below is written from the paper with explicit loops and direct products in
float64 (fine for the small grids used here); the implementation works in log space in float32.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.li2018 import EPSILON, image_probs, li2018_loss


def smooth(v, smoothing):
    """The factor map of Sec. 3.4: [0, 1] -> [smoothing, 1]; identity without smoothing."""
    return v if smoothing is None else smoothing + (1.0 - smoothing) * v


def reference_image_prob(probs, b, k, smoothing):
    """Eq. 2: p(y_k | x_b) = 1 - prod_j (1 - p_jk)~."""
    grid = probs.shape[1]
    product = 1.0
    for i in range(grid):
        for j in range(grid):
            product *= smooth(1.0 - probs[b, i, j, k], smoothing)
    return 1.0 - product


def reference_loss(labels, box_mask, has_box, probs, lambda_bbox, smoothing):
    """Eq. 4 summed over k, per example: returns (loss, box_term, image_term), each [B]."""
    batch, grid, _, classes = probs.shape
    box_term = np.zeros(batch)
    image_term = np.zeros(batch)
    for b in range(batch):
        for k in range(classes):
            if has_box[b, k]:
                # Eq. 1: patches in the box are positive, the others negative.
                product = 1.0
                for i in range(grid):
                    for j in range(grid):
                        p = probs[b, i, j, k]
                        product *= smooth(p if box_mask[b, i, j, k] else 1.0 - p, smoothing)
                box_term[b] += -lambda_bbox * math.log(product)
            else:
                score = reference_image_prob(probs, b, k, smoothing)
                y = labels[b, k]
                image_term[b] += -(y * math.log(score) + (1 - y) * math.log(1.0 - score))
    return box_term + image_term, box_term, image_term


def random_batch(rng, batch, grid, classes, low=0.0, high=1.0):
    """Random labels, boxes (only on positive labels), flags and float32 probabilities."""
    labels = (rng.random((batch, classes)) < 0.5).astype(np.float32)
    has_box = labels * (rng.random((batch, classes)) < 0.5)
    box_mask = (rng.random((batch, grid, grid, classes)) < 0.3).astype(np.float32)
    probs = rng.uniform(low, high, (batch, grid, grid, classes)).astype(np.float32)
    return labels, box_mask, has_box.astype(np.float32), probs


def test_hand_computed_case():
    # P = 2, one image, K = 3 classes sharing the patch probabilities [[0.9, 0.2], [0.1, 0.0]].
    patch = np.array([[0.9, 0.2], [0.1, 0.0]], np.float32)
    probs = np.repeat(patch[None, :, :, None], 3, axis=-1)
    labels = np.array([[1, 0, 1]], np.float32)
    has_box = np.array([[0, 0, 1]], np.float32)
    box_mask = np.zeros((1, 2, 2, 3), np.float32)
    box_mask[0, 0, 0, 2] = 1.0
    loss, terms = li2018_loss(labels, box_mask, has_box, probs, return_terms=True)
    # Smoothed (1 - p)~ = 0.98 + 0.02 (1 - p): 0.982, 0.996, 0.998, 1.0; product 0.976115856.
    # Class 0 (no box, y = 1): -ln(1 - 0.976115856) = -ln(0.023884144) = 3.73454.
    # Class 1 (no box, y = 0): -ln(0.976115856) = 0.024174.
    # Class 2 (box on patch (0, 0)): p~ = 0.98 + 0.02 * 0.9 = 0.998 there, (1 - p)~ elsewhere:
    # -5 ln(0.998 * 0.996 * 0.998 * 1.0) = -5 ln(0.992019984) = 0.040060.
    image_term = -math.log(1 - 0.982 * 0.996 * 0.998) - math.log(0.982 * 0.996 * 0.998)
    box_term = -5 * math.log(0.998 * 0.996 * 0.998)
    np.testing.assert_allclose(terms["image_term"], [image_term], rtol=1e-5)
    np.testing.assert_allclose(terms["box_term"], [box_term], rtol=1e-5)
    np.testing.assert_allclose(loss, [image_term + box_term], rtol=1e-5)
    np.testing.assert_allclose(image_term + box_term, 3.79877, rtol=1e-5)


def test_hand_computed_case_without_smoothing():
    # P = 2, K = 2, patch probabilities [[0.9, 0.2], [0.1, 0.0]].
    patch = np.array([[0.9, 0.2], [0.1, 0.0]], np.float32)
    probs = np.repeat(patch[None, :, :, None], 2, axis=-1)
    labels = np.array([[1, 0]], np.float32)
    has_box = np.array([[1, 0]], np.float32)
    box_mask = np.zeros((1, 2, 2, 2), np.float32)
    box_mask[0, 0, 0, 0] = 1.0
    loss, terms = li2018_loss(labels, box_mask, has_box, probs, smoothing=None,
                              lambda_bbox=2.0, return_terms=True)
    # Class 0, box on (0, 0): -2 ln(0.9 * 0.8 * 0.9 * 1.0) = -2 ln(0.648) = 0.86773.
    # Class 1, no box, y = 0: -ln(prod (1 - p)) = -ln(0.1 * 0.8 * 0.9 * 1.0) = -ln(0.072) = 2.63109.
    np.testing.assert_allclose(terms["box_term"], [-2 * math.log(0.648)], rtol=1e-5)
    np.testing.assert_allclose(terms["image_term"], [-math.log(0.072)], rtol=1e-5)
    np.testing.assert_allclose(loss, [0.867729 + 2.631089], rtol=1e-5)


@pytest.mark.parametrize("smoothing, lambda_bbox, low, high", [
    (0.98, 5.0, 0.0, 1.0),
    (0.9, 1.5, 0.0, 1.0),
    (None, 5.0, 0.05, 0.95),
])
@pytest.mark.parametrize("grid", [1, 3, 4])
def test_random_batches_match_reference(smoothing, lambda_bbox, low, high, grid):
    rng = np.random.default_rng(grid)
    labels, box_mask, has_box, probs = random_batch(rng, 6, grid, 5, low, high)
    assert 0 < has_box.sum() < has_box.size  # mixed annotated / unannotated classes
    loss, terms = li2018_loss(labels, box_mask, has_box, probs, lambda_bbox=lambda_bbox,
                              smoothing=smoothing, return_terms=True)
    expected, box_term, image_term = reference_loss(
        labels, box_mask, has_box, probs.astype(np.float64), lambda_bbox, smoothing)
    assert loss.dtype == "float32" and tuple(loss.shape) == (6,)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["box_term"], box_term, rtol=1e-5)
    np.testing.assert_allclose(terms["image_term"], image_term, rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.98, None])
def test_image_probs_match_reference(smoothing):
    rng = np.random.default_rng(7)
    probs = rng.uniform(0.0, 0.2, (3, 4, 4, 2)).astype(np.float32)
    expected = np.array([[reference_image_prob(probs.astype(np.float64), b, k, smoothing)
                          for k in range(2)] for b in range(3)])
    np.testing.assert_allclose(image_probs(probs, smoothing), expected, rtol=1e-5)


def test_without_smoothing_saturated_probs_give_finite_loss_and_gradients():
    # P = 20 grid with patch probabilities exactly 0 and 1, every label/flag combination.
    rng = np.random.default_rng(0)
    grid, classes = 20, 4
    probs = (rng.random((3, grid, grid, classes)) < 0.5).astype(np.float32)
    probs[0, :, :, 0] = 0.0  # all patches 0 on a positive unannotated class: p(y | x) = 0
    probs[1, :, :, 1] = 1.0  # all patches 1 on a negative class: p(y | x) = 1
    labels = np.array([[1, 1, 0, 1], [0, 0, 1, 1], [1, 0, 1, 0]], np.float32)
    has_box = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], np.float32)
    box_mask = (rng.random((3, grid, grid, classes)) < 0.2).astype(np.float32)
    variable = tf.Variable(probs)
    with tf.GradientTape() as tape:
        loss = li2018_loss(labels, box_mask, has_box, variable, smoothing=None)
        total = tf.reduce_sum(loss)
    gradient = tape.gradient(total, variable)
    assert np.all(np.isfinite(loss.numpy())) and total.numpy() > 0
    assert np.all(np.isfinite(gradient.numpy()))


def test_without_smoothing_gradients_finite_through_logits():
    # The model's probabilities come from a sigmoid; saturated logits must not give NaN.
    logits = tf.Variable(np.tile(np.array([-200.0, 200.0, 0.0], np.float32), 20 * 20 * 2)
                         .reshape(2, 20, 20, 3))
    labels = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    has_box = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    box_mask = np.ones((2, 20, 20, 3), np.float32)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(li2018_loss(labels, box_mask, has_box, tf.sigmoid(logits),
                                          smoothing=None))
    assert np.isfinite(total.numpy())
    assert np.all(np.isfinite(tape.gradient(total, logits).numpy()))


def test_smoothed_all_zero_patches_on_positive_class_cost_minus_log_epsilon():
    # With smoothing, (1 - 0)~ = 1 for every patch, so p(y | x) = 0 exactly; the loss clamps it.
    probs = np.zeros((1, 3, 3, 1), np.float32)
    loss = li2018_loss(np.ones((1, 1)), np.zeros((1, 3, 3, 1)), np.zeros((1, 1)), probs)
    np.testing.assert_allclose(loss, [-math.log(EPSILON)], rtol=1e-5)


def test_box_term_ignores_masks_of_unannotated_classes():
    rng = np.random.default_rng(3)
    labels, box_mask, _, probs = random_batch(rng, 2, 3, 2)
    has_box = np.zeros((2, 2), np.float32)
    loss = li2018_loss(labels, box_mask, has_box, probs)
    np.testing.assert_allclose(loss, li2018_loss(labels, 1.0 - box_mask, has_box, probs))


@pytest.mark.parametrize("smoothing", [0.0, 1.0, -0.5])
def test_invalid_smoothing_is_rejected(smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        image_probs(np.zeros((1, 2, 2, 1), np.float32), smoothing)
