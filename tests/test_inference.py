"""chestxray_tf/inference.py: the region rules in TensorFlow against SciPy's labelling
(`chestxray_tf.metrics.regions`, the NumPy twin) and hand cases."""

import numpy as np
import pytest

from chestxray_tf import inference
from chestxray_tf.metrics import regions
from chestxray_tf.tasks.base import RegionRule


def test_hand_case_two_blobs():
    m = np.zeros((1, 4, 5, 1), np.float32)
    m[0, 0, 0, 0] = m[0, 1, 1, 0] = 0.9      # one blob (diagonal: 8-connected), 2 cells
    m[0, 3, 3, 0] = m[0, 3, 4, 0] = m[0, 2, 4, 0] = 0.6  # another, 3 cells, lower peak
    boxes, scores = inference.region_boxes(m, RegionRule(0.5, keep="each", max_regions=3))
    np.testing.assert_allclose(scores[0, 0], [0.9, 0.6, 0.0])
    np.testing.assert_allclose(boxes[0, 0], [[0, 0, 2 / 4, 2 / 5], [2 / 4, 3 / 5, 1, 1],
                                             [0, 0, 0, 0]])
    boxes, scores = inference.region_boxes(m, RegionRule(0.5, keep="largest"))
    np.testing.assert_allclose(boxes[0, 0, 0], [2 / 4, 3 / 5, 1, 1])
    boxes, _ = inference.region_boxes(m, RegionRule(0.5))
    np.testing.assert_allclose(boxes[0, 0, 0], [0, 0, 1, 1])
    assert inference.region_boxes(m, RegionRule(0.9))[1].numpy()[0, 0, 0] == 0.0
    assert inference.region_boxes(m, RegionRule(0.9, inclusive=True))[1].numpy()[0, 0, 0] == \
        pytest.approx(0.9)


@pytest.mark.parametrize("keep,count", [("all", 1), ("largest", 1), ("each", 4)])
def test_random_maps_match_scipy(keep, count):
    rng = np.random.default_rng(0)
    rule = RegionRule(0.4, keep=keep, max_regions=count)
    for _ in range(10):
        maps = (rng.random((2, 9, 7, 3)) ** 3).astype(np.float32)
        boxes, scores = (x.numpy() for x in inference.region_boxes(maps, rule))
        masks = inference.region_mask(maps, rule).numpy()
        for i in range(2):
            for k in range(3):
                mask = regions.binarize(maps[i, ..., k], 0.4)
                labels, n = regions.connected_components(mask)
                if keep == "all":
                    expected = mask
                elif keep == "largest":
                    expected = regions.largest_component(mask)
                else:
                    peaks = sorted((maps[i, ..., k][labels == j].max(), j)
                                   for j in range(1, n + 1))[::-1][:count]
                    expected = np.isin(labels, [j for _, j in peaks])
                    np.testing.assert_allclose(scores[i, k, :len(peaks)],
                                               [p for p, _ in peaks])
                    assert not scores[i, k, len(peaks):].any()
                assert (masks[i, ..., k] == expected).all()
                if keep != "each" and expected.any():
                    ys, xs = np.nonzero(expected)
                    np.testing.assert_allclose(boxes[i, k, 0], [ys.min() / 9, xs.min() / 7,
                                                                (ys.max() + 1) / 9,
                                                                (xs.max() + 1) / 7])


def test_rule_arguments_are_checked():
    with pytest.raises(ValueError, match="keep"):
        RegionRule(0.5, keep="biggest")
    with pytest.raises(ValueError, match="max_regions"):
        RegionRule(0.5, keep="all", max_regions=2)


def test_more_regions_asked_than_a_tiny_map_has_slots():
    """A 2 x 3 map has 7 label slots; 10 regions asked: the two blobs, then empty slots (this
    raised in top_k before the empty slots were padded in)."""
    maps = np.zeros((1, 2, 3, 1), np.float32)
    maps[0, 0, 0, 0], maps[0, 0, 2, 0] = 0.9, 0.7
    boxes, scores = inference.region_boxes(maps, RegionRule(0.5, keep="each", max_regions=10))
    np.testing.assert_allclose(scores.numpy()[0, 0], [0.9, 0.7] + [0.0] * 8, rtol=1e-6)
    np.testing.assert_allclose(boxes.numpy()[0, 0, :2], [[0, 0, 0.5, 1 / 3], [0, 2 / 3, 0.5, 1]],
                               rtol=1e-6)
    assert not boxes.numpy()[0, 0, 2:].any()
