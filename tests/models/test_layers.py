"""Tests of chestxray_tf/models/layers.py: PatchSlicing (Li et al. 2018, Sec. 3.1)."""

import math

import keras
import numpy as np
import pytest

from chestxray_tf.models.layers import PatchSlicing


def reference_max_pool(x, out_h, out_w):
    """Max-pool, stride 1, no padding, window f = w - o + 1 per axis (Sec. 3.1)."""
    batch, height, width, channels = x.shape
    f_h, f_w = height - out_h + 1, width - out_w + 1
    out = np.zeros((batch, out_h, out_w, channels), x.dtype)
    for b in range(batch):
        for r in range(out_h):
            for c in range(out_w):
                for ch in range(channels):
                    out[b, r, c, ch] = x[b, r:r + f_h, c:c + f_w, ch].max()
    return out


def _bilinear_source(index, in_size, out_size):
    """Half-pixel-centre source coordinate: (lower index, upper index, weight of upper)."""
    src = min(max((index + 0.5) * in_size / out_size - 0.5, 0.0), in_size - 1.0)
    lower = math.floor(src)
    return lower, min(lower + 1, in_size - 1), src - lower


def reference_bilinear(x, out_h, out_w):
    batch, height, width, channels = x.shape
    out = np.zeros((batch, out_h, out_w, channels), np.float64)
    for b in range(batch):
        for r in range(out_h):
            r0, r1, wr = _bilinear_source(r, height, out_h)
            for c in range(out_w):
                c0, c1, wc = _bilinear_source(c, width, out_w)
                for ch in range(channels):
                    top = (1 - wc) * x[b, r0, c0, ch] + wc * x[b, r0, c1, ch]
                    bottom = (1 - wc) * x[b, r1, c0, ch] + wc * x[b, r1, c1, ch]
                    out[b, r, c, ch] = (1 - wr) * top + wr * bottom
    return out


def reference_patch_slicing(x, grid):
    height, width = x.shape[1:3]
    x = reference_max_pool(x, min(height, grid), min(width, grid))
    if min(height, width) < grid:
        x = reference_bilinear(x, grid, grid)
    return x


@pytest.mark.parametrize("size, grid", [
    (16, 12),  # max-pool, window 5
    (16, 16),  # identity
    (16, 20),  # bilinear
    (2, 1),  # global max-pool
    (3, 7),  # bilinear, non-integer scale
    ((6, 4), 5),  # max-pool the height (window 2), bilinear the width
])
def test_patch_slicing_matches_reference(size, grid):
    height, width = size if isinstance(size, tuple) else (size, size)
    rng = np.random.default_rng(height * 100 + grid)
    x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    out = keras.ops.convert_to_numpy(PatchSlicing(grid)(x))
    assert out.shape == (2, grid, grid, 3)
    np.testing.assert_allclose(out, reference_patch_slicing(x, grid), rtol=1e-5, atol=1e-6)


def test_equal_size_is_identity():
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 2)).astype(np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(PatchSlicing(5)(x)), x)


def test_symbolic_output_shape():
    features = keras.Input((16, 16, 8))
    assert PatchSlicing(12)(features).shape == (None, 12, 12, 8)
    assert PatchSlicing(20)(features).shape == (None, 20, 20, 8)


def test_dynamic_spatial_size_is_rejected():
    with pytest.raises(ValueError, match="static spatial size"):
        PatchSlicing(4)(keras.Input((None, None, 8)))


@pytest.mark.parametrize("grid", [0, -3, 2.5])
def test_invalid_grid_is_rejected(grid):
    with pytest.raises(ValueError, match="positive integer"):
        PatchSlicing(grid)


def test_serialisation_round_trip(tmp_path):
    layer = PatchSlicing(6, name="patch_slicing")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, PatchSlicing)
    assert restored.grid == 6 and restored.name == "patch_slicing"

    features = keras.Input((4, 4, 2))
    model = keras.Model(features, PatchSlicing(6)(features))
    path = tmp_path / "slicing.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
