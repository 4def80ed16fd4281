"""Degenerate batches through the real model and loss (tiny backbone, P = 20, smoothing off):
all-black, all-zero or all-white images, labels all 0 or all 1, with and without boxes, and
saturated patch probabilities give a finite loss and finite gradients.

The loss alone at P = 20 without smoothing is in tests/losses/test_li2018_loss.py; the stop on
a non-finite loss (keeping the last good checkpoint) in tests/training/test_trainer.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import labels as labels_lib
from chestxray_tf.losses import li2018 as li2018_loss
from chestxray_tf import tasks

from tiny import tiny_config

GRID = 20
BATCH = 2
K = labels_lib.NUM_CLASSES
IMAGES = {"black": -1.0, "zero": 0.0, "white": 1.0}  # normalised pixels: -1 is pixel 0
# A shift of the patch logits: +-60 saturates the sigmoid (p = 1 exactly, or ~1e-26).
SHIFTS = (0.0, 60.0, -60.0)


def _targets(case):
    """labels, has_box, box_mask of a batch where every image is the same case."""
    labels = np.zeros((BATCH, K), np.float32) if case == "negative" else np.ones((BATCH, K),
                                                                                np.float32)
    has_box = np.zeros((BATCH, K), np.float32)
    box_mask = np.zeros((BATCH, GRID, GRID, K), np.float32)
    if case == "boxed_whole_image":
        has_box[:], box_mask[:] = 1.0, 1.0
    elif case == "boxed_one_patch":
        has_box[:], box_mask[:, 7, 3, :] = 1.0, 1.0
    return labels, has_box, box_mask


@pytest.fixture(scope="module")
def model_and_step():
    config = tiny_config("unused")
    config.model.update(grid=GRID, smoothing=None)
    task = tasks.get_task(config.task)(config)
    model, loss_fn = task.build_model(pretrained=False), task.loss

    @tf.function
    def step(batch):
        """The training step's loss (with the L2 penalties) and its gradients, not applied."""
        with tf.GradientTape() as tape:
            outputs = model(batch["image"], training=True)
            per_example, terms = loss_fn(batch, outputs)
            total = tf.reduce_mean(per_example) + tf.add_n(model.losses)
        return per_example, terms, outputs, tape.gradient(total, model.trainable_variables)

    return config, model, step


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("case", ["negative", "positive", "boxed_whole_image",
                                  "boxed_one_patch"])
@pytest.mark.parametrize("image", sorted(IMAGES))
def test_loss_and_gradients_are_finite(model_and_step, image, case, shift):
    config, model, step = model_and_step
    bias = model.get_layer("patch_logits").bias
    initial = bias.numpy()
    bias.assign(initial + shift)
    try:
        size = config.data.image_size
        labels, has_box, box_mask = _targets(case)
        per_example, terms, outputs, grads = step({
            "image": tf.fill([BATCH, size, size, 3], IMAGES[image]),
            "labels": labels, "has_box": has_box, "box_mask": box_mask})
    finally:
        bias.assign(initial)
    probs = outputs["patch_probs"].numpy()
    assert probs.shape == (BATCH, GRID, GRID, K)
    if shift:  # saturated: 1 - p (shift > 0) or p (shift < 0) below the clipping bound
        assert (np.abs((shift > 0) - probs) < li2018_loss.EPSILON).all()
    assert np.isfinite(per_example.numpy()).all(), per_example
    for name, value in terms.items():
        assert np.isfinite(value.numpy()).all(), name
    assert len(grads) == len(model.trainable_variables)
    for variable, grad in zip(model.trainable_variables, grads):
        assert grad is not None and np.isfinite(grad.numpy()).all(), variable.path
    if shift < 0 and case == "positive":
        # Every patch ~0, clipped to EPSILON (SPEC §1): a loop over the P x P patches.
        log_negative = 0.0
        for _ in range(GRID * GRID):
            log_negative += math.log1p(-li2018_loss.EPSILON)
        expected = -K * math.log(max(-math.expm1(log_negative), li2018_loss.EPSILON))
        np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-3)
