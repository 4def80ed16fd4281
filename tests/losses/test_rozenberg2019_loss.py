"""Tests of chestxray_tf/losses/rozenberg2019.py against Rozenberg et al. 2019, Eq. 5, 8, 9, 11
and 12.

The reference is written from the printed equations with explicit loops over images, classes
and patches in float64: |b|⁻¹ ReLU(τ|b| - 1ᵀ(I[b] ⊙ z)) literally (not the ratio form the
implementation uses), with the empty-set rule of the module docstring spelled out.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.rozenberg2019 import label_counts, pooled_gamma, rozenberg2019_loss


def relu(v):
    return v if v > 0 else 0.0


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def reference_loss(labels, box_mask, has_box, z, thresholds, lambda_ann, gamma, form):
    """Eq. 12 (relu) or Eq. 3 with Eq. 5 and 8 (sigmoid) per example: (loss, box, image)."""
    batch, grid, _, classes = z.shape
    gamma = np.broadcast_to(np.asarray(gamma, np.float64), (classes,))
    box_term, image_term = np.zeros(batch), np.zeros(batch)
    for b in range(batch):
        t = thresholds if thresholds.ndim == 2 else thresholds[b]
        for k in range(classes):
            tau, rho, tau_hat, rho_hat = t[:, k]
            size_in = size_out = 0
            sum_in = sum_out = 0.0
            for i in range(grid):
                for j in range(grid):
                    if box_mask[b, i, j, k]:
                        size_in += 1
                        sum_in += z[b, i, j, k]
                    else:
                        size_out += 1
                        sum_out += z[b, i, j, k]
            total = sum_in + sum_out
            y = labels[b, k]
            if form == "relu":
                box = 0.0
                if size_in:
                    box += relu(tau * size_in - sum_in) / size_in
                if size_out:
                    box += relu(sum_out - rho * size_out) / size_out
                image = y * relu(tau_hat - total) + gamma[k] * (1 - y) * relu(total - rho_hat)
            else:
                box = -sigmoid(sum_in - tau * size_in) * sigmoid(rho * size_out - sum_out)
                image = -y * sigmoid(total - tau_hat) - (1 - y) * sigmoid(rho_hat - total)
            a = has_box[b, k] if has_box.ndim == 2 else has_box[b] * (size_in > 0)
            box_term[b] += lambda_ann * a * box
            image_term[b] += (1 - a) * image
    return box_term + image_term, box_term, image_term


def random_case(rng, batch=5, grid=4, classes=3, per_image_thresholds=False):
    labels = (rng.random((batch, classes)) < 0.5).astype(np.float32)
    has_box = (labels * (rng.random((batch, classes)) < 0.6)).astype(np.float32)
    box_mask = (rng.random((batch, grid, grid, classes)) < 0.4).astype(np.float32)
    box_mask[..., 0][has_box[:, 0] > 0] = 1.0  # some full-grid boxes (|b̄| = 0)
    z = rng.random((batch, grid, grid, classes)).astype(np.float32)
    shape = (batch, 4, classes) if per_image_thresholds else (4, classes)
    thresholds = rng.random(shape).astype(np.float32)
    thresholds[..., 2:, :] *= grid * grid  # tau_hat, rho_hat are patch counts
    return labels, box_mask, has_box, z, thresholds


def run(labels, box_mask, has_box, z, thresholds, **kwargs):
    loss, terms = rozenberg2019_loss(labels, box_mask, has_box, z, thresholds,
                                     return_terms=True, **kwargs)
    return np.asarray(loss), {key: np.asarray(value) for key, value in terms.items()}


@pytest.mark.parametrize("form", ["relu", "sigmoid"])
@pytest.mark.parametrize("per_image_thresholds", [False, True])
@pytest.mark.parametrize("gamma", [0.3, np.array([0.1, 1.0, 2.5], np.float32)])
def test_random_batches_match_reference(form, per_image_thresholds, gamma):
    rng = np.random.default_rng(3)
    case = random_case(rng, per_image_thresholds=per_image_thresholds)
    assert 0 < case[2].sum() < case[2].size  # mixed annotated / unannotated classes
    loss, terms = run(*case, lambda_ann=7.0, gamma=gamma, form=form)
    expected, box, image = reference_loss(*[c.astype(np.float64) for c in case], 7.0, gamma,
                                          form)
    assert loss.dtype == np.float32 and loss.shape == (5,)
    assert np.abs(box).max() > 0 and np.abs(image).max() > 0
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["box_term"], box, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms["image_term"], image, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["relu", "sigmoid"])
def test_per_image_flag_uses_non_empty_box_masks(form):
    rng = np.random.default_rng(4)
    labels, box_mask, _, z, thresholds = random_case(rng)
    box_mask[1, ..., 2] = 0.0  # annotated image without a box of class 2: image term
    has_box = np.array([1, 1, 0, 1, 0], np.float32)
    loss, _ = run(labels, box_mask, has_box, z, thresholds, gamma=0.5, form=form)
    expected, _, _ = reference_loss(labels, box_mask, has_box, z.astype(np.float64),
                                    thresholds.astype(np.float64), 70.0, 0.5, form)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def one_class(mask, z, label=1.0, annotated=1.0, tau=0.5, rho=0.1, tau_hat=3.0, rho_hat=1.0):
    """A single image and class on a small grid: the inputs of the loss."""
    return (np.array([[label]], np.float32), np.asarray(mask, np.float32)[None, :, :, None],
            np.array([[annotated]], np.float32), np.asarray(z, np.float32)[None, :, :, None],
            np.array([[tau], [rho], [tau_hat], [rho_hat]], np.float32))


def test_hand_case_relu():
    # 2 x 2 grid, box = top row. z = [[0.6, 0.2], [0.3, 0.5]]: r_in = 0.4, r_out = 0.4.
    mask = [[1, 1], [0, 0]]
    z = [[0.6, 0.2], [0.3, 0.5]]
    loss, terms = run(*one_class(mask, z, tau=0.5, rho=0.1), lambda_ann=2.0, gamma=1.0)
    # Eq. 9: ReLU(0.5 - 0.4) + ReLU(0.4 - 0.1) = 0.1 + 0.3 = 0.4, times lambda_ann = 2.
    np.testing.assert_allclose(terms["box_term"], [0.8], rtol=1e-6)
    np.testing.assert_allclose(terms["image_term"], [0.0])
    np.testing.assert_allclose(loss, [0.8], rtol=1e-6)
    # Same image unannotated, positive: ReLU(tau_hat - s) = ReLU(3 - 1.6) = 1.4.
    loss, _ = run(*one_class(mask, z, annotated=0.0), gamma=0.25)
    np.testing.assert_allclose(loss, [1.4], rtol=1e-6)
    # Negative: gamma ReLU(s - rho_hat) = 0.25 (1.6 - 1) = 0.15.
    loss, _ = run(*one_class(mask, z, label=0.0, annotated=0.0), gamma=0.25)
    np.testing.assert_allclose(loss, [0.15], rtol=1e-5)


def test_hand_case_sigmoid():
    mask = [[1, 1], [0, 0]]
    z = [[0.6, 0.2], [0.3, 0.5]]
    loss, _ = run(*one_class(mask, z, tau=0.5, rho=0.1), lambda_ann=1.0, gamma=9.0,
                  form="sigmoid")
    # Eq. 5: -sigma(0.8 - 0.5 * 2) sigma(0.1 * 2 - 0.8).
    np.testing.assert_allclose(loss, [-sigmoid(-0.2) * sigmoid(-0.6)], rtol=1e-6)
    loss, _ = run(*one_class(mask, z, label=0.0, annotated=0.0), gamma=9.0, form="sigmoid")
    np.testing.assert_allclose(loss, [-sigmoid(1.0 - 1.6)], rtol=1e-6)  # Eq. 8, no gamma


def test_z_equal_to_the_box_mask_costs_nothing():
    rng = np.random.default_rng(5)
    mask = (rng.random((6, 6)) < 0.3).astype(np.float32)
    mask[0, 0] = 1.0
    for tau, rho in [(1.0, 0.0), (0.3, 0.0), (0.0, 1.0), (1.0, 1.0)]:  # thresholds at edges
        loss, _ = run(*one_class(mask, mask, tau=tau, rho=rho), gamma=1.0)
        assert loss[0] == 0.0
    loss, _ = run(*one_class(mask, 1.0 - mask, tau=1.0, rho=0.0), lambda_ann=1.0, gamma=1.0)
    np.testing.assert_allclose(loss, [2.0], rtol=1e-6)  # both hinges at their maximum, 1 + 1


def test_full_grid_box_has_no_outside_term_and_finite_gradient():
    z = tf.Variable(np.full((1, 3, 3, 1), 0.2, np.float32))
    labels, mask, flags, _, thresholds = one_class(np.ones((3, 3)), np.zeros((3, 3)), tau=0.5)
    with tf.GradientTape() as tape:
        loss = rozenberg2019_loss(labels, mask, flags, z, thresholds, lambda_ann=1.0, gamma=1.0)
    gradient = tape.gradient(loss, z).numpy()
    np.testing.assert_allclose(loss, [0.3], rtol=1e-6)  # ReLU(0.5 - 0.2) only
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient, np.full((1, 3, 3, 1), -1 / 9), rtol=1e-6)


def test_empty_box_mask_with_flag_has_no_inside_term():
    z = np.full((3, 3), 0.5, np.float32)
    loss, _ = run(*one_class(np.zeros((3, 3)), z, tau=0.9, rho=0.1), lambda_ann=1.0, gamma=1.0)
    np.testing.assert_allclose(loss, [0.4], rtol=1e-6)  # ReLU(0.5 - 0.1) outside only


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_all_labels_equal(label):
    rng = np.random.default_rng(6)
    labels, box_mask, _, z, thresholds = random_case(rng)
    labels[:] = label
    has_box = np.zeros_like(labels)
    loss, terms = run(labels, box_mask, has_box, z, thresholds, gamma=0.7)
    expected, _, _ = reference_loss(labels, box_mask, has_box, z.astype(np.float64),
                                    thresholds.astype(np.float64), 70.0, 0.7, "relu")
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert np.all(terms["box_term"] == 0.0) and expected.max() > 0


def test_lambda_ann_scales_only_the_box_term():
    case = random_case(np.random.default_rng(7))
    _, small = run(*case, lambda_ann=1.0, gamma=0.5)
    _, large = run(*case, lambda_ann=70.0, gamma=0.5)
    np.testing.assert_allclose(large["box_term"], 70.0 * small["box_term"], rtol=1e-5)
    np.testing.assert_array_equal(large["image_term"], small["image_term"])
    assert small["box_term"].max() > 0


def test_threshold_gradients_have_the_signs_that_make_learning_them_degenerate():
    """Sec. 4 "Training details": learned thresholds go to τ, τ̂ -> 0, ρ -> 1, ρ̂ -> P²,
    because Eq. 12 is non-decreasing in τ, τ̂ and non-increasing in ρ, ρ̂."""
    labels, box_mask, has_box, z, thresholds = random_case(np.random.default_rng(8), batch=8)
    variable = tf.Variable(thresholds)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(rozenberg2019_loss(labels, box_mask, has_box, z, variable,
                                                gamma=0.5))
    gradient = tape.gradient(loss, variable).numpy()
    assert np.all(gradient[[0, 2]] >= 0) and np.all(gradient[[1, 3]] <= 0)
    assert np.all(np.abs(gradient).max(axis=1) > 0)  # every threshold is active somewhere


@pytest.mark.parametrize("grid", [12, 16, 20])
@pytest.mark.parametrize("form", ["relu", "sigmoid"])
def test_saturated_scores_give_finite_loss_and_gradients(grid, form):
    rng = np.random.default_rng(grid)
    labels, box_mask, has_box, _, thresholds = random_case(rng, batch=4, grid=grid, classes=3)
    z = tf.Variable((rng.random((4, grid, grid, 3)) < 0.5).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = rozenberg2019_loss(labels, box_mask, has_box, z, thresholds, gamma=0.1,
                                  form=form)
    gradient = tape.gradient(loss, z).numpy()
    assert np.all(np.isfinite(loss.numpy())) and np.all(np.isfinite(gradient))
    assert np.abs(gradient).max() > 0


def test_bad_arguments_are_rejected():
    case = random_case(np.random.default_rng(9))
    with pytest.raises(ValueError, match="form must be one of relu, sigmoid, got 'hinge'"):
        rozenberg2019_loss(*case, gamma=1.0, form="hinge")
    with pytest.raises(ValueError, match="lambda_ann must be >= 0, got -1"):
        rozenberg2019_loss(*case, gamma=1.0, lambda_ann=-1)
    with pytest.raises(ValueError, match="thresholds must hold"):
        rozenberg2019_loss(*case[:4], case[4][:3], gamma=1.0)
    with pytest.raises(ValueError, match="box_mask and z must have the same shape"):
        rozenberg2019_loss(case[0], case[1][:, :3], *case[2:], gamma=1.0)
    with pytest.raises(ValueError, match="has_box must have rank 1 or 2"):
        rozenberg2019_loss(case[0], case[1], case[2][..., None], *case[3:], gamma=1.0)
    with pytest.raises(ValueError, match="gamma must have rank 0 or 1"):
        rozenberg2019_loss(*case, gamma=np.ones((2, 3)))


def test_pooled_gamma_is_a_hand_count():
    # 5 images, 3 classes: positives per class (2, 0, 4), negatives (3, 5, 1).
    labels = np.array([[1, 0, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]])
    positives, negatives = label_counts(labels)
    np.testing.assert_array_equal(positives, [2, 0, 4])
    np.testing.assert_array_equal(negatives, [3, 5, 1])
    assert pooled_gamma(positives, negatives) == np.float32(6 / 9)
    np.testing.assert_allclose(pooled_gamma(positives, negatives, per_class=True),
                               [2 / 3, 0.0, 4.0], rtol=1e-7)


def test_pooled_gamma_rejects_bad_counts():
    with pytest.raises(ValueError, match=r"classes \[1\] have none"):
        pooled_gamma([1, 2], [3, 0], per_class=True)
    with pytest.raises(ValueError, match="at least one negative"):
        pooled_gamma([1, 2], [0, 0])
    with pytest.raises(ValueError, match="same shape"):
        pooled_gamma([1, 2], [3])
    with pytest.raises(ValueError, match="counts must be >= 0"):
        pooled_gamma([1, -2], [3, 1])
    with pytest.raises(ValueError, match="matrix of 0/1"):
        label_counts([[0, 2]])
