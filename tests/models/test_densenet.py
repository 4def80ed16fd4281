"""Tests of chestxray_tf/models/densenet.py: DenseNet-121 as keras.applications.DenseNet121."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from chestxray_tf.models.densenet import (DENSENET_121, DENSENET_TINY, DENSENETS,
                                          build_densenet, densenet, feature_taps)

# Weights do not depend on the input size: a small input keeps the tests fast.
SMALL = (64, 64, 3)
DENSENET121_NOTOP_PARAMS = 7_037_504  # Keras' count, BN moving statistics included
# Keras leaves these unnamed (zero_padding2d, zero_padding2d_1, ...); ours are named.
UNNAMED_IN_KERAS = (keras.layers.InputLayer, keras.layers.ZeroPadding2D)


@pytest.fixture(scope="module")
def keras_densenet121():
    """Keras' DenseNet121 without top, every weight random (BN statistics included)."""
    model = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=SMALL)
    rng = np.random.default_rng(0)
    model.set_weights([
        (rng.uniform(0.5, 1.5, w.shape) if w.path.endswith("moving_variance")
         else rng.normal(0.0, 0.05, w.shape)).astype(np.float32) for w in model.weights])
    return model


@pytest.fixture(scope="module")
def ours121():
    return densenet(SMALL)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).uniform(-1.0, 1.0, (2,) + SMALL).astype(np.float32)


def named_layers(model):
    return [(layer.name, type(layer).__name__) for layer in model.layers
            if not isinstance(layer, UNNAMED_IN_KERAS)]


def test_layers_and_weights_are_those_of_keras_densenet121(keras_densenet121, ours121):
    assert len(ours121.layers) == len(keras_densenet121.layers) == 427
    assert named_layers(ours121) == named_layers(keras_densenet121)
    assert ([(w.path, tuple(w.shape)) for w in ours121.weights]
            == [(w.path, tuple(w.shape)) for w in keras_densenet121.weights])
    assert ours121.count_params() == keras_densenet121.count_params() == DENSENET121_NOTOP_PARAMS
    epsilons = {layer.epsilon for layer in ours121.layers
                if isinstance(layer, keras.layers.BatchNormalization)}
    assert epsilons == {1.001e-5}
    assert ours121.layers[-1].name == "relu" and ours121.input.name == "image"


