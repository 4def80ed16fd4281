"""Tests of `lse_pool` / `LSEPooling` (Hermoza et al. 2020, Sec. 3.2; LSE-LBA of Yao et al.)
against a float64 NumPy loop reference of y = (1/r) (log sum_ij exp(r S_ij) - log(h w))."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.models.layers import LSEPooling, lse_pool


def reference_lse(maps, r):
    """Explicit loops in float64; the max is subtracted inside the sum for stability."""
    maps = np.asarray(maps, np.float64)
    batch, height, width, classes = maps.shape
    r = np.broadcast_to(np.asarray(r, np.float64), (classes,))
    out = np.zeros((batch, classes))
    for b in range(batch):
        for k in range(classes):
            top = max(r[k] * maps[b, i, j, k] for i in range(height) for j in range(width))
            total = 0.0
            for i in range(height):
                for j in range(width):
                    total += math.exp(r[k] * maps[b, i, j, k] - top)
            out[b, k] = (top + math.log(total) - math.log(height * width)) / r[k]
    return out


def test_hand_case():
    # One 1x2 map [0, 1] at r = 1: log((1 + e) / 2).
    maps = np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1)
    out = keras.ops.convert_to_numpy(lse_pool(maps, 1.0))
    np.testing.assert_allclose(out, [[math.log((1 + math.e) / 2)]], atol=1e-6)
    # A constant map pools to its value at any r.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lse_pool(np.full((1, 3, 3, 1), 2.5),
                                                                   7.0)), [[2.5]], atol=1e-6)


@pytest.mark.parametrize("r", [0.1, 1.0, 10.0])
def test_matches_reference_scalar_r(r):
    maps = np.random.default_rng(int(r * 10)).normal(0, 3, size=(2, 5, 4, 3)).astype(np.float32)
    out = keras.ops.convert_to_numpy(lse_pool(maps, r))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, reference_lse(maps, r), atol=1e-5)


def test_matches_reference_per_class_r():
    maps = np.random.default_rng(1).normal(0, 3, size=(2, 6, 6, 3)).astype(np.float32)
    r = np.array([0.1, 1.0, 10.0], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lse_pool(maps, r)),
                               reference_lse(maps, r), atol=1e-5)


def test_limits_mean_and_max_in_float32():
    maps = np.random.default_rng(2).normal(0, 1, size=(3, 8, 8, 2)).astype(np.float32)
    mean = maps.mean(axis=(1, 2), dtype=np.float64)
    top = maps.max(axis=(1, 2)).astype(np.float64)
    spread = top - maps.min(axis=(1, 2))
    small = keras.ops.convert_to_numpy(lse_pool(maps, 1e-2)).astype(np.float64)
    assert np.all(small - mean >= -1e-4)
    assert np.all(small - mean <= 1e-2 * spread ** 2 / 8 + 1e-4)
    large = keras.ops.convert_to_numpy(lse_pool(maps, 1e3)).astype(np.float64)
    assert np.all(top - large >= -1e-5)
    assert np.all(top - large <= math.log(64) / 1e3 + 1e-5)


def test_large_values_do_not_overflow():
    maps = np.array([[[[80.0], [100.0]]]], np.float32)  # exp(10 * 100) overflows without the max
    out = keras.ops.convert_to_numpy(lse_pool(maps, 10.0))
    np.testing.assert_allclose(out, reference_lse(maps, 10.0), atol=1e-4)


def test_layer_learns_one_sharpness_per_class():
    layer = LSEPooling()
    maps = tf.constant(np.random.default_rng(3).normal(size=(2, 4, 4, 3)), tf.float32)
    with tf.GradientTape() as tape:
        y = layer(maps)
        first = tf.reduce_sum(y[:, 0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.sharpness), [1, 1, 1])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), reference_lse(maps.numpy(), 1.0),
                               atol=1e-5)
    grad = tape.gradient(first, layer.beta).numpy()
    assert np.all(np.isfinite(grad)) and grad[0] != 0
    np.testing.assert_array_equal(grad[1:], [0, 0])  # beta_k only moves class k
    layer.beta.assign([0.0, math.log(9.0), math.log(0.1)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(maps)),
                               reference_lse(maps.numpy(), [1.0, 9.0, 0.1]), atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(LSEPooling(r0=0.5)(maps)),
                               reference_lse(maps.numpy(), 1.5), atol=1e-5)


def test_keras_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, LSEPooling(r0=0.25, name="lse")(inputs))
    model.get_layer("lse").beta.assign([0.3, -0.7])
    path = tmp_path / "lse.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 2)).astype(np.float32)
    assert loaded.get_layer("lse").r0 == 0.25
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="r must be positive"):
        lse_pool(np.zeros((1, 2, 2, 1), np.float32), 0.0)
    with pytest.raises(ValueError, match=r"one value per class \[3\]"):
        lse_pool(np.zeros((1, 2, 2, 3), np.float32), [1.0, 2.0])
    with pytest.raises(ValueError, match="r0 must be >= 0, got -1"):
        LSEPooling(r0=-1)
