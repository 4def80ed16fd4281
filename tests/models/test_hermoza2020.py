"""Tests of the Hermoza et al. 2020 model (chestxray_tf/models/hermoza2020.py): the FPN + per-class
saliency head against a NumPy loop reference, the wiring of the detection module and the inference
maps, gradients to every trained part, and the `.keras` round trip. Tiny stand-in backbones at
64 px (tests/models/hermoza_tiny.py)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from chestxray_tf.models import detection
from chestxray_tf.models.hermoza2020 import (TAPS, build_hermoza2020, fpn_saliency_head,
                                             proposal_boxes)
from hermoza_tiny import tiny_backbone, tiny_crop_backbone

K = 3


def tiny_model(**kwargs):
    args = dict(image_size=64, num_classes=K, backbone=tiny_backbone(),
                crop_backbone=tiny_crop_backbone(), width=8, class_width=4, det_filters=4,
                crop_size=16, crop_hidden=4, seed=1)
    return build_hermoza2020(**{**args, **kwargs})


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def bn(x, layer):
    gamma, beta, mean, var = (w.numpy().astype(np.float64) for w in layer.weights)
    return gamma * (x - mean) / np.sqrt(var + layer.epsilon) + beta


def conv1x1(x, kernel, bias=None):
    """Loop over output channels: out[..., d] = sum_c x[..., c] kernel[c, d] (+ bias)."""
    out = np.zeros(x.shape[:-1] + (kernel.shape[1],))
    for d in range(kernel.shape[1]):
        for c in range(kernel.shape[0]):
            out[..., d] += x[..., c] * kernel[c, d]
        if bias is not None:
            out[..., d] += bias[d]
    return out


def nearest_up(x):
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], 2 * h, 2 * w, x.shape[3]))
    for i in range(2 * h):
        for j in range(2 * w):
            out[:, i, j] = x[:, i // 2, j // 2]
    return out


def reference_head(taps, head, width, class_width, training=False):
    """FPN (no 3x3 convs) + K separate branches BN-LeakyReLU-1x1-BN-LeakyReLU-1x1; BN with the
    moving statistics, or with each branch's own batch statistics when `training`."""
    laterals = []
    for tap in TAPS:
        conv = head.get_layer(f"fpn_lateral_{tap}")
        laterals.append(conv1x1(taps[tap], conv.kernel.numpy()[0, 0], conv.bias.numpy()))
    top = laterals[-1]
    for lateral in laterals[-2::-1]:
        top = lateral + nearest_up(top)
    bn1, bn2 = head.get_layer("fpn_class1_bn"), head.get_layer("fpn_class2_bn")
    g1, b1, m1, v1 = (w.numpy() for w in bn1.weights)
    g2, b2, m2, v2 = (w.numpy() for w in bn2.weights)
    k1 = head.get_layer("fpn_class_conv1").kernel.numpy()
    k2 = head.get_layer("fpn_class_conv2").kernel.numpy()
    features, logits = [], []
    for k in range(K):
        s1 = slice(k * width, (k + 1) * width)
        mean, var = (top.mean((0, 1, 2)), top.var((0, 1, 2))) if training else (m1[s1], v1[s1])
        x = leaky(g1[s1] * (top - mean) / np.sqrt(var + bn1.epsilon) + b1[s1])
        f = conv1x1(x, k1[k])
        s2 = slice(k * class_width, (k + 1) * class_width)
        mean, var = (f.mean((0, 1, 2)), f.var((0, 1, 2))) if training else (m2[s2], v2[s2])
        x = leaky(g2[s2] * (f - mean) / np.sqrt(var + bn2.epsilon) + b2[s2])
        features.append(f)
        logits.append(conv1x1(x, k2[k])[..., 0])
    return top, np.stack(features, axis=3), np.stack(logits, axis=-1)


