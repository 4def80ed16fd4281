"""Tests of chestxray_tf/models/rozenberg2019.py (Rozenberg et al. 2019 Sec. 3.3, Fig. 3)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.rozenberg2019 import rozenberg2019_loss
from chestxray_tf.models.blur_pool import BlurPool2D
from chestxray_tf.models.li2018 import build_li2018
from chestxray_tf.models.pac_crf import PacCrf
from chestxray_tf.models.rozenberg2019 import build_rozenberg2019, crf_layers

TINY = {"image_size": 64, "grid": 8, "num_classes": 3, "backbone": "resnet_v2_tiny",
        "head_width": 8, "crf_window": 5, "crf_steps": 2}


@pytest.fixture(scope="module")
def model():
    return build_rozenberg2019(**TINY)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)


def test_outputs(model, image):
    out = model(image, training=False)
    assert {key: tuple(value.shape) for key, value in out.items()} == {
        "patch_probs": (2, 8, 8, 3), "z": (2, 8, 8, 3), "image_probs": (2, 3),
        "thresholds": (2, 4, 3)}
    assert all(value.dtype == "float32" for value in out.values())
    np.testing.assert_allclose(out["image_probs"], np.mean(out["z"], axis=(1, 2)), rtol=1e-6)
    # W ~ 0 at initialisation: the CRF starts at z ≈ p.
    np.testing.assert_allclose(out["z"], out["patch_probs"], atol=1e-2)
    model.get_layer("crf").compatibility.assign(np.zeros((25, 3, 3), np.float32))
    np.testing.assert_allclose(model(image)["z"], model(image)["patch_probs"], atol=1e-6)


def test_antialiased_backbone_and_li_weights_by_name(model):
    backbone = model.get_layer("resnet_v2_tiny")
    assert sum(isinstance(layer, BlurPool2D) for layer in backbone.layers) == 7
    li = build_li2018(image_size=64, grid=8, num_classes=3, backbone="resnet_v2_tiny",
                      head_width=8)
    li_weights = {w.path: w.shape for w in li.weights}
    ours = {w.path: w.shape for w in model.weights}
    assert li_weights.items() <= ours.items()  # Li's checkpoint initialises the unary branch
    assert {layer.name for layer in crf_layers(model)} == {
        "crf", "crf_features_resize", "crf_features_conv1", "crf_features_relu1",
        "crf_features_bn1", "crf_features_conv2", "crf_features_relu2", "crf_features_bn2"}


def test_without_crf_z_is_p_and_plain_backbone(image):
    plain = build_rozenberg2019(**{**TINY, "crf": False, "antialias": False})
    out = plain(image)
    np.testing.assert_array_equal(out["z"], out["patch_probs"])
    assert not any(isinstance(layer, PacCrf) for layer in plain.layers)
    assert not any(isinstance(layer, BlurPool2D)
                   for layer in plain.get_layer("resnet_v2_tiny").layers)


def test_a_training_step_with_the_loss_has_finite_gradients(model, image):
    rng = np.random.default_rng(1)
    labels = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    has_box = np.array([[1, 0, 0], [0, 0, 0]], np.float32)
    box_mask = (rng.random((2, 8, 8, 3)) < 0.3).astype(np.float32)
    with tf.GradientTape() as tape:
        out = model(image, training=True)
        loss = tf.reduce_mean(rozenberg2019_loss(labels, box_mask, has_box, out["z"],
                                                 out["thresholds"], gamma=0.2))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert len(gradients) == len(model.trainable_variables) > 0
    assert all(g is not None and np.all(np.isfinite(g)) for g in gradients)
    assert float(loss) > 0


def test_keras_round_trip(model, image, tmp_path):
    model.get_layer("thresholds").assign(np.full((4, 3), 0.25, np.float32))
    model.save(tmp_path / "rozenberg.keras")
    restored = keras.saving.load_model(tmp_path / "rozenberg.keras")
    expected, got = model.predict(image, verbose=0), restored.predict(image, verbose=0)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["thresholds"][0], np.full((4, 3), 0.25))


def test_crf_part_has_the_briefs_parameter_count_at_full_width():
    """P = 20, K = 14, window 19, widths (32, 14): W 70,756 + w_u 1 + branch 5,126 (§3.3)."""
    full = build_rozenberg2019(image_size=64, backbone="resnet_v2_tiny", head_width=8)
    assert sum(layer.count_params() for layer in crf_layers(full)) == 75_883
    assert full.output["z"].shape[1:] == (20, 20, 14)
