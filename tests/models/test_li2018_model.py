"""Tests of chestxray_tf/models/li2018.py and the li2018 task."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.losses.li2018 import li2018_loss
from chestxray_tf.models.backbones import build_backbone
from chestxray_tf.models.li2018 import build_li2018

TINY = {"image_size": 64, "backbone": "resnet_v2_tiny", "head_width": 16}


def reference_image_probs(patch_probs, smoothing):
    """Eq. 2 with explicit loops: 1 - prod_j (smoothing + (1 - smoothing)(1 - p_jk))."""
    batch, grid, _, classes = patch_probs.shape
    out = np.zeros((batch, classes))
    for b in range(batch):
        for k in range(classes):
            product = 1.0
            for i in range(grid):
                for j in range(grid):
                    product *= smoothing + (1.0 - smoothing) * (1.0 - patch_probs[b, i, j, k])
            out[b, k] = 1.0 - product
    return out


def conv_layers(model):
    """The Conv2D layers of `model`, nested models included."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from conv_layers(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            yield layer


def output_shapes(model):
    return {key: tuple(tensor.shape) for key, tensor in model.output.items()}


def random_images(batch, size=64, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, size, size, 3)).astype(
        np.float32)


@pytest.mark.parametrize("grid", [1, 2, 4])  # the tiny backbone gives 2x2 features at 64 px
def test_tiny_model_shapes_and_image_probs(grid):
    model = build_li2018(grid=grid, num_classes=3, **TINY)
    outputs = model(random_images(2), training=False)
    assert set(outputs) == {"patch_probs", "image_probs"}
    patch_probs = outputs["patch_probs"].numpy()
    assert patch_probs.shape == (2, grid, grid, 3) and outputs["image_probs"].shape == (2, 3)
    assert patch_probs.dtype == np.float32 and np.all((patch_probs >= 0) & (patch_probs <= 1))
    np.testing.assert_allclose(outputs["image_probs"],
                               reference_image_probs(patch_probs.astype(np.float64), 0.98),
                               rtol=1e-5)


def test_default_model_declares_paper_shapes():
    model = build_li2018(backbone="resnet_v2_tiny", head_width=16)
    assert model.input_shape == (None, 512, 512, 3)
    assert output_shapes(model) == {"patch_probs": (None, 16, 16, 14), "image_probs": (None, 14)}


def test_configured_smoothing_reaches_image_probs():
    model = build_li2018(grid=3, num_classes=2, smoothing=0.9, **TINY)
    outputs = model(random_images(1, seed=2), training=False)
    np.testing.assert_allclose(
        outputs["image_probs"],
        reference_image_probs(outputs["patch_probs"].numpy().astype(np.float64), 0.9), rtol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_outputs_stay_float32_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    try:
        model = build_li2018(grid=4, num_classes=2, **TINY)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("patch_logits").compute_dtype == policy.split("_")[1]
    outputs = model(random_images(1), training=False)
    assert {key: tensor.dtype for key, tensor in outputs.items()} == {
        "patch_probs": "float32", "image_probs": "float32"}


def test_weight_decay_regularises_every_convolution():
    model = build_li2018(grid=2, weight_decay=1e-3, **TINY)
    convs = list(conv_layers(model))
    assert len(convs) == 17 + 2  # tiny backbone + head
    assert len(model.losses) == len(convs)
    expected = sum(1e-3 * np.sum(np.square(layer.kernel.numpy())) for layer in convs)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)
    assert not build_li2018(grid=2, weight_decay=0.0, **TINY).losses


def test_backbone_starts_from_the_given_weights_file(tmp_path):
    backbone = build_backbone("resnet_v2_tiny", (64, 64, 3))
    backbone.set_weights([w + 0.5 for w in backbone.get_weights()])
    path = tmp_path / "tiny.weights.h5"
    backbone.save_weights(path)
    model = build_li2018(grid=2, weights=str(path), **TINY)
    for expected, actual in zip(backbone.get_weights(),
                                model.get_layer("resnet_v2_tiny").get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_keras_save_and_load_round_trip(tmp_path):
    model = build_li2018(grid=3, num_classes=2, smoothing=0.95, **TINY)
    # Move the batch-norm statistics away from their initial values before saving.
    model(random_images(4, seed=3), training=True)
    path = tmp_path / "li2018.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = random_images(2, seed=4)
    expected, actual = model(images, training=False), loaded(images, training=False)
    for key in ("patch_probs", "image_probs"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-6)
    assert loaded.get_layer("image_probs").smoothing == 0.95


def test_the_li2018_task_builds_from_a_config_and_rejects_unknown_names():
    from chestxray_tf import tasks
    from chestxray_tf.training import defaults
    config = defaults.base_config("li2018")
    config.data.image_size = 64
    config.model.update(backbone="resnet_v2_tiny", grid=3, head_width=8, weights="imagenet")
    task = tasks.get_task(config.task)(config)
    model = task.build_model(pretrained=False)  # no download: weights skipped
    outputs = model(np.zeros((1, 64, 64, 3), np.float32))
    assert task.maps(outputs).shape == (1, 3, 3, 14)
    assert task.targets() == {"grid": 3}
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(2, 3, 3, 14)).astype(np.float32)
    batch = {"labels": rng.integers(0, 2, (2, 14)).astype(np.float32),
             "box_mask": rng.integers(0, 2, (2, 3, 3, 14)).astype(np.float32),
             "has_box": np.zeros((2, 14), np.float32)}
    loss, terms = task.loss(batch, {"patch_probs": probs})
    np.testing.assert_allclose(loss, li2018_loss(batch["labels"], batch["box_mask"],
                                                 batch["has_box"], probs), rtol=1e-6)
    assert set(terms) == {"box_term", "image_term"}
    with pytest.raises(ValueError, match="unknown task 'nope'.*li2018"):
        tasks.get_task("nope")


def _training_step(model, images, grid, classes):
    """One Adam step on the Li loss plus the L2 penalties; returns (loss, gradients)."""
    labels = np.zeros((len(images), classes), np.float32)
    labels[:, :2] = 1.0
    has_box = np.zeros_like(labels)
    has_box[:, 0] = 1.0
    box_mask = np.zeros((len(images), grid, grid, classes), np.float32)
    box_mask[:, 2:5, 3:7, 0] = 1.0
    optimizer = keras.optimizers.Adam(1e-3)
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss = tf.reduce_mean(li2018_loss(labels, box_mask, has_box, outputs["patch_probs"]))
        loss += tf.add_n(model.losses)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss, gradients


def test_tiny_training_step_updates_every_variable():
    model = build_li2018(grid=8, num_classes=3, **TINY)
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss, gradients = _training_step(model, random_images(2), grid=8, classes=3)
    assert np.isfinite(loss.numpy())
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


@pytest.mark.slow
def test_full_size_training_step():
    # ResNet-v2-50 at 512 px, P = 16, batch 1, as in the paper.
    model = build_li2018(grid=16)
    assert output_shapes(model)["patch_probs"] == (None, 16, 16, 14)
    loss, gradients = _training_step(model, random_images(1, size=512), grid=16, classes=14)
    assert np.isfinite(loss.numpy())
    assert len(gradients) == len(model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)
