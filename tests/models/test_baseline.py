"""Tests of chestxray_tf/models/baseline.py."""

import numpy as np

from chestxray_tf.models.baseline import build_baseline

TINY = {"image_size": 64, "backbone": "resnet_v2_tiny", "num_classes": 3}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_outputs(features, kernel, bias):
    """GAP + dense sigmoid and the CAM, with explicit loops: features [B, h, w, C]."""
    batch, height, width, channels = features.shape
    classes = kernel.shape[1]
    probs = np.zeros((batch, classes))
    cam = np.zeros((batch, height, width, classes))
    for b in range(batch):
        for k in range(classes):
            pooled_logit = bias[k]
            for c in range(channels):
                pooled_logit += kernel[c, k] * features[b, :, :, c].sum() / (height * width)
            probs[b, k] = sigmoid(pooled_logit)
            for i in range(height):
                for j in range(width):
                    cam[b, i, j, k] = sigmoid(bias[k] + sum(
                        kernel[c, k] * features[b, i, j, c] for c in range(channels)))
    return probs, cam


def test_output_shapes_and_ranges():
    model = build_baseline(**TINY)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    outputs = model(images, training=False)
    assert tuple(outputs["image_probs"].shape) == (2, 3)
    assert tuple(outputs["cam"].shape) == (2, 2, 2, 3)   # 64 px / stride 32
    for value in outputs.values():
        value = value.numpy()
        assert value.dtype == np.float32
        assert np.all((value >= 0) & (value <= 1))


def test_matches_loop_reference():
    model = build_baseline(**TINY)
    rng = np.random.default_rng(1)
    classifier = model.get_layer("classifier")
    # Non-zero bias so that a missing or doubled bias would show.
    channels = classifier.kernel.shape[0]
    classifier.set_weights([rng.normal(0, 0.1, (channels, 3)).astype("float32"),
                            rng.normal(0, 0.5, 3).astype("float32")])
    images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    features = model.get_layer("resnet_v2_tiny")(images, training=False).numpy()
    kernel, bias = classifier.get_weights()
    want_probs, want_cam = reference_outputs(features.astype(np.float64), kernel, bias)
    outputs = model(images, training=False)
    np.testing.assert_allclose(outputs["image_probs"].numpy(), want_probs, atol=1e-5)
    np.testing.assert_allclose(outputs["cam"].numpy(), want_cam, atol=1e-5)


def test_weight_decay_regularizes_every_kernel():
    model = build_baseline(**TINY, weight_decay=1e-3)
    kernels = [w for w in model.trainable_weights if "kernel" in w.path]
    assert len(model.losses) == len(kernels) > 1
    assert not build_baseline(**TINY, weight_decay=0).losses

