"""Tests of chestxray_tf/metrics/hermoza_boxes.py (Hermoza et al. 2020 map -> box, and the
released code's percentile threshold, "most active" component and union IoU)."""

import numpy as np
import pytest

from chestxray_tf.metrics import hermoza_boxes as hb


def hand_map():
    """A big weak blob (top left, 3x3 at 0.6) and a small strong one (bottom right, 1 cell at
    0.9) on an 8x8 map over a 64 px image (8 px cells)."""
    m = np.zeros((8, 8))
    m[0:3, 0:3] = 0.6
    m[6, 6] = 0.9
    return m


def test_largest_and_most_active_differ():
    m = hand_map()
    np.testing.assert_array_equal(hb.map_to_boxes(m, 0.5, 64, "largest"), [[0, 0, 24, 24]])
    np.testing.assert_array_equal(hb.map_to_boxes(m, 0.5, 64, "most_active"), [[48, 48, 8, 8]])
    union = hb.map_to_boxes(m, 0.5, 64, "union")
    np.testing.assert_array_equal(union, [[0, 0, 24, 24], [48, 48, 8, 8]])
    assert hb.map_to_boxes(m, 0.95, 64).shape == (0, 4)
    # One component: every mode gives its box.
    one = np.zeros((8, 8))
    one[2:4, 1:5] = 1.0
    for keep in hb.KEEP_CHOICES:
        np.testing.assert_array_equal(hb.map_to_boxes(one, 0.5, 64, keep), [[8, 16, 32, 16]])


def test_percentile_threshold_matches_sorted_values():
    rng = np.random.default_rng(0)
    m = rng.uniform(size=(10, 10))
    values = sorted(m.ravel().tolist())
    for p in (0.6, 0.61, 0.75, 0.999, 1.0):
        assert hb.percentile_threshold(m, p) == values[int(round(100 * p)) - 1]
    # Fraction 0.6 keeps the top 41 cells (>= the 60th smallest value).
    assert hb.threshold_mask(m, hb.percentile_threshold(m, 0.6)).sum() == 41
    box = hb.map_to_boxes(m, 0.99, 100, "largest", percentile=True)
    top = np.unravel_index(np.argsort(m.ravel())[-2:], m.shape)
    assert box.shape[0] == 1 and np.all(m[top] >= values[98])


def test_threshold_at_minimum_is_strict():
    m = np.array([[0.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(hb.threshold_mask(m, 0.0), [[False, False], [False, True]])
    np.testing.assert_array_equal(hb.threshold_mask(m, 0.5), [[False, False], [False, True]])
    np.testing.assert_array_equal(hb.threshold_mask(np.full((2, 2), 0.3), 0.3), np.zeros((2, 2)))


def test_multi_iou_hand_cases():
    gt = [0, 0, 10, 10]
    assert hb.multi_iou([[0, 0, 10, 10]], gt) == 1.0
    assert hb.multi_iou(np.zeros((0, 4)), gt) == 0.0
    # Two disjoint halves of the box: (50 + 50) / (100 + 100 - 100) = 1.
    assert hb.multi_iou([[0, 0, 5, 10], [5, 0, 5, 10]], gt) == pytest.approx(1.0)
    # Overlaps are counted per box: the box twice gives 200 / (200 + 100 - 200) = 2.
    assert hb.multi_iou([gt, gt], gt) == pytest.approx(2.0)
    assert hb.multi_iou([[5, 5, 10, 10]], gt) == pytest.approx(25 / 175)


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep must be one of .* got 'all'"):
        hb.map_to_boxes(hand_map(), 0.5, 64, "all")
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        hb.percentile_threshold(hand_map(), 0)
    with pytest.raises(ValueError, match="one true box"):
        hb.multi_iou([[0, 0, 1, 1]], [[0, 0, 1, 1], [1, 1, 1, 1]])
