"""Tests of chestxray_tf/data/targets.py against a loop reference of Li et al.'s patch rule."""

import numpy as np
import pytest

from chestxray_tf.data import targets


def _reference_mask(boxes_xywh, box_labels, size, grid, num_classes):
    """Loops over patches: positive when a box of the class overlaps it by a positive area."""
    mask = np.zeros((grid, grid, num_classes), np.float32)
    step = size / grid
    for (x, y, w, h), k in zip(boxes_xywh, box_labels):
        if k < 0:
            continue
        for r in range(grid):
            for c in range(grid):
                overlap_x = min(x + w, (c + 1) * step) - max(x, c * step)
                overlap_y = min(y + h, (r + 1) * step) - max(y, r * step)
                if overlap_x > 0 and overlap_y > 0:
                    mask[r, c, k] = 1.0
    return mask


def _yxyx(boxes_xywh, size):
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    return np.stack([b[:, 1], b[:, 0], b[:, 1] + b[:, 3], b[:, 0] + b[:, 2]], -1) / size


def test_hand_checked_boxes():
    # 8x8 image, 4x4 grid of 2x2 patches. Box 0 covers exactly patch (1, 1); box 1 spans
    # columns 2-3 of row 0 and touches column 1 only on its edge (no area): not positive.
    boxes = [[2, 2, 2, 2], [4, 0, 3.5, 1]]
    mask = targets.box_to_patch_mask(_yxyx(boxes, 8), np.array([0, 2]), 4, 3).numpy()
    expected = np.zeros((4, 4, 3), np.float32)
    expected[1, 1, 0] = 1
    expected[0, 2:4, 2] = 1
    np.testing.assert_array_equal(mask, expected)


def test_random_padded_batches_match_the_loop_reference():
    rng = np.random.default_rng(0)
    size, grid, classes, slots = 512, 12, 5, 4
    for _ in range(20):
        count = rng.integers(0, slots + 1)
        xy = rng.uniform(-30, size - 10, (count, 2))
        wh = rng.uniform(1, size / 2, (count, 2))
        boxes = np.concatenate([xy, wh], -1)
        labels = rng.integers(0, classes, count)
        clipped = np.clip(_yxyx(boxes, size), 0, 1)
        padded = np.zeros((slots, 4)); padded[:count] = clipped
        padded_labels = -np.ones(slots, np.int64); padded_labels[:count] = labels
        got = targets.box_to_patch_mask(padded[None], padded_labels[None], grid, classes)[0]
        xywh = np.stack([clipped[:, 1], clipped[:, 0], clipped[:, 3] - clipped[:, 1],
                         clipped[:, 2] - clipped[:, 0]], -1) * size
        np.testing.assert_array_equal(got.numpy(),
                                      _reference_mask(xywh, labels, size, grid, classes))
        flags = targets.has_box(padded[None], padded_labels[None], classes)[0].numpy()
        np.testing.assert_array_equal(flags, np.isin(np.arange(classes), labels).astype(float))


@pytest.mark.parametrize("box", [[0.5, 0.2, 0.5, 0.6], [0.3, 0.4, 0.6, 0.4]])
def test_box_without_area_is_ignored(box):
    boxes = np.array([[box, [0, 0, 0, 0]]], np.float32)
    labels = np.array([[1, -1]])
    assert not targets.box_to_patch_mask(boxes, labels, 4, 2).numpy().any()
    assert not targets.has_box(boxes, labels, 2).numpy().any()
