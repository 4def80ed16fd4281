"""Tests of chestxray_tf/metrics/localization.py against loop-based references on a fine grid."""

import numpy as np
import pytest

from chestxray_tf.geometry import box_to_patch_mask
from chestxray_tf.metrics import localization

FINE = 2  # samples per pixel side; every edge in these tests lies on the 1/FINE pixel grid


def fine_samples(width, height):
    """Centres (x, y) of the 1/FINE x 1/FINE sub-pixels of the image, and their area."""
    xs = [(j + 0.5) / FINE for j in range(int(width * FINE))]
    ys = [(i + 0.5) / FINE for i in range(int(height * FINE))]
    return xs, ys, 1.0 / FINE ** 2


def in_any_box(x, y, boxes):
    return any(bx <= x < bx + bw and by <= y < by + bh for bx, by, bw, bh in boxes)


def region_overlap_reference(region, boxes, width, height):
    """(IoU, IoR) by visiting every sub-pixel of the image with explicit loops."""
    rows, cols = len(region), len(region[0])
    xs, ys, area = fine_samples(width, height)
    inter = region_area = box_area = 0.0
    for y in ys:
        r = int(y * rows // height)
        for x in xs:
            c = int(x * cols // width)
            in_region = bool(region[r][c])
            in_box = in_any_box(x, y, boxes)
            inter += area * (in_region and in_box)
            region_area += area * in_region
            box_area += area * in_box
    if region_area == 0:
        return 0.0, 0.0
    return inter / (region_area + box_area - inter), inter / region_area


def box_iou_reference(a, b):
    """IoU of two boxes by counting sub-pixels (boxes on the 1/FINE grid, inside 64 x 64)."""
    xs, ys, area = fine_samples(64, 64)
    inter = union = 0.0
    for y in ys:
        for x in xs:
            in_a, in_b = in_any_box(x, y, [a]), in_any_box(x, y, [b])
            inter += area * (in_a and in_b)
            union += area * (in_a or in_b)
    return inter / union


def random_boxes(rng, width, height, count):
    """Boxes on the 1/FINE grid, possibly crossing the border, each with area inside."""
    boxes = []
    while len(boxes) < count:
        x, y = rng.integers(-4 * FINE, width * FINE, size=2) / FINE
        y = min(y, height - 1)
        w, h = rng.integers(width * FINE // 8, width * FINE // 2, size=2) / FINE
        if x + w > 0 and y + h > 0:
            boxes.append([x, y, w, h])
    return np.array(boxes)


def jittered(rng, boxes, amount=4):
    """Copies of boxes moved and resized by up to `amount` px on the 1/FINE grid."""
    moves = rng.integers(-amount * FINE, amount * FINE + 1, size=boxes.shape) / FINE
    return np.maximum(boxes + moves, [0, 0, 1, 1])


def clipped(boxes, width, height):
    out = []
    for x, y, w, h in boxes:
        x0, y0 = max(x, 0), max(y, 0)
        out.append([x0, y0, min(x + w, width) - x0, min(y + h, height) - y0])
    return out


# --- iou_and_ior --------------------------------------------------------------------------------

def test_box_on_patch_edges_matches_its_patches_exactly():
    box = [8, 16, 16, 8]  # 64 x 64 image, 8 x 8 patches: columns 1-2 of row 2
    region = box_to_patch_mask(box, 64, 8)
    assert region.sum() == 2
    assert localization.iou_and_ior(region, box, 64) == pytest.approx((1.0, 1.0))
    one_patch = np.zeros((8, 8), bool)
    one_patch[2, 1] = True
    assert localization.iou_and_ior(one_patch, box, 64) == pytest.approx((0.5, 1.0))
    neighbour = np.zeros((8, 8), bool)
    neighbour[3, 1] = True  # shares only an edge with the box
    assert localization.iou_and_ior(neighbour, box, 64) == (0.0, 0.0)


def test_empty_region_is_a_miss():
    assert localization.iou_and_ior(np.zeros((16, 16), bool), [10, 10, 20, 20], 512) == (0, 0)


def test_union_of_two_overlapping_boxes():
    boxes = [[0, 0, 16, 16], [8, 8, 16, 16]]  # union 256 + 256 - 64 = 448 px
    whole = np.ones((8, 8), bool)
    assert localization.iou_and_ior(whole, boxes, 64) == pytest.approx((448 / 4096, 448 / 4096))
    corner = np.zeros((8, 8), bool)
    corner[0, 0] = True  # pixels [0, 8) x [0, 8), inside the first box
    assert localization.iou_and_ior(corner, boxes, 64) == pytest.approx((64 / 448, 1.0))
    # the overlap counted once: the region [8, 16) x [8, 16) is in both boxes
    middle = np.zeros((8, 8), bool)
    middle[1, 1] = True
    assert localization.iou_and_ior(middle, boxes, 64) == pytest.approx((64 / 448, 1.0))


def test_discrete_pieces_count_as_one_region():
    region = np.zeros((4, 4), bool)
    region[0, 0] = region[3, 3] = True  # two 16 x 16 pieces of a 64 x 64 image
    iou, ior = localization.iou_and_ior(region, [0, 0, 16, 16], 64)
    assert (iou, ior) == pytest.approx((256 / 512, 256 / 512))


@pytest.mark.parametrize("seed", range(8))
def test_iou_and_ior_match_fine_grid_reference(seed):
    rng = np.random.default_rng(seed)
    width, height = [(48, 48), (48, 32), (32, 48)][seed % 3]
    rows, cols = rng.choice([3, 4, 8, 16], size=2)  # cell edges on the 1/FINE grid
    region = rng.random((rows, cols)) < 0.2 + 0.1 * seed
    region[rng.integers(rows), rng.integers(cols)] = True
    boxes = random_boxes(rng, width, height, count=1 + seed % 3)
    result = localization.iou_and_ior(region, boxes, (width, height))
    expected = region_overlap_reference(region, clipped(boxes, width, height), width, height)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-9)
    assert 0 <= result[0] <= result[1] <= 1  # the union is at least the region


@pytest.mark.parametrize("seed", range(4))
def test_image_resolution_region_gives_the_same_overlap_as_its_patches(seed):
    rng = np.random.default_rng(100 + seed)
    patches = rng.random((8, 8)) < 0.4
    pixels = np.kron(patches, np.ones((8, 8), bool))  # the same region at 64 x 64 pixels
    boxes = rng.uniform(0, 40, size=(2, 4)) + [0, 0, 1, 1]  # arbitrary real-valued boxes
    np.testing.assert_allclose(localization.iou_and_ior(pixels, boxes, 64),
                               localization.iou_and_ior(patches, boxes, 64), atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_region_of_a_box_contains_it(seed):
    """The positive-overlap patch mask of a box contains it: IoU = IoR = |box| / |region|."""
    rng = np.random.default_rng(200 + seed)
    box = np.concatenate([rng.uniform(0, 300, 2), rng.uniform(1, 200, 2)])
    region = box_to_patch_mask(box, 512, 16)
    expected = box[2] * box[3] / (region.sum() * 32 * 32)
    np.testing.assert_allclose(localization.iou_and_ior(region, box, 512), [expected] * 2)


def test_iou_and_ior_bad_input():
    with pytest.raises(ValueError, match="image img_7"):
        localization.iou_and_ior(np.ones((4, 4), bool), [70, 70, 5, 5], 64, image_id="img_7")
    with pytest.raises(ValueError, match="bool or 0/1"):
        localization.iou_and_ior(np.full((4, 4), 0.7), [0, 0, 5, 5], 64)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        localization.iou_and_ior(np.ones(4, bool), [0, 0, 5, 5], 64)


# --- per-class tables ---------------------------------------------------------------------------

def accuracy_reference(class_ids, overlaps, thresholds, num_classes, inclusive):
    table = []
    for t in thresholds:
        row = []
        for k in range(num_classes):
            values = [v for c, v in zip(class_ids, overlaps) if c == k]
            hits = [v >= t if inclusive else v > t for v in values]
            row.append(sum(hits) / len(hits) if hits else float("nan"))
        table.append(row)
    return np.array(table)


@pytest.mark.parametrize("inclusive", [False, True])
def test_localization_accuracy_matches_loop_reference(inclusive):
    rng = np.random.default_rng(7)
    class_ids = rng.integers(0, 7, size=120)  # class 7 never occurs
    overlaps = rng.random(120)
    overlaps[:14] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7] * 2  # values exactly on thresholds
    table = localization.localization_accuracy(class_ids, overlaps, inclusive=inclusive)
    expected = accuracy_reference(class_ids, overlaps, localization.DEFAULT_THRESHOLDS, 8,
                                  inclusive)
    np.testing.assert_allclose(table.per_class, expected, equal_nan=True)
    np.testing.assert_allclose(table.mean, np.nanmean(expected, axis=1))
    np.testing.assert_array_equal(table.counts, [np.sum(class_ids == k) for k in range(8)])
    assert np.isnan(table.per_class[:, 7]).all()


def test_localization_accuracy_strict_vs_inclusive_hand_case():
    strict = localization.localization_accuracy([0, 0, 1], [0.5, 0.2, 0.5], thresholds=[0.5],
                                                num_classes=2)
    inclusive = localization.localization_accuracy([0, 0, 1], [0.5, 0.2, 0.5], thresholds=[0.5],
                                                   num_classes=2, inclusive=True)
    np.testing.assert_array_equal(strict.per_class, [[0.0, 0.0]])
    np.testing.assert_array_equal(inclusive.per_class, [[0.5, 1.0]])
    np.testing.assert_array_equal(inclusive.mean, [0.75])
    np.testing.assert_array_equal(inclusive.counts, [2, 1])


def test_per_class_average():
    table = localization.per_class_average([2, 0, 2, 2], [1.0, 0.5, 2.0, 0.0], num_classes=4)
    np.testing.assert_allclose(table.per_class, [0.5, np.nan, 1.0, np.nan], equal_nan=True)
    assert table.mean == pytest.approx(0.75)
    np.testing.assert_array_equal(table.counts, [1, 0, 3, 0])
    assert np.isnan(localization.per_class_average([], [], num_classes=3).mean)


def test_tables_reject_bad_records():
    with pytest.raises(ValueError, match=r"class_ids\[1\] = 8 is not a class index"):
        localization.localization_accuracy([0, 8], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"overlaps\[0\] = 1.5 is not in \[0, 1\]"):
        localization.localization_accuracy([0, 1], [1.5, 0.2])
    with pytest.raises(ValueError, match=r"values\[1\] = nan is not finite"):
        localization.per_class_average([0, 1], [0.3, np.nan])
    with pytest.raises(ValueError, match="one value per record"):
        localization.per_class_average([0, 1], [0.3])


# --- boxes: IoU, best IoU, false positives ------------------------------------------------------

def test_box_iou_hand_case():
    np.testing.assert_allclose(localization.box_iou([0, 0, 10, 10], [[5, 0, 10, 10],
                                                                     [20, 20, 5, 5]]),
                               [[50 / 150, 0.0]])


def test_box_iou_matches_subpixel_reference():
    rng = np.random.default_rng(8)
    b = np.clip(random_boxes(rng, 32, 32, 3), 0, None)  # inside the counted area
    a = np.concatenate([jittered(rng, b), np.clip(random_boxes(rng, 32, 32, 1), 0, None)])
    expected = [[box_iou_reference(p, q) for q in b] for p in a]
    np.testing.assert_allclose(localization.box_iou(a, b), expected, atol=1e-12)


def test_best_box_iou_takes_the_max_over_true_boxes():
    true_boxes = [[0, 0, 10, 10], [30, 30, 10, 10]]
    assert localization.best_box_iou([[30, 30, 10, 5]], true_boxes) == pytest.approx(0.5)
    assert localization.best_box_iou(np.zeros((0, 4)), true_boxes) == 0.0


def test_false_positive_count():
    true_boxes = [[0, 0, 10, 10]]
    pred = [[0, 0, 10, 10], [0, 0, 10, 5], [50, 50, 5, 5], [0, 0, 10, 4]]  # IoU 1, .5, 0, .4
    assert localization.false_positive_count(pred, true_boxes, 0.5) == 3
    assert localization.false_positive_count(pred, true_boxes, 0.5, inclusive=True) == 2
    assert localization.false_positive_count(pred, true_boxes, 0.3) == 1
    assert localization.false_positive_count(np.zeros((0, 4)), true_boxes, 0.3) == 0


def test_false_positive_count_matches_loop_reference():
    rng = np.random.default_rng(9)
    for _ in range(4):
        true_boxes = np.clip(random_boxes(rng, 32, 32, 2), 0, None)
        pred = np.concatenate([jittered(rng, true_boxes, 3), jittered(rng, true_boxes, 5)])
        expected = 0
        for p in pred:
            if not any(box_iou_reference(p, t) > 0.3 for t in true_boxes):
                expected += 1
        assert localization.false_positive_count(pred, true_boxes, 0.3) == expected


# --- continuous Dice ----------------------------------------------------------------------------

def cdice_reference(saliency, boxes, size):
    """cDice with the box mask rasterised by visiting every sub-pixel of every map cell."""
    n = len(saliency)
    xs, ys, _ = fine_samples(size, size)
    mask = [[0.0] * n for _ in range(n)]
    for y in ys:
        for x in xs:
            if in_any_box(x, y, boxes):
                mask[int(y * n // size)][int(x * n // size)] = 1.0
    hm = hh = mm = 0.0
    for r in range(n):
        for c in range(n):
            hm += saliency[r][c] * mask[r][c]
            hh += saliency[r][c] ** 2
            mm += mask[r][c] ** 2
    return 2 * hm / (hh + mm)


def test_continuous_dice_hand_cases():
    box = [16, 16, 32, 16]  # 64 x 64 image, 4 x 4 map: cells (1, 1), (1, 2)
    mask = box_to_patch_mask(box, 64, 4).astype(float)
    assert localization.continuous_dice(mask, box, 64) == pytest.approx(1.0)
    assert localization.continuous_dice(np.zeros((4, 4)), box, 64) == 0.0
    half = mask * 0.5  # 2 * (2 * 0.5) / (2 * 0.25 + 2) = 0.8
    assert localization.continuous_dice(half, box, 64) == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(4))
def test_continuous_dice_matches_loop_reference(seed):
    rng = np.random.default_rng(300 + seed)
    n = [4, 8, 12, 16][seed]  # 48 / n is on the 1/FINE grid
    saliency = rng.random((n, n))
    boxes = random_boxes(rng, 48, 48, 1 + seed % 2)
    expected = cdice_reference(saliency, clipped(boxes, 48, 48), 48)
    assert localization.continuous_dice(saliency, boxes, 48) == pytest.approx(expected, abs=1e-12)


def test_continuous_dice_bad_input():
    with pytest.raises(ValueError, match="image x1.png .*outside"):
        localization.continuous_dice(np.full((4, 4), 2.0), [0, 0, 8, 8], 64, image_id="x1.png")
    with pytest.raises(ValueError, match="square"):
        localization.continuous_dice(np.zeros((4, 6)), [0, 0, 8, 8], 64)
