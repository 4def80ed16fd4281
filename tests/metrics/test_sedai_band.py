"""Tests of chestxray_tf.metrics.regions.binarize_band (Sedai et al. 2018 brief, D-13 option)."""

import numpy as np
import pytest

from chestxray_tf.metrics import regions


def reference_band(values, low, high):
    out = np.zeros(values.shape, dtype=bool)
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            out[r, c] = low <= values[r, c] <= high
    return out


def test_band_keeps_both_ends():
    values = np.array([[0.0, 60 / 255, 0.5], [180 / 255, 0.9, 1.0]])
    np.testing.assert_array_equal(regions.binarize_band(values, 60 / 255, 180 / 255),
                                  [[False, True, True], [True, False, False]])


@pytest.mark.parametrize("seed", [0, 1])
def test_band_matches_loop_reference_and_feeds_region_boxes(seed):
    values = np.random.default_rng(seed).random((16, 16))
    mask = regions.binarize_band(values, 0.3, 0.6)
    np.testing.assert_array_equal(mask, reference_band(values, 0.3, 0.6))
    assert 0 < mask.sum() < mask.size
    assert len(regions.region_boxes(mask, 256, keep="all")) == regions.connected_components(mask)[1]


def test_band_bad_arguments():
    with pytest.raises(ValueError, match="low=0.7, high=0.2"):
        regions.binarize_band(np.zeros((2, 2)), 0.7, 0.2)
    with pytest.raises(ValueError, match="non-finite"):
        regions.binarize_band(np.full((2, 2), np.nan), 0.1, 0.2)
