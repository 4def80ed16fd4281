"""Tests of chestxray_tf/models/resnet.py: ResNet v1 (basic and bottleneck blocks)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from chestxray_tf.models.resnet import (RESNET18, RESNET18_TINY, RESNET34, RESNET50,
                                        RESNET50_TINY, resnet_v1, stage_output_names,
                                        stage_outputs_model)

SMALL = (64, 64, 3)
# torchvision resnet18 / resnet34 parameters (weights and BN affine) minus the fc layer
# (512 * 1000 + 1000): 11,689,512 - 513,000 and 21,797,672 - 513,000.
TORCHVISION_RESNET18_NO_FC = 11_176_512
TORCHVISION_RESNET34_NO_FC = 21_284_672


@pytest.fixture(scope="module")
def keras_resnet50():
    """Keras' ResNet50 without top, every weight random (BN statistics included)."""
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=SMALL)
    rng = np.random.default_rng(0)
    model.set_weights([
        (rng.uniform(0.5, 1.5, w.shape) if w.path.endswith("moving_variance")
         else rng.normal(0.0, 0.05, w.shape)).astype(np.float32) for w in model.weights])
    return model


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).uniform(-1.0, 1.0, (2,) + SMALL).astype(np.float32)


def test_resnet50_layers_equal_keras_resnet50(keras_resnet50):
    ours = resnet_v1(SMALL, **RESNET50)
    assert [layer.name for layer in ours.layers][1:] == [l.name for l in keras_resnet50.layers][1:]
    assert [w.shape for w in ours.weights] == [w.shape for w in keras_resnet50.weights]
    assert ours.count_params() == keras_resnet50.count_params() == 23_587_712
    for name in stage_output_names(RESNET50["blocks"]):
        assert ours.get_layer(name).output.shape == keras_resnet50.get_layer(name).output.shape


def test_resnet50_weights_file_gives_keras_outputs(keras_resnet50, image, tmp_path):
    path = tmp_path / "resnet50.h5"
    keras_resnet50.save(path)  # legacy HDF5, the format of Keras' ImageNet files
    ours = resnet_v1(SMALL, **RESNET50, weights=str(path))
    expected = keras_resnet50.predict(image, verbose=0)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(ours.predict(image, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_imagenet_weights_come_from_keras_resnet50(keras_resnet50, image, monkeypatch):
    calls = []

    def fake_resnet50(**kwargs):
        calls.append(kwargs)
        return keras_resnet50

    monkeypatch.setattr(keras.applications, "ResNet50", fake_resnet50)
    ours = resnet_v1(SMALL, **RESNET50, weights="imagenet")
    assert calls == [{"include_top": False, "weights": "imagenet", "input_shape": SMALL}]
    np.testing.assert_allclose(ours.predict(image, verbose=0),
                               keras_resnet50.predict(image, verbose=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config, expected", [(RESNET18, TORCHVISION_RESNET18_NO_FC),
                                              (RESNET34, TORCHVISION_RESNET34_NO_FC)])
def test_basic_resnets_have_torchvision_parameter_counts(config, expected):
    model = resnet_v1(SMALL, **config)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == expected
    bn_channels = sum(layer.gamma.shape[0] for layer in model.layers
                      if isinstance(layer, keras.layers.BatchNormalization))
    assert model.count_params() == expected + 2 * bn_channels  # + moving mean and variance
    assert not any(getattr(layer, "use_bias", False) for layer in model.layers)


@pytest.mark.parametrize("config, taps", [
    (RESNET50, [(128, 128, 256), (64, 64, 512), (32, 32, 1024), (16, 16, 2048)]),
    (RESNET18, [(128, 128, 64), (64, 64, 128), (32, 32, 256), (16, 16, 512)]),
    (RESNET18_TINY, [(32, 32, 16), (16, 16, 16), (8, 8, 32), (4, 4, 64)]),
])
def test_stage_output_shapes(config, taps):
    size = 512 if config in (RESNET50, RESNET18) else 128
    model = resnet_v1((size, size, 3), **config)
    stages = stage_outputs_model(model)
    assert [tuple(t.shape[1:]) for t in stages.outputs] == taps
    assert model.output_shape[1:] == taps[-1]


def test_stage_outputs_share_the_backbone(image):
    model = resnet_v1(SMALL, **RESNET50_TINY)
    stages = stage_outputs_model(model)
    outputs = stages.predict(image, verbose=0)
    assert len(outputs) == 4 and len(stages.weights) == len(model.weights)
    np.testing.assert_allclose(outputs[-1], model.predict(image, verbose=0), rtol=1e-6)


def test_strides_option_keeps_resolution():
    model = resnet_v1((128, 128, 3), **RESNET18_TINY, strides=(1, 2, 2, 1))
    assert model.output_shape == (None, 8, 8, 64)


@pytest.mark.parametrize("config", [RESNET18_TINY, RESNET50_TINY])
def test_local_weights_file_round_trip(config, image, tmp_path):
    model = resnet_v1(SMALL, **config)
    model.set_weights([w + 0.01 for w in model.get_weights()])
    path = tmp_path / "tiny.weights.h5"
    model.save_weights(path)
    reloaded = resnet_v1(SMALL, **config, weights=path)
    expected = model.predict(image, verbose=0)
    assert np.abs(expected).max() > 0.01
    np.testing.assert_allclose(reloaded.predict(image, verbose=0), expected, rtol=1e-6)
    assert np.abs(resnet_v1(SMALL, **config).predict(image, verbose=0) - expected).max() > 1e-3


def test_tiny_variants_are_small():
    assert resnet_v1(SMALL, **RESNET18_TINY).count_params() < 200_000
    assert resnet_v1(SMALL, **RESNET50_TINY).count_params() < 200_000


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="only for ResNet-50 v1"):
        resnet_v1(SMALL, **RESNET18, weights="imagenet")
    with pytest.raises(ValueError, match="only for ResNet-50 v1"):
        resnet_v1(SMALL, **RESNET50_TINY, weights="imagenet")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        resnet_v1(SMALL, **RESNET18_TINY, weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="weights.ckpt"):
        resnet_v1(SMALL, **RESNET18_TINY, weights=str(tmp_path / "weights.ckpt"))
    with pytest.raises(ValueError, match="block must be one of .* got 'wide'"):
        resnet_v1(SMALL, block="wide")
    with pytest.raises(ValueError, match=r"blocks=\(2, 2, 2\)"):
        resnet_v1(SMALL, block="basic", blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="stem_width"):
        resnet_v1(SMALL, block="basic", stem_width=0)


ODD_BATCHES = """
import keras, tensorflow as tf
from chestxray_tf.models.resnet import RESNET18_TINY, RESNET50_TINY, resnet_v1
for config in (RESNET18_TINY, RESNET50_TINY):
    model = resnet_v1((64, 64, 3), **config)
    optimizer = keras.optimizers.Adam()

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(images, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))

    for batch in (3, 5, 1, 7):
        for _ in range(3):
            step(tf.random.normal([batch, 64, 64, 3]))
print("trained")
"""


@pytest.mark.slow
def test_tiny_variants_train_with_odd_batch_sizes_on_cpu():
    """In a subprocess (heap corruption kills the process), as test_backbones.py does for the
    tiny ResNet-v2: every strided convolution of the tiny v1 variants is >= 16 wide."""
    result = subprocess.run([sys.executable, "-c", ODD_BATCHES], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-2000:]