@pytest.mark.parametrize("filename", ["densenet121.weights.h5", "densenet121.h5"])
def test_keras_densenet121_weights_file_loads_with_identical_outputs(
        keras_densenet121, image, tmp_path, filename):
    path = tmp_path / filename
    if filename.endswith(".weights.h5"):
        keras_densenet121.save_weights(path)
    else:
        keras_densenet121.save(path)  # legacy HDF5, the format of Keras' ImageNet files
    ours = densenet(SMALL, weights=str(path))
    expected = keras_densenet121.predict(image, verbose=0)
    assert np.abs(expected).max() > 0.1  # a non-trivial feature map
    np.testing.assert_allclose(ours.predict(image, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_weights_come_from_keras_densenet121(keras_densenet121, image, monkeypatch):
    # No download in tests: stand in for Keras' ImageNet loader and check what it is asked for.
    calls = []

    def fake_densenet121(**kwargs):
        calls.append(kwargs)
        return keras_densenet121

    monkeypatch.setattr(keras.applications, "DenseNet121", fake_densenet121)
    ours = build_densenet("densenet121", SMALL, weights="imagenet")
    assert calls == [{"include_top": False, "weights": "imagenet", "input_shape": SMALL}]
    np.testing.assert_allclose(ours.predict(image, verbose=0),
                               keras_densenet121.predict(image, verbose=0), rtol=1e-5, atol=1e-5)


def test_tap_shapes_at_256_px():
    taps = ("pool2_relu", "conv3_block12_concat", "pool3_relu", "pool4_relu", "relu")
    model = feature_taps(densenet((256, 256, 3)), taps)
    assert [tuple(shape) for shape in model.output_shape] == [
        (None, 64, 64, 256), (None, 32, 32, 512), (None, 32, 32, 512), (None, 16, 16, 1024),
        (None, 8, 8, 1024)]
    assert model.name == "densenet121"


def test_feature_taps_share_the_backbone_layers(image):
    backbone = build_densenet("densenet_tiny", SMALL)
    taps = feature_taps(backbone, ("pool3_relu", "relu"), name="taps")
    pool3, relu = taps(image)
    np.testing.assert_allclose(relu, backbone(image), rtol=1e-6)
    assert pool3.shape == (2, 8, 8, 20) and taps.name == "taps"
    # The taps follow the backbone's weights (shared layers, not a copy).
    layer = backbone.get_layer("conv1_conv")
    layer.set_weights([w + 0.1 for w in layer.get_weights()])
    np.testing.assert_allclose(taps(image)[1], backbone(image), rtol=1e-6)


def test_tiny_variant_has_the_same_structure():
    tiny = build_densenet("densenet_tiny", SMALL)
    names = {layer.name for layer in tiny.layers}
    for stage in ("conv2", "conv3", "conv4", "conv5"):
        assert f"{stage}_block1_concat" in names and f"{stage}_block2_concat" not in names
    # Channels: stem 16, +8 per conv block, halved by each transition.
    shapes = {tap: tiny.get_layer(tap).output.shape[1:]
              for tap in ("pool2_relu", "pool3_relu", "pool4_relu", "relu")}
    assert shapes == {"pool2_relu": (16, 16, 24), "pool3_relu": (8, 8, 20),
                      "pool4_relu": (4, 4, 18), "relu": (2, 2, 17)}
    assert tiny.count_params() < 20_000


def test_kernel_regularizer_on_every_convolution():
    regularizer = keras.regularizers.L2(1e-3)
    model = build_densenet("densenet_tiny", SMALL, kernel_regularizer=regularizer)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 1 + 4 * 2 + 3  # stem + two per conv block + one per transition
    assert len(model.losses) == len(convs)
    expected = sum(1e-3 * np.sum(np.square(layer.kernel.numpy())) for layer in convs)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_weights_saved_from_our_densenet_reload(tmp_path, image):
    model = build_densenet("densenet_tiny", SMALL)
    model.set_weights([w + 0.01 for w in model.get_weights()])
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    reloaded = build_densenet("densenet_tiny", SMALL, weights=path)
    np.testing.assert_allclose(reloaded.predict(image, verbose=0), model.predict(image, verbose=0),
                               rtol=1e-6)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="ImageNet weights exist only for DenseNet-121"):
        build_densenet("densenet_tiny", SMALL, weights="imagenet")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_densenet("densenet_tiny", SMALL, weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="weights.ckpt"):
        build_densenet("densenet_tiny", SMALL, weights=str(tmp_path / "weights.ckpt"))
    with pytest.raises(ValueError, match=r"blocks=\(6, 12, 24\)"):
        densenet(SMALL, blocks=(6, 12, 24))
    with pytest.raises(ValueError, match="growth_rate=0"):
        densenet(SMALL, growth_rate=0)
    with pytest.raises(ValueError, match="stem_width=2.5"):
        densenet(SMALL, stem_width=2.5)
    with pytest.raises(ValueError, match="unknown DenseNet 'densenet169'"):
        build_densenet("densenet169", SMALL)
    tiny = build_densenet("densenet_tiny", SMALL)
    with pytest.raises(ValueError, match=r"\['pool9_relu'\] are not layers"):
        feature_taps(tiny, ("relu", "pool9_relu"))
    with pytest.raises(ValueError, match="taps must be a non-empty sequence"):
        feature_taps(tiny, "relu")
    assert set(DENSENETS) == {"densenet121", "densenet_tiny"}
    assert DENSENET_121 == {"blocks": (6, 12, 24, 16), "growth_rate": 32, "stem_width": 64}
    assert DENSENET_TINY["stem_width"] >= 16


ODD_BATCHES = """
import keras, tensorflow as tf
from chestxray_tf.models.densenet import build_densenet
model = build_densenet("densenet_tiny", input_shape=(64, 64, 3))
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
    """In a subprocess (heap corruption kills the process; see DENSENET_TINY)."""
    result = subprocess.run([sys.executable, "-c", ODD_BATCHES], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-2000:]
