"""Tests of chestxray_tf/data/targets.py against a loop reference of Li et al.'s patch rule."""

import numpy as np
import pytest

from chestxray_tf import geometry
from chestxray_tf.data import targets
from chestxray_tf.geometry import EDGE_TOLERANCE


@pytest.fixture(scope="module")
def nih_dir_boxes(nih_sample_dir):
    """Every box (x, y, w, h) of the real NIH sample's BBox_List_2017.csv, 1024 px frame."""
    import pandas as pd
    table = pd.read_csv(nih_sample_dir / "BBox_List_2017.csv")
    return table.iloc[:, 2:6].to_numpy(np.float64)


def _reference_mask(boxes_xywh, box_labels, size, grid, num_classes):
    """Loops over patches: positive when a box of the class overlaps it by more than
    EDGE_TOLERANCE of a patch on both axes (a positive area, up to float rounding)."""
    mask = np.zeros((grid, grid, num_classes), np.float32)
    step = size / grid
    for (x, y, w, h), k in zip(boxes_xywh, box_labels):
        if k < 0:
            continue
        for r in range(grid):
            for c in range(grid):
                overlap_x = min(x + w, (c + 1) * step) - max(x, c * step)
                overlap_y = min(y + h, (r + 1) * step) - max(y, r * step)
                if overlap_x > EDGE_TOLERANCE * step and overlap_y > EDGE_TOLERANCE * step:
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


def test_in_graph_mask_agrees_with_geometry_on_real_and_edge_boxes(nih_dir_boxes):
    """The float32 in-graph mask and the float64 `geometry` mask agree on every box of the real
    NIH sample and on constructed NIH-style coordinates within 1e-6 px of a patch edge
    (341.333333 = 1024 / 12 * 4 - 3e-7), at every P of the papers."""
    boxes = list(nih_dir_boxes)
    for grid in (12, 16, 20):
        step = 1024 / grid
        for c in range(1, grid):
            for delta in (-3e-7, 3e-7, -1e-6, 1e-6, 0.0):
                edge = round(c * step, 6) + delta
                boxes += [(edge, 100.0, 50.0, 60.0), (edge - 50.0, edge, 50.0, 60.0)]
    boxes = np.array(boxes, np.float64)
    normalised = geometry.xywh_to_yxyx(boxes, 1024).astype(np.float32)
    for grid in (8, 12, 16, 20):
        graph = targets.box_to_patch_mask(normalised[:, None, :],
                                          np.zeros((len(boxes), 1), np.int32), grid, 1).numpy()
        for i, box in enumerate(boxes):
            expected = geometry.box_to_patch_mask(box, 1024, grid)
            assert (graph[i, ..., 0] > 0).tolist() == expected.tolist(), (grid, box)
