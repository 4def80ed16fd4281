"""Tests of chestxray_tf/metrics/regions.py against loop-based references."""

import numpy as np
import pytest

from chestxray_tf.metrics import localization, regions


def components_reference(mask):
    """8-connected components by flood fill with an explicit stack, in raster order.

    Returns a list of components, each a sorted list of (row, col) cells.
    """
    rows, cols = len(mask), len(mask[0])
    seen = [[False] * cols for _ in range(rows)]
    components = []
    for r in range(rows):
        for c in range(cols):
            if not mask[r][c] or seen[r][c]:
                continue
            seen[r][c] = True
            stack, cells = [(r, c)], []
            while stack:
                y, x = stack.pop()
                cells.append((y, x))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < rows and 0 <= nx < cols and mask[ny][nx] and not seen[ny][nx]:
                            seen[ny][nx] = True
                            stack.append((ny, nx))
            components.append(sorted(cells))
    return components


def box_of_cells_reference(cells, grid_shape, width, height):
    rows, cols = grid_shape
    r0 = min(r for r, _ in cells)
    r1 = max(r for r, _ in cells) + 1
    c0 = min(c for _, c in cells)
    c1 = max(c for _, c in cells) + 1
    return [c0 * width / cols, r0 * height / rows, (c1 - c0) * width / cols,
            (r1 - r0) * height / rows]


def largest_reference(components):
    """The first component (raster order) with the most cells."""
    best = None
    for cells in components:
        if best is None or len(cells) > len(best):
            best = cells
    return best


@pytest.mark.parametrize("seed", range(10))
def test_connected_components_match_flood_fill_up_to_relabelling(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rng.integers(1, 12), rng.integers(1, 12))) < 0.2 + 0.05 * seed
    labels, count = regions.connected_components(mask)
    expected = components_reference(mask.tolist())
    assert count == len(expected)
    ours = [sorted(map(tuple, np.argwhere(labels == k).tolist())) for k in range(1, count + 1)]
    assert ours == expected  # same partition, same raster-order numbering
    assert np.array_equal(labels > 0, mask)


def test_diagonal_cells_are_connected():
    mask = np.eye(4, dtype=bool)
    mask[0, 3] = True  # isolated: touches nothing
    labels, count = regions.connected_components(mask)
    assert count == 2
    assert len(set(labels[np.eye(4, dtype=bool)])) == 1


@pytest.mark.parametrize("seed", range(6))
def test_largest_component_matches_reference(seed):
    rng = np.random.default_rng(20 + seed)
    mask = rng.random((9, 11)) < 0.3
    expected = np.zeros_like(mask)
    for r, c in largest_reference(components_reference(mask.tolist())):
        expected[r, c] = True
    np.testing.assert_array_equal(regions.largest_component(mask), expected)


def test_largest_component_tie_goes_to_the_first_in_raster_order():
    mask = np.zeros((5, 5), bool)
    mask[3, 0:2] = True
    mask[0, 3:5] = True  # same size, first cell earlier in raster order
    expected = np.zeros_like(mask)
    expected[0, 3:5] = True
    np.testing.assert_array_equal(regions.largest_component(mask), expected)
    assert not regions.largest_component(np.zeros((3, 3), bool)).any()


def test_binarize_strict_and_inclusive():
    saliency = np.array([[0.2, 0.5], [0.7, 0.5]])
    np.testing.assert_array_equal(regions.binarize(saliency, 0.5), [[False, False], [True, False]])
    np.testing.assert_array_equal(regions.binarize(saliency, 0.5, inclusive=True),
                                  [[False, True], [True, True]])


def test_region_boxes_hand_case():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    mask[3, 0:2] = True
    np.testing.assert_allclose(regions.region_boxes(mask, 64),
                               [[32, 16, 16, 16], [0, 48, 32, 16]])
    np.testing.assert_allclose(regions.region_boxes(mask, 64, keep="largest"), [[0, 48, 32, 16]])
    # a non-square image: cells are 16 px wide and 8 px high
    np.testing.assert_allclose(regions.region_boxes(mask, (64, 32), keep="largest"),
                               [[0, 24, 32, 8]])
    assert regions.region_boxes(np.zeros((4, 4), bool), 64).shape == (0, 4)


