"""Tests of chestxray_tf/models/rozenberg2019_thresholds.py: the Thresholds layer and the
threshold fits of Rozenberg et al. 2019 (Sec. 4 "Training details"; brief §4.1-4.3), on
hand-made counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.rozenberg2019 import rozenberg2019_loss
from chestxray_tf.models.rozenberg2019_thresholds import (
    Thresholds, fit_box_thresholds, fit_count_threshold, fit_thresholds, initial_thresholds,
    median_box_sizes, threshold_statistics, thresholds_converged)

INITIAL = [[0.5, 0.5], [0.05, 0.05], [10.0, 3.0], [1.0, 0.3]]


def test_count_threshold_is_the_youden_midpoint():
    assert fit_count_threshold([10, 12, 14], [0, 1, 3]) == 6.5  # brief §6.4.3
    assert fit_count_threshold([4, 10], [0, 7]) == 2.0  # disjoint tied runs: the lowest
    # Consecutive tied midpoints 2.5 and 7.5 form one interval (0, 10]: its middle.
    assert fit_count_threshold([5, 10], [0, 5]) == 5.0
    assert fit_count_threshold([10, 12], []) is None  # no negatives: keep
    assert fit_count_threshold([], [1]) is None
    assert fit_count_threshold([3, 3], [3]) is None  # a single distinct count
    assert fit_count_threshold([0, 1], [5, 6]) is None  # J* < 0: no discrimination


def test_box_thresholds_maximise_youden_with_ties_to_larger_tau_smaller_rho():
    # Hits have r_in >= 0.6 and r_out <= 0.02; misses fail one of the two.
    r_in = [0.9, 0.7, 0.6, 0.3, 0.8, 0.65]
    r_out = [0.0, 0.01, 0.02, 0.0, 0.15, 0.03]
    hit = [True, True, True, False, False, False]
    # J = 1 for tau in (0.3, 0.6] and rho in [0.02, 0.03): larger tau 0.6, smaller rho 0.02.
    assert fit_box_thresholds(r_in, r_out, hit) == (0.6, 0.02)
    assert fit_box_thresholds(r_in, r_out, [True] * 6) is None  # every box hit: keep
    assert fit_box_thresholds(r_in[:4], r_out[:4], hit[:4]) is None  # fewer than 5 images


def test_fit_thresholds_per_method():
    # Class 0: 6 annotated images (as above) and unannotated counts s+ = {10, 12, 14},
    # s- = {0, 1, 3}; class 1: no annotated image, no negative.
    r_in = np.array([0.9, 0.7, 0.6, 0.3, 0.8, 0.65] + [0.0] * 6)
    r_out = np.array([0.0, 0.01, 0.02, 0.0, 0.15, 0.03] + [0.0] * 6)
    hit = np.array([1, 1, 1, 0, 0, 0] + [0] * 6, bool)
    counts = np.array([0.0] * 6 + [10, 12, 14, 0, 1, 3])
    labels = np.array([[1, 1]] * 9 + [[0, 1]] * 3)
    has_box = np.zeros((12, 2))
    has_box[:6, 0] = 1
    statistics = {"count": np.stack([counts, counts + 1], 1), "r_in": np.stack([r_in] * 2, 1),
                  "r_out": np.stack([r_out] * 2, 1), "hit": np.stack([hit] * 2, 1)}
    fitted, kept = fit_thresholds(INITIAL, labels, has_box, statistics)
    np.testing.assert_allclose(fitted[:, 0], [0.6, 0.02, 6.5, 6.5], rtol=1e-6)
    np.testing.assert_array_equal(fitted[:, 1], np.float32(INITIAL)[:, 1])
    assert kept == [(1, "box"), (1, "image")]
    quantile, kept = fit_thresholds(INITIAL, labels, has_box, statistics, method="quantile")
    np.testing.assert_allclose(quantile[:, 0], [0.675, 0.015, 12.0, 1.0], rtol=1e-6)
    assert kept == [(1, "box"), (1, "image")]
    fixed, kept = fit_thresholds(INITIAL, labels, has_box, statistics, method="fixed")
    np.testing.assert_array_equal(fixed, np.float32(INITIAL))
    assert kept == []
    with pytest.raises(ValueError, match="method must be one of youden, quantile, fixed"):
        fit_thresholds(INITIAL, labels, has_box, statistics, method="learned")


def test_statistics_by_hand():
    # 2 x 2 grid, box = left column; z = [[0.5, 0.2], [0.1, 0.6]].
    z = np.array([[0.5, 0.2], [0.1, 0.6]])[None, :, :, None]
    box = np.array([[1, 0], [1, 0]])[None, :, :, None]
    stats = threshold_statistics(z, box)
    np.testing.assert_allclose(stats["count"], [[1.4]])
    np.testing.assert_allclose(stats["r_in"], [[0.3]])
    np.testing.assert_allclose(stats["r_out"], [[0.4]])
    # Region {z >= 0.5} = {(0,0), (1,1)}: IoU with the box = 1/3 >= 0.1 (inclusive at 0.5).
    assert stats["hit"][0, 0]
    assert not threshold_statistics(z, box, iou_threshold=0.34)["hit"][0, 0]
    full = threshold_statistics(z, np.ones_like(box))
    np.testing.assert_allclose(full["r_out"], [[0.0]])  # empty outside


def test_initial_thresholds_from_median_box_sizes():
    medians = median_box_sizes([[10, 20, 30], [], [4]])
    np.testing.assert_array_equal(medians, [20, 15, 4])  # class 1: median of all boxes
    np.testing.assert_allclose(initial_thresholds(medians),
                               [[0.5] * 3, [0.05] * 3, [10, 7.5, 2], [1, 0.75, 0.2]], rtol=1e-6)
    with pytest.raises(ValueError, match="at least one box"):
        median_box_sizes([[], []])
    with pytest.raises(ValueError, match="positive patch counts"):
        initial_thresholds([3, 0])


def test_convergence_rule():
    old = np.float32(INITIAL)
    assert thresholds_converged(old, old * 1.005)
    assert not thresholds_converged(old, old * 1.02)
    near_zero = old.copy()
    near_zero[1] = 0.0
    assert thresholds_converged(near_zero, near_zero + 5e-4)


def model_with_thresholds():
    image = keras.Input((4, 4, 2))
    z = keras.layers.Conv2D(2, 1, activation="sigmoid", name="scores")(image)
    thresholds = Thresholds(INITIAL, name="thresholds")(z)
    return keras.Model(image, {"z": z, "thresholds": thresholds})


def test_training_steps_leave_the_thresholds_bit_identical():
    model = model_with_thresholds()
    layer = model.get_layer("thresholds")
    assert not layer.trainable_weights and len(layer.non_trainable_weights) == 1
    before = layer.thresholds.numpy().copy()
    optimizer = keras.optimizers.Adam(0.1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    labels = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    box_mask = (rng.random((3, 4, 4, 2)) < 0.5).astype(np.float32)
    has_box = np.array([[1, 0], [0, 0], [0, 1]], np.float32)
    kernel = model.get_layer("scores").kernel.numpy().copy()
    for _ in range(3):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(rozenberg2019_loss(labels, box_mask, has_box, out["z"],
                                                     out["thresholds"], gamma=0.5))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert np.abs(model.get_layer("scores").kernel.numpy() - kernel).max() > 0  # it trained
    np.testing.assert_array_equal(layer.thresholds.numpy(), before)
    assert out["thresholds"].shape == (3, 4, 2)
    np.testing.assert_array_equal(out["thresholds"][2], before)


def test_assigned_thresholds_are_checkpointed_and_survive_keras_round_trip(tmp_path):
    model = model_with_thresholds()
    fitted = np.float32(INITIAL) * 2
    model.get_layer("thresholds").assign(fitted)
    model.save_weights(tmp_path / "w.weights.h5")
    model.save(tmp_path / "m.keras")
    fresh = model_with_thresholds()
    fresh.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(fresh.get_layer("thresholds").thresholds.numpy(), fitted)
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(restored.get_layer("thresholds").thresholds.numpy(), fitted)
    with pytest.raises(ValueError, match=r"expects shape \(4, 2\), got \(4, 3\)"):
        model.get_layer("thresholds").assign(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"thresholds must be \[4, K\]"):
        Thresholds([[0.5, 0.5]])