def test_fpn_saliency_head_matches_separate_branches():
    rng = np.random.default_rng(1)
    shapes = {"pool2_relu": (8, 8, 5), "pool3_relu": (4, 4, 6), "pool4_relu": (2, 2, 7),
              "relu": (1, 1, 3)}
    inputs = {t: keras.Input(s, name=t) for t, s in shapes.items()}
    head = keras.Model(inputs, fpn_saliency_head(inputs, num_classes=K, width=4, class_width=2))
    for layer in head.layers:  # random BN statistics so the per-class BNs differ
        if isinstance(layer, keras.layers.BatchNormalization):
            for w in layer.weights:
                w.assign(rng.uniform(0.5, 1.5, size=w.shape))
    taps = {t: rng.normal(size=(2,) + s).astype(np.float32) for t, s in shapes.items()}
    out = head(taps, training=False)
    x_fpn, features, logits = reference_head(taps, head, 4, 2)
    assert out["saliency_logits"].shape == (2, 8, 8, K)
    np.testing.assert_allclose(out["x_fpn"].numpy(), x_fpn, atol=1e-4)
    np.testing.assert_allclose(out["class_features"].numpy(), features, atol=1e-4)
    np.testing.assert_allclose(out["saliency_logits"].numpy(), logits, atol=1e-4)
    # Training mode: the tiled BN equals K separate BNs on their own batch statistics.
    _, features, logits = reference_head(taps, head, 4, 2, training=True)
    out = head(taps, training=True)
    np.testing.assert_allclose(out["class_features"].numpy(), features, atol=1e-4)
    np.testing.assert_allclose(out["saliency_logits"].numpy(), logits, atol=1e-4)


def test_outputs_at_initialisation(model, images):
    out = model(images, training=False)
    shapes = {"image_logits": (2, K), "image_probs": (2, K), "saliency": (2, 16, 16, K),
              "crop_logits": (2, K), "crop_probs": (2, K), "confidences": (2, 395, K),
              "boxes": (2, 395, K, 4), "picked_boxes": (2, K, 4), "rpn_map": (2, 16, 16, K),
              "fused_map": (2, 16, 16, K)}
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
    assert all(v.dtype == tf.float32 for v in out.values())
    out = {k: v.numpy() for k, v in out.items()}
    # Zero-initialised regressor: refined boxes are the proposals.
    np.testing.assert_allclose(out["boxes"], np.broadcast_to(
        proposal_boxes(64)[None, :, None], (2, 395, K, 4)), atol=1e-5)
    # Inference pick: the box of the largest confidence.
    best = out["confidences"].argmax(axis=1)
    for b in range(2):
        for k in range(K):
            np.testing.assert_array_equal(out["picked_boxes"][b, k], out["boxes"][b, best[b, k], k])
    # Maps: x_RPN from the confidences and boxes, x_FS = sigmoid(x_S) * x_RPN, min-max.
    rpn = detection.rasterize_boxes(out["boxes"], out["confidences"], 64, 16).numpy()
    fused = out["saliency"] * rpn

    def minmax(x):
        low, high = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
        return (x - low) / (high - low)
    np.testing.assert_allclose(out["rpn_map"], minmax(rpn), atol=1e-4)
    np.testing.assert_allclose(out["fused_map"], minmax(fused), atol=1e-4)
    np.testing.assert_allclose(out["image_probs"], 1 / (1 + np.exp(-out["image_logits"])),
                               atol=1e-6)
    assert model.get_layer("classification").name == "classification"
    assert model.get_layer("detection").get_layer("gumbel_pick").tau.trainable is False


def _gradients(model, images):
    """Gradient magnitudes of the crop loss and of the image loss, by variable path."""
    labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)[..., None]
    with tf.GradientTape(persistent=True) as tape:
        out = model(images, training=True)
        losses = {key: tf.reduce_sum(keras.losses.binary_crossentropy(
            labels, out[key][..., None], from_logits=True)) for key in ("crop_logits",
                                                                        "image_logits")}
    variables = model.trainable_variables
    result = {}
    for key, loss in losses.items():
        grads = tape.gradient(loss, variables)
        result[key] = {v.path: 0.0 if g is None else float(tf.reduce_sum(tf.abs(g)))
                       for v, g in zip(variables, grads)}
    return result


def _norm(grads, fragment):
    matches = [g for path, g in grads.items() if fragment in path]
    assert matches, f"no variable matching {fragment} in {list(grads)}"
    return sum(matches)