@pytest.mark.parametrize("seed", range(6))
def test_region_boxes_match_reference(seed):
    rng = np.random.default_rng(40 + seed)
    shape = (int(rng.integers(3, 14)), int(rng.integers(3, 14)))
    width, height = [(512, 512), (100, 60)][seed % 2]
    mask = rng.random(shape) < 0.25
    components = components_reference(mask.tolist())
    expected = [box_of_cells_reference(cells, shape, width, height) for cells in components]
    np.testing.assert_allclose(regions.region_boxes(mask, (width, height)),
                               np.reshape(expected, (-1, 4)))
    largest = regions.region_boxes(mask, (width, height), keep="largest")
    if components:
        np.testing.assert_allclose(largest, [box_of_cells_reference(
            largest_reference(components), shape, width, height)])
    else:
        assert largest.shape == (0, 4)


def test_map_to_region_and_boxes():
    saliency = np.zeros((8, 8))
    saliency[1:3, 1:4] = 0.9  # 6 cells
    saliency[6, 6] = 0.6
    region = regions.map_to_region(saliency, 0.5)
    assert region.sum() == 7
    assert regions.map_to_region(saliency, 0.5, keep="largest").sum() == 6
    np.testing.assert_allclose(regions.map_to_boxes(saliency, 0.5, 512),
                               [[64, 64, 192, 128]])
    np.testing.assert_allclose(regions.map_to_boxes(saliency, 0.5, 512, keep="all"),
                               [[64, 64, 192, 128], [384, 384, 64, 64]])
    assert regions.map_to_boxes(saliency, 0.95, 512).shape == (0, 4)


@pytest.mark.parametrize("seed", range(4))
def test_box_of_a_rectangular_region_has_the_region_iou(seed):
    """For a rectangular region, the region IoU and the IoU of its box agree, whatever the map's
    resolution (patch grid or image pixels)."""
    rng = np.random.default_rng(60 + seed)
    size = [16, 32, 64, 64][seed]  # map resolution over a 64 x 64 image
    saliency = np.zeros((size, size))
    r0, c0 = rng.integers(0, size // 2, size=2)
    r1, c1 = np.array([r0, c0]) + rng.integers(1, size // 2, size=2)
    saliency[r0:r1, c0:c1] = 1.0  # a non-empty rectangle of cells
    box = regions.map_to_boxes(saliency, 0.5, 64)
    corner = np.clip(box[0, :2] + rng.uniform(-6, 6, size=2), 0, 60)
    far = np.clip(corner + box[0, 2:] * rng.uniform(0.5, 1.5, size=2), corner + 1, 64)
    truth = np.concatenate([corner, far - corner])  # near the region, inside the image
    iou, ior = localization.iou_and_ior(regions.map_to_region(saliency, 0.5), truth, 64)
    assert localization.best_box_iou(box, truth) == pytest.approx(iou, abs=1e-12)
    (bx, by, bw, bh), (tx, ty, tw, th) = box[0], truth
    overlap_w = max(0.0, min(bx + bw, tx + tw) - max(bx, tx))
    overlap_h = max(0.0, min(by + bh, ty + th) - max(by, ty))
    assert ior == pytest.approx(overlap_w * overlap_h / (bw * bh), abs=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="keep must be one of"):
        regions.map_to_boxes(np.zeros((4, 4)), 0.5, 64, keep="biggest")
    with pytest.raises(ValueError, match="non-finite"):
        regions.binarize(np.full((2, 2), np.nan), 0.5)
    with pytest.raises(ValueError, match="must be bool"):
        regions.connected_components(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        regions.map_to_region(np.zeros(4), 0.5)
