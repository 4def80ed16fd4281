"""Tests of chestxray_tf/models/backbones.py: ResNet-v2-50 as keras.applications.ResNet50V2."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from chestxray_tf.models.backbones import BACKBONES, build_backbone

# Weights do not depend on the input size: a small input keeps the tests fast.
SMALL = (64, 64, 3)
RESNET50V2_NOTOP_PARAMS = 23_564_800


@pytest.fixture(scope="module")
def keras_resnet50v2():
    """Keras' ResNet50V2 without top, every weight random (BN statistics included)."""
    model = keras.applications.ResNet50V2(include_top=False, weights=None, input_shape=SMALL)
    rng = np.random.default_rng(0)
    model.set_weights([
        (rng.uniform(0.5, 1.5, w.shape) if w.path.endswith("moving_variance")
         else rng.normal(0.0, 0.05, w.shape)).astype(np.float32) for w in model.weights])
    return model


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).uniform(-1.0, 1.0, (2,) + SMALL).astype(np.float32)


def test_parameter_count_equals_keras_resnet50v2(keras_resnet50v2):
    ours = build_backbone("resnet_v2_50", SMALL)
    assert keras_resnet50v2.count_params() == RESNET50V2_NOTOP_PARAMS
    assert ours.count_params() == RESNET50V2_NOTOP_PARAMS


@pytest.mark.parametrize("filename", ["resnet50v2.weights.h5", "resnet50v2.h5"])
def test_keras_resnet50v2_weights_file_loads_with_identical_outputs(
        keras_resnet50v2, image, tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".weights.h5"):
        keras_resnet50v2.save_weights(path)
    else:
        keras_resnet50v2.save(path)  # legacy HDF5, the format of Keras' ImageNet files
    ours = build_backbone("resnet_v2_50", SMALL, weights=str(path))
    expected = keras_resnet50v2.predict(image, verbose=0)
    assert np.abs(expected).max() > 0.1  # a non-trivial feature map
    np.testing.assert_allclose(ours.predict(image, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_imagenet_weights_come_from_keras_resnet50v2(keras_resnet50v2, image, monkeypatch):
    # No download in tests: stand in for Keras' ImageNet loader and check what it is asked for.
    calls = []

    def fake_resnet50v2(**kwargs):
        calls.append(kwargs)
        return keras_resnet50v2

    monkeypatch.setattr(keras.applications, "ResNet50V2", fake_resnet50v2)
    ours = build_backbone("resnet_v2_50", SMALL, weights="imagenet")
    assert calls == [{"include_top": False, "weights": "imagenet", "input_shape": SMALL}]
    np.testing.assert_allclose(ours.predict(image, verbose=0),
                               keras_resnet50v2.predict(image, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, channels", [("resnet_v2_50", 2048), ("resnet_v2_tiny", 256)])
def test_stride_32_output(name, channels):
    assert build_backbone(name, (512, 512, 3)).output_shape == (None, 16, 16, channels)
    assert build_backbone(name, (96, 64, 3)).output_shape == (None, 3, 2, channels)


def test_tiny_variant_has_the_same_structure():
    tiny = build_backbone("resnet_v2_tiny", SMALL)
    names = {layer.name for layer in tiny.layers}
    for stage in ("conv2", "conv3", "conv4", "conv5"):
        assert f"{stage}_block1_0_conv" in names and f"{stage}_block2_0_conv" not in names
    assert tiny.layers[-1].name == "post_relu"
    assert tiny.count_params() < 200_000


def test_kernel_regularizer_on_every_convolution():
    regularizer = keras.regularizers.L2(1e-3)
    model = build_backbone("resnet_v2_tiny", SMALL, kernel_regularizer=regularizer)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 4 * 4  # stem + (shortcut and three convs) per block
    assert len(model.losses) == len(convs)
    expected = sum(1e-3 * np.sum(np.square(layer.kernel.numpy())) for layer in convs)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_weights_saved_from_our_backbone_reload(tmp_path, image):
    model = build_backbone("resnet_v2_tiny", SMALL)
    model.set_weights([w + 0.01 for w in model.get_weights()])
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    reloaded = build_backbone("resnet_v2_tiny", SMALL, weights=path)
    np.testing.assert_allclose(reloaded.predict(image, verbose=0), model.predict(image, verbose=0),
                               rtol=1e-6)


def test_bad_weights_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ImageNet weights exist only for ResNet-v2-50"):
        build_backbone("resnet_v2_tiny", SMALL, weights="imagenet")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_backbone("resnet_v2_tiny", SMALL, weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="weights.ckpt"):
        build_backbone("resnet_v2_tiny", SMALL, weights=str(tmp_path / "weights.ckpt"))


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'resnet_v3'"):
        build_backbone("resnet_v3", SMALL)
    assert set(BACKBONES) >= {"resnet_v2_50", "resnet_v2_tiny"}


ODD_BATCHES = """
import keras, tensorflow as tf
from chestxray_tf.models.backbones import build_backbone
model = build_backbone("resnet_v2_tiny", input_shape=(64, 64, 3))
optimizer = keras.optimizers.Adam()

@tf.function
def step(images):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(images, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))

for batch in (3, 5, 1, 7):
    for _ in range(5):
        step(tf.random.normal([batch, 64, 64, 3]))
print("trained")
"""


def test_tiny_variant_trains_with_odd_batch_sizes_on_cpu():
    """In a subprocess (heap corruption kills the process): with an 8-wide stem, oneDNN's
    1x1 stride-2 convolution corrupted the heap on odd batches (uxlfoundation/oneDNN#6035)."""
    result = subprocess.run([sys.executable, "-c", ODD_BATCHES], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-2000:]
