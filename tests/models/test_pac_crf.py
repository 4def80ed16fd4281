"""Tests of chestxray_tf/models/pac_crf.py (Rozenberg et al. 2019 Sec. 3.3, brief §3.3) against
a NumPy mean-field reference with explicit loops over images, patches, offsets and classes."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.models.pac_crf import PacCrf, _window_patches, crf_feature_branch


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def reference_crf(u, f, W, w_u, window, steps, message="spin"):
    """Mean-field of K coupled binary chains: l = w_u u + Σ_δ G Σ_c W[δ, c, o] q_c(i + δ)."""
    batch, height, width, classes = u.shape
    r = window // 2
    logits = w_u * u
    for _ in range(steps):
        q = sigmoid(logits)
        q = 2 * q - 1 if message == "spin" else q
        new = w_u * u.copy()
        for b in range(batch):
            for i in range(height):
                for j in range(width):
                    for dy in range(window):
                        for dx in range(window):
                            ii, jj = i + dy - r, j + dx - r
                            if (dy, dx) == (r, r) or not (0 <= ii < height and 0 <= jj < width):
                                continue
                            g = math.exp(-0.5 * np.sum((f[b, ii, jj] - f[b, i, j]) ** 2))
                            for o in range(classes):
                                for c in range(classes):
                                    new[b, i, j, o] += (g * W[dy * window + dx, c, o]
                                                        * q[b, ii, jj, c])
        logits = new
    return sigmoid(logits)


def crf(window, steps, classes, W=None, w_u=1.0, message="spin", grid=5, features=3):
    layer = PacCrf(window, steps, message)
    layer.build([(None, grid, grid, classes), (None, grid, grid, features)])
    if W is not None:
        layer.compatibility.assign(W)
    layer.unary_weight.assign(w_u)
    return layer


def random_inputs(rng, batch=2, grid=5, classes=2, features=3):
    u = rng.normal(0.0, 2.0, (batch, grid, grid, classes)).astype(np.float32)
    f = rng.normal(0.0, 0.7, (batch, grid, grid, features)).astype(np.float32)
    return u, f


@pytest.mark.parametrize("message", ["spin", "pac"])
@pytest.mark.parametrize("window, steps", [(3, 3), (5, 2)])
def test_matches_loop_reference(message, window, steps):
    rng = np.random.default_rng(window)
    u, f = random_inputs(rng)
    W = rng.normal(0.0, 1.0, (window * window, 2, 2)).astype(np.float32)
    layer = crf(window, steps, 2, W, w_u=0.8, message=message)
    z = np.asarray(layer([u, f]))
    expected = reference_crf(u.astype(np.float64), f.astype(np.float64), W, 0.8, window, steps,
                             message)
    assert z.dtype == np.float32 and z.shape == u.shape
    assert np.abs(expected - sigmoid(0.8 * u)).max() > 0.05  # the messages matter
    np.testing.assert_allclose(z, expected, atol=2e-6)


def test_zero_compatibility_gives_the_unary_probabilities():
    u, f = random_inputs(np.random.default_rng(0), classes=3)
    zeros = np.zeros((9, 3, 3), np.float32)
    np.testing.assert_allclose(crf(3, 5, 3, zeros)([u, f]), sigmoid(u), atol=1e-6)  # z = p
    np.testing.assert_allclose(crf(3, 5, 3, zeros, w_u=2.0)([u, f]), sigmoid(2 * u), atol=1e-6)
    np.testing.assert_allclose(crf(3, 0, 3)([u, f]), sigmoid(u), atol=1e-6)  # T = 0
    fresh = crf(3, 5, 3)  # W ~ U(-5e-4, 5e-4) at initialisation: z ≈ p
    np.testing.assert_allclose(fresh([u, f]), sigmoid(u), atol=1e-2)


def test_translation_equivariance_away_from_borders():
    """Errata 2: border effects spread ⌊w/2⌋ cells per step; compare cells T ⌊w/2⌋ inside."""
    rng = np.random.default_rng(1)
    u, f = random_inputs(rng, batch=1, grid=20, classes=2)
    W = rng.normal(0.0, 1.0, (9, 2, 2)).astype(np.float32)
    layer = crf(3, 2, 2, W, grid=16)
    z_a = np.asarray(layer([u[:, :16, :16], f[:, :16, :16]]))
    z_b = np.asarray(layer([u[:, 2:18, 3:19], f[:, 2:18, 3:19]]))
    margin = 2
    # z_b[i, j] is z at (i + 2, j + 3) of the big grid, z_a[i + 2, j + 3] too.
    a = z_a[:, 2 + margin:16 - margin, 3 + margin:16 - margin]
    b = z_b[:, margin:14 - margin, margin:13 - margin]
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(z_a[:, 2:16, 3:16] - z_b[:, :14, :13]).max() > 1e-4  # borders do differ


def test_class_permutation_permutes_the_output():
    rng = np.random.default_rng(2)
    u, f = random_inputs(rng, classes=3)
    W = rng.normal(0.0, 1.0, (9, 3, 3)).astype(np.float32)
    order = [2, 0, 1]
    z = np.asarray(crf(3, 3, 3, W)([u, f]))
    permuted = np.asarray(crf(3, 3, 3, W[:, order][:, :, order])([u[..., order], f]))
    np.testing.assert_allclose(permuted, z[..., order], atol=1e-6)


def test_window_larger_than_the_grid():
    rng = np.random.default_rng(3)
    u, f = random_inputs(rng, batch=1, grid=6, classes=2)
    W = rng.normal(0.0, 0.3, (19 * 19, 2, 2)).astype(np.float32)
    z = np.asarray(crf(19, 2, 2, W, grid=6)([u, f]))
    expected = reference_crf(u.astype(np.float64), f.astype(np.float64), W, 1.0, 19, 2)
    np.testing.assert_allclose(z, expected, atol=2e-6)


def test_gradients_reach_compatibility_unary_weight_and_feature_branch():
    image = keras.Input((32, 32, 3))
    unaries = keras.Input((8, 8, 2))
    features = crf_feature_branch(image, grid=8, widths=(4, 3))
    layer = PacCrf(3, 3, name="crf")
    model = keras.Model([image, unaries], layer([unaries, features]))
    rng = np.random.default_rng(4)
    layer.compatibility.assign(rng.normal(0.0, 0.5, (9, 2, 2)).astype(np.float32))
    x = [rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32),
         rng.normal(0, 1, (2, 8, 8, 2)).astype(np.float32)]
    target = rng.random((2, 8, 8, 2)).astype(np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - target))
    gradients = dict(zip([v.path for v in model.trainable_variables],
                         tape.gradient(loss, model.trainable_variables)))
    assert len(gradients) == 2 + 2 * 4  # W, w_u; two convs (kernel, bias) and BNs (γ, β)
    for path, gradient in gradients.items():
        assert np.all(np.isfinite(gradient)), path
        if path == "crf_features_bn2/beta":  # a common offset of f cancels in f_j - f_i
            assert np.abs(gradient).max() < 1e-6
        else:
            assert np.abs(gradient).max() > 0, path
    compatibility = gradients["crf/compatibility"].numpy()
    assert np.all(compatibility[4] == 0.0)  # the centre offset is excluded


def test_keras_round_trip(tmp_path):
    image = keras.Input((16, 16, 3), name="image")
    unaries = keras.Input((4, 4, 2), name="unaries")
    features = crf_feature_branch(image, grid=4, widths=(3,), resize=1)
    model = keras.Model([image, unaries], PacCrf(3, 2, "pac", name="crf")([unaries, features]))
    model.get_layer("crf").compatibility.assign(np.full((9, 2, 2), 0.3, np.float32))
    rng = np.random.default_rng(5)
    x = [rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32),
         rng.normal(0, 1, (2, 4, 4, 2)).astype(np.float32)]
    model.save(tmp_path / "crf.keras")
    restored = keras.saving.load_model(tmp_path / "crf.keras")
    assert restored.get_layer("crf").get_config()["message"] == "pac"
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = PacCrf(3, 2)
        u, f = random_inputs(np.random.default_rng(6))
        assert layer([u, f]).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="window must be an odd positive integer, got 4"):
        PacCrf(4)
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got -1"):
        PacCrf(3, -1)
    with pytest.raises(ValueError, match="message must be one of spin, pac, got 'crf'"):
        PacCrf(3, 1, "crf")
    with pytest.raises(ValueError, match="must share the P x P grid"):
        PacCrf(3).build([(None, 5, 5, 2), (None, 4, 4, 3)])
    with pytest.raises(ValueError, match=r"resize must be 1 or 2 \*\* len\(widths\) = 4, got 3"):
        crf_feature_branch(keras.Input((16, 16, 3)), grid=4, resize=3)


@pytest.mark.parametrize("grid, window", [(5, 3), (6, 19), (7, 5)])
def test_window_gather_equals_extract_patches(grid, window):
    x = np.random.default_rng(grid).normal(size=(2, grid, grid, 3)).astype(np.float32)
    expected = tf.image.extract_patches(x, [1, window, window, 1], [1, 1, 1, 1], [1, 1, 1, 1],
                                        "SAME").numpy().reshape(2, grid, grid, window ** 2, 3)
    np.testing.assert_array_equal(_window_patches(x, window), expected)


@pytest.mark.parametrize("size, grid, resize", [(64, 4, 4), (48, 4, 4), (50, 4, 4), (32, 8, 1)])
def test_feature_branch_resize_is_an_area_resize(size, grid, resize):
    """The branch's first layer equals `tf.image.resize(method="area")` to resize·P: an
    average pool when S is a multiple of it (50 px: the Resizing layer), compiled with XLA."""
    image = keras.Input((size, size, 3))
    features = crf_feature_branch(image, grid=grid, widths=(3, 2) if resize == 4 else (3,),
                                  resize=resize)
    model = keras.Model(image, features)
    first = keras.Model(image, model.get_layer("crf_features_resize").output)
    x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    expected = tf.image.resize(x, [resize * grid] * 2, method="area").numpy()
    np.testing.assert_allclose(first(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    if size % (resize * grid) == 0:
        compiled = tf.function(lambda v: first(v), jit_compile=True)
        np.testing.assert_allclose(compiled(x).numpy(), expected, rtol=1e-5, atol=1e-6)
