"""Tests of the anti-aliased ResNet-v2 of chestxray_tf/models/backbones.py (`antialias=True`,
Rozenberg et al. 2019 Sec. 3.3 after Zhang 2019; layout of brief §3.2)."""

import keras
import numpy as np
import pytest

from chestxray_tf.models.resnet_v2 import RESNET_V2_50, RESNET_V2_TINY, resnet_v2
from chestxray_tf.models.blur_pool import BlurPool2D

SMALL = (64, 64, 3)


def randomise(model, seed=0):
    """Kernels keep their Glorot initialisation (so the image signal reaches the output);
    biases, BN scales, offsets and statistics become random (variances positive)."""
    rng = np.random.default_rng(seed)

    def value(w):
        if w.path.endswith("kernel"):
            return w.numpy()
        if w.path.endswith(("moving_variance", "gamma")):
            return rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
        return rng.normal(0.0, 0.1, w.shape).astype(np.float32)

    model.set_weights([value(w) for w in model.weights])
    return model


def weighted(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).uniform(-1.0, 1.0, (2,) + SMALL).astype(np.float32)


def test_blur_layers_sit_at_exactly_the_stride_2_steps():
    model = resnet_v2(SMALL, antialias=True, **RESNET_V2_50)
    blurs = [layer.name for layer in model.layers if isinstance(layer, BlurPool2D)]
    last = {"conv2": 3, "conv3": 4, "conv4": 6}
    assert sorted(blurs) == sorted(["pool1_blur"] + [
        f"{stage}_block{n}_{part}_blur" for stage, n in last.items() for part in (0, 2)])
    strided = [layer.name for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D))
               and tuple(layer.strides) != (1, 1)]
    assert strided == ["conv1_conv"]  # only the stem conv still strides (Zhang's pool_only)
    assert not any(name.endswith("_0_pool") for name in (layer.name for layer in model.layers))
    stem = resnet_v2(SMALL, antialias=True, blur_stem_conv=True, **RESNET_V2_TINY)
    assert [layer.name for layer in stem.layers if isinstance(layer, BlurPool2D)][:2] == [
        "conv1_blur", "pool1_blur"]  # the stem is a chain: topological order is fixed
    assert stem.get_layer("conv1_conv").strides == (1, 1)


@pytest.mark.parametrize("structure", [RESNET_V2_50, RESNET_V2_TINY])
@pytest.mark.parametrize("blur_stem_conv", [False, True])
def test_same_weighted_layers_and_output_shape_as_the_plain_backbone(structure, blur_stem_conv):
    plain = resnet_v2(SMALL, **structure)
    aa = resnet_v2(SMALL, antialias=True, blur_stem_conv=blur_stem_conv, **structure)
    assert aa.output_shape == plain.output_shape
    assert aa.count_params() == plain.count_params()
    assert {name: [w.shape for w in layer.weights] for name, layer in weighted(aa).items()} == {
        name: [w.shape for w in layer.weights] for name, layer in weighted(plain).items()}
    assert resnet_v2((512, 512, 3), antialias=True, **structure).output_shape[1:3] == (16, 16)
    assert resnet_v2((96, 72, 3), antialias=True, **structure).output_shape[1:3] == (3, 3)


@pytest.mark.parametrize("blur_stem_conv", [False, True])
def test_blur_size_1_equals_the_plain_backbone(image, blur_stem_conv):
    """Blur of size 1 is plain subsampling; stride-1 conv/max-pool + subsample = strided."""
    plain = randomise(resnet_v2(SMALL, **RESNET_V2_TINY))
    aa = resnet_v2(SMALL, antialias=True, blur_size=1, blur_stem_conv=blur_stem_conv,
                   **RESNET_V2_TINY)
    for name, layer in weighted(plain).items():
        aa.get_layer(name).set_weights(layer.get_weights())
    expected = plain.predict(image, verbose=0)
    assert np.abs(expected[0] - expected[1]).max() > 0.1  # the output depends on the image
    np.testing.assert_allclose(aa.predict(image, verbose=0), expected, rtol=1e-5, atol=1e-5)
    blurred = resnet_v2(SMALL, antialias=True, **RESNET_V2_TINY)
    for name, layer in weighted(plain).items():
        blurred.get_layer(name).set_weights(layer.get_weights())
    out = blurred.predict(image, verbose=0)
    assert np.all(np.isfinite(out)) and np.abs(out - expected).max() > 1e-3


def test_plain_weights_file_loads_by_name_with_identical_kernels(tmp_path):
    plain = randomise(resnet_v2(SMALL, **RESNET_V2_TINY, name="resnet_v2_tiny"))
    path = tmp_path / "plain.weights.h5"
    plain.save_weights(path)
    aa = resnet_v2(SMALL, antialias=True, weights=str(path), **RESNET_V2_TINY)
    for name, layer in weighted(plain).items():
        for ours, theirs in zip(aa.get_layer(name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_imagenet_weights_come_from_keras_resnet50v2_by_name(monkeypatch):
    # No download in tests: stand in for Keras' ImageNet loader.
    source = randomise(keras.applications.ResNet50V2(include_top=False, weights=None,
                                                     input_shape=SMALL))
    calls = []

    def fake_resnet50v2(**kwargs):
        calls.append(kwargs)
        return source

    monkeypatch.setattr(keras.applications, "ResNet50V2", fake_resnet50v2)
    aa = resnet_v2(SMALL, antialias=True, weights="imagenet", **RESNET_V2_50)
    assert calls == [{"include_top": False, "weights": "imagenet", "input_shape": SMALL}]
    for layer in weighted(source).values():
        for ours, theirs in zip(aa.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_keras_round_trip(tmp_path, image):
    model = randomise(resnet_v2(SMALL, antialias=True, blur_stem_conv=True, **RESNET_V2_TINY))
    path = tmp_path / "aa.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(restored.predict(image, verbose=0),
                               model.predict(image, verbose=0), rtol=1e-6, atol=1e-6)


def test_blur_stem_conv_needs_antialias():
    with pytest.raises(ValueError, match="blur_stem_conv=True needs antialias=True"):
        resnet_v2(SMALL, blur_stem_conv=True, **RESNET_V2_TINY)
