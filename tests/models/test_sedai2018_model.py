"""Tests of chestxray_tf/models/sedai2018.py and cam.py against Sedai et al. 2018, Eq. 1-3.

References: the simplex projection by enumerating every face of the simplex (the closest
feasible face projection is the projection), GAP / FC / CAM / convex combinations / min-max
with explicit loops in float64 (the resize R() by tf.image.resize, as the brief allows).
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.weighted_bce import class_balanced_bce
from chestxray_tf.models.cam import MinMaxNormalization
from chestxray_tf.models.densenet import build_densenet
from chestxray_tf.models.sedai2018 import (SEDAI_TAPS, RelevanceWeights, Simplex,
                                           build_sedai2018)

TINY = {"image_size": 64, "num_classes": 3, "backbone": "densenet_tiny"}


def reference_projection(v):
    """argmin_{x in simplex} |x - v|^2 by brute force over the faces: on the face with support
    S, x_i = v_i - (sum_S v - 1) / |S| (i in S), 0 elsewhere; keep the feasible closest one."""
    best, best_distance = None, np.inf
    for size in range(1, len(v) + 1):
        for support in itertools.combinations(range(len(v)), size):
            shift = (sum(v[i] for i in support) - 1.0) / size
            x = np.zeros(len(v))
            for i in support:
                x[i] = v[i] - shift
            if np.all(x >= -1e-12):
                distance = sum((x[i] - v[i]) ** 2 for i in range(len(v)))
                if distance < best_distance:
                    best, best_distance = x, distance
    return best


def project(w):
    return Simplex()(tf.constant(w, tf.float32)).numpy()


def check_kkt(x, v, atol=1e-5):
    """Optimality of x for v: x >= 0, sum 1, and one theta with x_i = v_i - theta where
    x_i > 0 and v_i - theta <= 0 where x_i = 0."""
    assert np.all(x >= 0) and abs(x.sum() - 1) < atol
    support = x > atol
    theta = np.mean(v[support] - x[support])
    np.testing.assert_allclose(x[support], v[support] - theta, atol=atol)
    assert np.all(v[~support] - theta <= atol)


@pytest.mark.parametrize("column, expected", [
    ([1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]),     # already on the simplex
    ([0.2, 0.0, 0.8], [0.2, 0.0, 0.8]),                 # on an edge
    ([2.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
    ([0.5, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]),
    ([-1.0, 0.2, 0.3], [0.0, 0.45, 0.55]),              # a negative entry
    ([-3.0, -2.0, -2.5], [0.0, 0.75, 0.25]),            # all negative
    ([0.7, 0.7, 0.0], [0.5, 0.5, 0.0]),                 # ties
    ([5.0, 5.0, 5.0, 5.0], [0.25] * 4),
])
def test_projection_hand_cases(column, expected):
    np.testing.assert_allclose(reference_projection(np.array(column)), expected, atol=1e-12)
    np.testing.assert_allclose(project(np.array(column)[:, None])[:, 0], expected, atol=1e-6)


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
def test_projection_of_random_columns_matches_brute_force(blocks):
    rng = np.random.default_rng(blocks)
    w = rng.normal(0.3, 1.0, (blocks, 40))
    w[:, :5] = np.round(w[:, :5], 1)  # some ties
    x = project(w)
    for c in range(w.shape[1]):
        np.testing.assert_allclose(x[:, c], reference_projection(w[:, c]), atol=2e-6)
        check_kkt(x[:, c].astype(np.float64), w[:, c])
    np.testing.assert_allclose(project(x), x, atol=1e-6)  # idempotent


def test_projection_in_a_tf_function():
    w = np.random.default_rng(7).normal(0, 2, (3, 14))
    projected = tf.function(Simplex().__call__)(tf.constant(w, tf.float32)).numpy()
    np.testing.assert_allclose(projected, project(w), atol=1e-7)


def train_relevance(relevance, steps=30, seed=0):
    """Adam on w of a lone RelevanceWeights layer with large random gradients (through a
    random linear loss), in a tf.function, as the trainer does."""
    layer = RelevanceWeights(3, 14, relevance)
    rng = np.random.default_rng(seed)
    blocks = [tf.constant(rng.normal(0, 5, (4, 14)), tf.float32) for _ in range(3)]
    layer(blocks)
    initial = keras.ops.convert_to_numpy(layer.relevance_weights())
    optimizer = keras.optimizers.Adam(learning_rate=0.5)

    @tf.function
    def step(target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(blocks) * target)
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables),
                                      layer.trainable_variables))

    for _ in range(steps):
        step(tf.constant(rng.normal(0, 10, (4, 14)), tf.float32))
    return layer, initial, keras.ops.convert_to_numpy(layer.relevance_weights())


@pytest.mark.parametrize("relevance", ["projected", "softmax"])
def test_relevance_weights_stay_on_the_simplex_while_training(relevance):
    layer, initial, w = train_relevance(relevance)
    np.testing.assert_array_equal(initial, np.full((3, 14), np.float32(1 / 3)))
    assert np.abs(w - initial).max() > 0.1          # training moved them
    assert w.min() >= 0
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-6)
    if relevance == "projected":
        assert isinstance(layer.w.constraint, Simplex)
        assert np.sum(w == 0) > 0                   # the projection reached faces
    else:
        assert w.min() > 0


def reference_forward(features, heads, w, image_size):
    """Eq. 1-3 with loops: features[b] [N, h, w, F], heads[b] = (V [F, K], a [K]), w [B, K]."""
    batch, classes, blocks = features[0].shape[0], w.shape[1], len(features)
    block_logits = np.zeros((batch, blocks, classes))
    cams = []
    for b, (f, (kernel, bias)) in enumerate(zip(features, heads)):
        _, height, width, channels = f.shape
        cam = np.zeros((batch, height, width, classes))
        for n in range(batch):
            for c in range(classes):
                pooled = [f[n, :, :, j].sum() / (height * width) for j in range(channels)]
                block_logits[n, b, c] = sum(kernel[j, c] * pooled[j]
                                            for j in range(channels)) + bias[c]
                for y in range(height):
                    for x in range(width):
                        cam[n, y, x, c] = sum(kernel[j, c] * f[n, y, x, j]
                                              for j in range(channels))          # Eq. 2
        cams.append(tf.image.resize(cam, (image_size, image_size), "bilinear").numpy())
    logits = np.zeros((batch, classes))
    attention = np.zeros((batch, image_size, image_size, classes))
    deepest = np.zeros_like(attention)          # the last block's resized CAM alone
    for n in range(batch):
        for c in range(classes):
            logits[n, c] = sum(w[b, c] * block_logits[n, b, c] for b in range(blocks))
            s = sum(w[b, c] * cams[b][n, :, :, c] for b in range(blocks))       # Eq. 3
            for out, m in ((attention, s), (deepest, cams[-1][n, :, :, c])):
                low, high = m.min(), m.max()
                out[n, :, :, c] = (m - low) / (high - low) if high > low else 0.0
    probs = 1.0 / (1.0 + np.exp(-logits))                                        # Eq. 1
    return probs, logits, block_logits, attention, deepest


@pytest.fixture(scope="module")
def tiny_model():
    model = build_sedai2018(**TINY)
    rng = np.random.default_rng(3)
    for b in (1, 2, 3):  # non-zero biases, so a bias leaking into the CAM would show
        head = model.get_layer(f"block{b}_fc")
        head.set_weights([rng.normal(0, 0.3, head.kernel.shape).astype("float32"),
                          rng.normal(0, 0.5, 3).astype("float32")])
    relevance = rng.uniform(0, 1, (3, 3))
    model.get_layer("relevance").w.assign((relevance / relevance.sum(0)).astype("float32"))
    return model


def test_outputs_match_loop_reference(tiny_model):
    images = np.random.default_rng(4).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    outputs = tiny_model(images, training=False)
    features = [f.numpy().astype(np.float64)
                for f in tiny_model.get_layer("densenet_tiny")(images, training=False)]
    assert [f.shape[1:] for f in features] == [(8, 8, 20), (4, 4, 18), (2, 2, 17)]
    heads = [[v.astype(np.float64) for v in tiny_model.get_layer(f"block{b}_fc").get_weights()]
             for b in (1, 2, 3)]
    w = tiny_model.get_layer("relevance").w.numpy().astype(np.float64)
    probs, logits, block_logits, attention, deepest = reference_forward(features, heads, w, 64)
    assert {key: (tuple(value.shape), value.dtype) for key, value in outputs.items()} == {
        "image_probs": ((2, 3), tf.float32), "logits": ((2, 3), tf.float32),
        "block_logits": ((2, 3, 3), tf.float32), "attention": ((2, 64, 64, 3), tf.float32),
        "deepest_attention": ((2, 64, 64, 3), tf.float32)}
    np.testing.assert_allclose(outputs["block_logits"], block_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["logits"], logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["image_probs"], probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs["attention"], attention, atol=1e-4)
    np.testing.assert_allclose(outputs["deepest_attention"], deepest, atol=1e-4)
    assert np.abs(deepest - attention).max() > 0.05          # the two maps differ
    value = outputs["attention"].numpy()
    assert value.min() == 0.0 and value.max() == 1.0 and np.ptp(value[0, :, :, 0]) == 1.0


def test_cam_mean_plus_bias_is_the_block_logit(tiny_model):
    # Eq. 2 identity: the spatial mean of S_b^c plus a_b^c is l_b^c (GAP and FC commute).
    images = np.random.default_rng(5).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    features = tiny_model.get_layer("densenet_tiny")(images, training=False)
    for b, feature in enumerate(features, start=1):
        head = tiny_model.get_layer(f"block{b}_fc")
        logits, cam = head(feature)
        np.testing.assert_allclose(keras.ops.mean(cam, axis=(1, 2)) + head.bias, logits,
                                   atol=1e-5)


def test_min_max_normalization_of_a_constant_map_is_zero():
    maps = np.zeros((1, 4, 4, 2), np.float32)
    maps[..., 0] = 3.5
    maps[0, 1, 2, 1], maps[0, 3, 3, 1] = -2.0, 6.0
    out = MinMaxNormalization()(maps).numpy()
    np.testing.assert_array_equal(out[..., 0], 0.0)
    assert out[0, 1, 2, 1] == 0.0 and out[0, 3, 3, 1] == 1.0
    np.testing.assert_allclose(out[0, 0, 0, 1], 2.0 / 8.0)


def test_keras_round_trip(tiny_model, tmp_path):
    path = tmp_path / "sedai.keras"
    tiny_model.save(path)
    loaded = keras.saving.load_model(path)
    images = np.random.default_rng(6).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    want, got = tiny_model(images, training=False), loaded(images, training=False)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6)
    relevance = loaded.get_layer("relevance")
    assert relevance.relevance == "projected" and isinstance(relevance.w.constraint, Simplex)
    np.testing.assert_array_equal(relevance.w.numpy(), tiny_model.get_layer("relevance").w.numpy())


def test_softmax_relevance_and_dn_cam_variant():
    model = build_sedai2018(relevance="softmax", **TINY)
    np.testing.assert_allclose(model.get_layer("relevance").relevance_weights(), 1 / 3, rtol=1e-6)
    dn_cam = build_sedai2018(taps=("relu",), **TINY)  # B = 1: DenseNet GAP + FC (DN-CAM)
    images = np.random.default_rng(8).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    outputs = dn_cam(images, training=False)
    head = dn_cam.get_layer("block1_fc")
    features = dn_cam.get_layer("densenet_tiny")(images, training=False)
    np.testing.assert_allclose(outputs["logits"], head(features)[0], atol=1e-6)
    assert outputs["block_logits"].shape == (1, 1, 3)


def test_backbone_model_argument_and_bad_arguments():
    backbone = build_densenet("densenet_tiny", (64, 64, 3))
    model = build_sedai2018(image_size=64, num_classes=2, backbone=backbone)
    assert model.get_layer("densenet_tiny").get_layer("relu") is backbone.get_layer("relu")
    with pytest.raises(ValueError, match="relevance must be one of"):
        build_sedai2018(relevance="sparsemax", **TINY)
    with pytest.raises(ValueError, match="not the image_size=128"):
        build_sedai2018(image_size=128, backbone=backbone)
    with pytest.raises(ValueError, match="weights='imagenet' applies to a backbone built"):
        build_sedai2018(image_size=64, backbone=backbone, weights="imagenet")
    with pytest.raises(ValueError, match=r"\['pool7_relu'\] are not layers"):
        build_sedai2018(taps=("pool7_relu", "relu"), **TINY)
    with pytest.raises(ValueError, match="unknown DenseNet 'resnet_v2_50'"):
        build_sedai2018(image_size=64, backbone="resnet_v2_50")
    with pytest.raises(ValueError, match="image_size must be an integer >= 32, got 16"):
        build_sedai2018(image_size=16, backbone="densenet_tiny")
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        build_sedai2018(image_size=64, num_classes=0, backbone="densenet_tiny")
    with pytest.raises(ValueError, match="num_blocks must be a positive integer"):
        RelevanceWeights(0, 3)


def test_outputs_stay_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_sedai2018(**TINY)
    finally:
        keras.config.set_dtype_policy("float32")
    outputs = model(np.zeros((1, 64, 64, 3), np.float32), training=False)
    assert {value.dtype for value in outputs.values()} == {tf.float32}
    assert model.get_layer("relevance").w.dtype == "float32"


def test_full_size_densenet121_shapes():
    model = build_sedai2018()
    assert model.count_params() == 7_073_428  # DenseNet-121 7,037,504 + FC 35,882 + w 42
    taps = model.get_layer("densenet121").output_shape
    assert [tuple(s) for s in taps] == [(None, 32, 32, 512), (None, 16, 16, 1024),
                                        (None, 8, 8, 1024)]
    outputs = model(np.zeros((1, 256, 256, 3), np.float32), training=False)
    assert {key: tuple(value.shape) for key, value in outputs.items()} == {
        "image_probs": (1, 14), "logits": (1, 14), "block_logits": (1, 3, 14),
        "attention": (1, 256, 256, 14), "deepest_attention": (1, 256, 256, 14)}
    assert SEDAI_TAPS == ("pool3_relu", "pool4_relu", "relu")


def test_model_trains_with_the_class_balanced_loss_and_keeps_w_on_the_simplex():
    model = build_sedai2018(**TINY)
    optimizer = keras.optimizers.Adam(learning_rate=0.05)
    rng = np.random.default_rng(9)
    images = tf.constant(rng.uniform(-1, 1, (3, 64, 64, 3)), tf.float32)  # odd batch
    labels = tf.constant([[1, 0, 0], [0, 1, 0], [1, 1, 0]], tf.float32)
    beta = np.array([0.6, 0.7, 0.9], np.float32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(class_balanced_bce(labels, model(images, training=True)["logits"],
                                                     beta))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))
        return loss

    losses = [float(step()) for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    w = model.get_layer("relevance").w.numpy()
    assert not np.allclose(w, 1 / 3) and w.min() >= 0
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-6)
