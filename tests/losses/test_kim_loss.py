"""Tests of chestxray_tf/losses/kim.py against loop references of Eqs. 7-10."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.kim import (alignment_loss, batch_weighted_bce, euclidean_loss,
                                     make_alignment_loss, perceptual_loss)
from chestxray_tf.models.kim import build_aligner, grid_smooth
from chestxray_tf.models.resnet import RESNET18_TINY


def reference_eq10(labels, probs, per_class=False):
    """Eq. 10 summed over the batch, with the counts |P|, |N| of the batch (or of a column)."""
    batch, classes = labels.shape
    total = 0.0
    for c in range(classes):
        cells = [(b, c) for b in range(batch)] if per_class else \
            [(b, k) for b in range(batch) for k in range(classes)]
        n_pos = sum(labels[b, k] == 1 for b, k in cells)
        n_neg = len(cells) - n_pos
        w_p = (n_pos + n_neg) / n_pos if n_pos else 0.0  # unused when there is no positive
        w_n = (n_pos + n_neg) / n_neg if n_neg else 0.0
        for b in range(batch):
            p = min(max(probs[b, c], 1e-7), 1 - 1e-7)
            total += w_p * -math.log(p) if labels[b, c] == 1 else w_n * -math.log(1 - p)
    return total


def test_hand_case():
    labels = np.array([[1, 0], [0, 0]])  # |P| = 1, |N| = 3: w_P = 4, w_N = 4/3
    probs = np.array([[0.5, 0.25], [0.75, 0.5]])
    expected = [4 * -math.log(0.5) + 4 / 3 * -math.log(0.75),
                4 / 3 * (-math.log(0.25) - math.log(0.5))]
    np.testing.assert_allclose(batch_weighted_bce(labels, probs), expected, rtol=1e-6)


@pytest.mark.parametrize("scope", ["batch", "per_class"])
@pytest.mark.parametrize("case", ["random", "all_positive", "all_negative", "mixed_columns"])
def test_mean_is_eq10_over_the_batch_size(scope, case):
    rng = np.random.default_rng([len(scope), len(case)])
    probs = rng.uniform(0.01, 0.99, (6, 4))
    probs[0, 0] = 0.0  # clipped
    labels = {"random": (rng.uniform(size=(6, 4)) < 0.3).astype(int),
              "all_positive": np.ones((6, 4), int), "all_negative": np.zeros((6, 4), int),
              "mixed_columns": np.array([[1, 0, 1, 0]] * 6)}[case]
    got = np.asarray(batch_weighted_bce(labels, probs, scope=scope))
    assert got.shape == (6,) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got.mean(), reference_eq10(labels, probs, scope == "per_class")
                               / 6, rtol=1e-5)


def test_weights_are_constants_for_the_gradient():
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    probs = tf.Variable([[0.3, 0.6, 0.2], [0.4, 0.7, 0.9]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(batch_weighted_bce(labels, probs))
    grad = tape.gradient(loss, probs).numpy()
    w_p, w_n = 6 / 2, 6 / 4
    p = probs.numpy()
    expected = np.where(labels == 1, -w_p / p, w_n / (1 - p))
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


def reference_losses(anchor, smoothed, anchor_features, features):
    """Eqs. 7-8 literally and in the mean-squared form, with loops over pixels."""
    batch, size, _, channels = smoothed.shape
    out = {k: np.zeros(batch) for k in ("e_mse", "e_lit", "p_mse", "p_lit")}
    for b in range(batch):
        for i in range(size):
            for j in range(size):
                sq = sum((anchor[i, j, c] - smoothed[b, i, j, c]) ** 2 for c in range(channels))
                out["e_lit"][b] += math.sqrt(sq)
                out["e_mse"][b] += sq / (size * size * channels)
        for ref, feat in zip(anchor_features, features):
            sq = float(np.sum((ref - feat[b]) ** 2))
            out["p_mse"][b] += sq / ref.size
            out["p_lit"][b] += math.sqrt(sq) / ref.size
    return out


def test_alignment_losses_against_loops():
    rng = np.random.default_rng(3)
    anchor = rng.normal(size=(5, 5, 3))
    smoothed = rng.normal(size=(2, 5, 5, 3))
    smoothed[1, 2, 2] = anchor[2, 2]  # a zero per-pixel norm (no NaN)
    anchor_features = [rng.normal(size=(4, 4, 2)), rng.normal(size=(2, 2, 6))]
    features = [rng.normal(size=(2, 4, 4, 2)), rng.normal(size=(2, 2, 2, 6))]
    ref = reference_losses(anchor, smoothed, anchor_features, features)
    for form, suffix in (("mse", "mse"), ("literal", "lit")):
        total, terms = alignment_loss(anchor[None], smoothed, [f[None] for f in anchor_features],
                                      features, form=form)
        np.testing.assert_allclose(terms["align_e"], ref[f"e_{suffix}"], rtol=1e-5)
        np.testing.assert_allclose(terms["align_p"], ref[f"p_{suffix}"], rtol=1e-5)
        np.testing.assert_allclose(total, ref[f"e_{suffix}"] + ref[f"p_{suffix}"], rtol=1e-5)
    np.testing.assert_allclose(euclidean_loss(anchor, smoothed), ref["e_mse"], rtol=1e-5)


def test_literal_norms_have_finite_gradients_at_zero():
    anchor = np.zeros((1, 3, 3, 2), np.float32)
    smoothed = tf.Variable(np.zeros((1, 3, 3, 2), np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(euclidean_loss(anchor, smoothed, "literal")
                             + perceptual_loss([anchor], [smoothed], "literal"))
    assert float(loss) == 0.0
    assert np.all(np.isfinite(tape.gradient(loss, smoothed).numpy()))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="wbce_scope must be one of .* got 'image'"):
        batch_weighted_bce(np.ones((1, 2)), np.ones((1, 2)) / 2, scope="image")
    with pytest.raises(ValueError, match="loss_form must be one of .* got 'l1'"):
        euclidean_loss(np.zeros((2, 2, 1)), np.zeros((1, 2, 2, 1)), form="l1")
    with pytest.raises(ValueError, match="as many anchor features as features, got 1 and 2"):
        perceptual_loss([np.zeros((1, 2, 2, 1))], [np.zeros((1, 2, 2, 1))] * 2)


def tiny_perceptual_net():
    image = keras.Input((32, 32, 3))
    first = keras.layers.Conv2D(4, 3, strides=2, name="f1")(image)
    second = keras.layers.BatchNormalization(name="f2")(keras.layers.Conv2D(6, 3, name="c2")(first))
    model = keras.Model(image, [first, second])
    model.trainable = False
    return model


def test_make_alignment_loss_uses_anchor_features_and_trains_the_aligner_only():
    rng = np.random.default_rng(8)
    net = tiny_perceptual_net()
    frozen = [w.numpy().copy() for w in net.weights]
    anchor = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
    loss_fn = make_alignment_loss(net, anchor, pool_size=2)
    aligner = build_aligner(32, backbone=RESNET18_TINY)
    images = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss, terms = loss_fn(aligner(images, training=True)["aligned"])
        mean_loss = tf.reduce_mean(loss)
    smoothed = np.asarray(grid_smooth(images, 2))  # the aligner is the identity at init
    expected, expected_terms = alignment_loss(anchor[None], smoothed, net(anchor[None]),
                                              net(smoothed), form="mse")
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(terms["align_e"], np.mean((smoothed - anchor) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_allclose(terms["align_p"], expected_terms["align_p"], rtol=1e-5)
    grad = tape.gradient(mean_loss, aligner.get_layer("aligner_regressor").kernel)
    assert np.abs(grad.numpy()).max() > 0  # the loss reaches the five parameters
    for before, after in zip(frozen, net.weights):
        np.testing.assert_array_equal(before, after.numpy())
