"""chestxray_tf/geometry.py against hand-worked cases and a brute-force pixel reference."""

import numpy as np
import pytest

from chestxray_tf import geometry


def _brute_force_mask(boxes_xywh, size, grid, sub=4):
    """Reference: sample each patch at `sub` x `sub` points per pixel (cell centres) and
    mark it when any sample point lies strictly inside a (clipped) box. Loops, no vectors."""
    mask = np.zeros((grid, grid), dtype=bool)
    step = 1.0 / sub
    for r in range(grid):
        for c in range(grid):
            y = r * size / grid + step / 2
            hit = False
            while y < (r + 1) * size / grid and not hit:
                x = c * size / grid + step / 2
                while x < (c + 1) * size / grid and not hit:
                    for bx, by, bw, bh in boxes_xywh:
                        if bx < x < bx + bw and by < y < by + bh:
                            hit = True
                    x += step
                y += step
            mask[r, c] = hit
    return mask


def test_box_on_patch_edges_takes_only_the_inside_patches():
    # 1024 image, P=16: patches are 64 px. The box [64, 128) x [0, 64) touches the edges of
    # columns 0 and 2 but overlaps only column 1 by a positive area.
    mask = geometry.box_to_patch_mask([64, 0, 64, 64], 1024, 16)
    expected = np.zeros((16, 16), bool)
    expected[0, 1] = True
    np.testing.assert_array_equal(mask, expected)


def test_box_inside_one_patch_and_whole_image():
    mask = geometry.box_to_patch_mask([100, 700, 3, 2], 1024, 12)  # 1024/12 = 85.33 px
    assert mask.sum() == 1 and mask[8, 1]
    for grid in (12, 16, 20):
        assert geometry.box_to_patch_mask([0, 0, 1024, 1024], 1024, grid).all()


def test_partial_overlap_counts_and_union():
    # P=20 on 1024: patch width 51.2. x in [50, 52) reaches into columns 0 and 1.
    mask = geometry.box_to_patch_mask([[50, 0, 2, 10], [0, 1000, 10, 24]], 1024, 20)
    assert mask[0, 0] and mask[0, 1] and mask[19, 0]
    assert mask.sum() == 3


@pytest.mark.parametrize("grid", [12, 16, 20])
def test_random_boxes_match_brute_force(grid):
    rng = np.random.default_rng(grid)
    size = 96
    for _ in range(10):
        n = rng.integers(1, 3)
        xy = rng.integers(-10, size - 4, size=(n, 2))
        wh = rng.integers(1, 50, size=(n, 2))
        boxes = np.concatenate([xy, wh], axis=1).astype(float)
        boxes = boxes[(boxes[:, 0] + boxes[:, 2] > 0) & (boxes[:, 1] + boxes[:, 3] > 0)]
        if not len(boxes):
            continue
        np.testing.assert_array_equal(geometry.box_to_patch_mask(boxes, size, grid),
                                      _brute_force_mask(boxes, size, grid))


def test_clipping_and_empty_box_error():
    clipped = geometry.clip_boxes_xywh([[-10, 1000, 50, 50]], 1024)
    np.testing.assert_allclose(clipped, [[0, 1000, 40, 24]])
    with pytest.raises(ValueError, match="00000001_000.png"):
        geometry.box_to_patch_mask([1030, 10, 20, 20], 1024, 16, image_id="00000001_000.png")


def test_format_round_trip_and_scaling():
    boxes = np.array([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 1024.0, 512.0]])
    yxyx = geometry.xywh_to_yxyx(boxes, 1024)
    np.testing.assert_allclose(yxyx[0], [20 / 1024, 10 / 1024, 60 / 1024, 40 / 1024])
    np.testing.assert_allclose(geometry.yxyx_to_xywh(yxyx, 512), boxes / 2)
    np.testing.assert_allclose(geometry.scale_boxes_xywh(boxes, 1024, (512, 256)),
                               boxes * [0.5, 0.25, 0.5, 0.25])
    # The patch mask does not depend on the frame the box is expressed in.
    np.testing.assert_array_equal(geometry.box_to_patch_mask(boxes[:1], 1024, 16),
                                  geometry.box_to_patch_mask(boxes[:1] / 2, 512, 16))