def test_gradients_reach_every_trained_part(model, images):
    grads = _gradients(model, images)
    crop, image = grads["crop_logits"], grads["image_logits"]
    # l_RPN trains the detection module: confidences (straight-through), regressor (through the
    # crop of the picked box), the detection conv, the crop backbone and heads...
    for part in ("det_confidence", "det_deltas", "det_conv", "crop_head1_dense",
                 "crop_head2_dense", "tiny_res_conv0", "tiny_res_conv1"):
        assert _norm(crop, part) > 0, part
        assert _norm(image, part) == 0, part
    # ... and reaches the classification module through the RoI features f_k only: the gate
    # sigmoid(RoIAlign(x_S)) is detached and z~ has no y~ (crop_residual=False, erratum 2).
    for part in ("fpn_class_conv1", "fpn_lateral", "tiny_dense_conv0"):
        assert _norm(crop, part) > 0, part
    assert _norm(crop, "fpn_class_conv2") == 0 and _norm(crop, "lse_pool/beta") == 0
    # l_CLS trains the saliency head, the FPN, the LSE sharpness and the backbone.
    for part in ("fpn_class_conv1", "fpn_class_conv2", "fpn_lateral", "lse_pool/beta",
                 "tiny_dense_conv0", "tiny_dense_conv3"):
        assert _norm(image, part) > 0, part


@pytest.mark.slow
def test_crop_residual_lets_the_crop_loss_reach_the_saliency(images):
    crop = _gradients(tiny_model(crop_residual=True), images)["crop_logits"]
    assert _norm(crop, "fpn_class_conv2") > 0 and _norm(crop, "lse_pool/beta") > 0


def test_options_build(images):
    out = tiny_model(roi_features="x_fpn", map_resolution="image", confidence="softmax",
                     leaky_scope="all", sampler="gather", crop="glimpse")(images, training=True)
    assert out["confidences"].shape == (2, 395, K) and out["fused_map"].shape == (2, 64, 64, K)
    rpn = out["rpn_map"].numpy()
    assert rpn.min() >= 0 and rpn.max() <= 1 + 1e-6


def test_keras_round_trip(model, images, tmp_path):
    model.get_layer("detection").get_layer("gumbel_pick").tau.assign(0.05)
    path = tmp_path / "hermoza.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert float(loaded.get_layer("detection").get_layer("gumbel_pick").tau.numpy()) == \
        pytest.approx(0.05)
    expected, got = model(images, training=False), loaded(images, training=False)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-5,
                                   err_msg=key)


def test_parameter_counts_at_512():
    """Keras DenseNet-121 taps, K = 14, Q = 256, 128 per class, a crop backbone with 512 output
    channels: the counts of the brief (§3, §4), derived layer by layer."""
    densenet = keras.applications.DenseNet121(weights=None, include_top=False,
                                              input_shape=(512, 512, 3))
    crop_backbone = tiny_crop_backbone(64, 512)
    model = build_hermoza2020(image_size=512, backbone=densenet, crop_backbone=crop_backbone)
    k, q, d = 14, 256, 128
    laterals = (256 + 512 + 1024 + 1024) * q + 4 * q
    saliency = 4 * k * (q + d) + k * q * d + k * d * 1 + k  # BNs, kernels, LSE beta
    assert model.get_layer("classification").count_params() == \
        densenet.count_params() + laterals + saliency == 8_241_486
    det = model.get_layer("detection")

    def params(prefix):
        return sum(layer.count_params() for layer in det.layers if layer.name.startswith(prefix))
    assert params("det_") == (9 * d * 64 + 64) + 64 + (64 * 4 + 4) == 74_116
    assert params("crop_head") == (4 * k * 1024 + k * (1024 * 512 + 512) + 4 * k * 512
                                   + k * (512 + 1)) == 7_440_398
    assert model.output["boxes"].shape == (None, 395, k, 4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="leaky_scope must be one of .* got 'none'"):
        tiny_model(leaky_scope="none")
    with pytest.raises(ValueError, match="image_size must be a multiple of 32, got 48"):
        tiny_model(image_size=48)
    with pytest.raises(ValueError, match="taps must contain"):
        fpn_saliency_head({"relu": keras.Input((2, 2, 3))})
