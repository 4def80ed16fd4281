"""Localization metrics: IoU and IoR of a detected region, accuracy at T(IoU) / T(IoR), box IoU,
average IoU, continuous Dice, average false positives (SPEC §1, §4, §5).

* Li et al. 2018, Sec. 4.2 and footnote 6: the detected region (the patches with p > T_s; all
  "discrete detected regions" together count as one region) against the ground-truth box(es):
  IoU, and IoR = |region ∩ box| / |region|. Accuracy at T: the fraction of the test images of
  a class whose IoU > T (Table 2, T = 0.1 ... 0.7), and separately whose IoR > T.
  Rozenberg et al. (Sec. 4: "IoU >= T or IoR >= T") and Hermoza et al. (Table 3:
  "IoU >= kappa") count equality as a hit: `inclusive=True`.
* Sedai et al. 2018 (Sec. 3, Table 1) and Kim et al. (Sec. 4.3) threshold a map, enclose the
  pieces in boxes and compare boxes: `box_iou`, `best_box_iou`, and the average false positives
  `false_positive_count` (AFP, Sedai et al. Table 1).
* Hermoza et al. 2020 (Sec. 3.2 inference, Sec. 4.3, Table 2): average IoU of the predicted
  box and the continuous Dice `continuous_dice` (SPEC §5).

Every metric is computed per (image, class); `per_class_average` and `localization_accuracy` turn
such records into the papers' per-class tables (average IoU, average cDice and AFP are
`per_class_average` of the per-image values). A region is a bool mask on an H x W grid laid over
the image: cell (r, c) covers the pixels [c*W_img/W, (c+1)*W_img/W) x [r*H_img/H, (r+1)*H_img/H)
(the patch grid of `chestxray_tf.geometry` when H = W = P; a map at the image's own resolution
when H = W = S).
"""

from typing import NamedTuple

import numpy as np

from chestxray_tf.geometry import _as_boxes, _size_wh, box_to_patch_mask, clip_boxes_xywh
from chestxray_tf.labels import BOXED_CLASSES

# Li et al. 2018, Table 2.
DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


class ClassTable(NamedTuple):
    """Per-class averages of per-(image, class) records.

    per_class: float64 [..., K], the mean over the records of each class (NaN for a class
        without records).
    mean: float64 [...], the unweighted mean over the classes that have records (NaN when no
        class has any).
    counts: int64 [K], the number of records (images) of each class.
    """
    per_class: np.ndarray
    mean: np.ndarray
    counts: np.ndarray


def _check_region(region_mask):
    region = np.asarray(region_mask)
    if region.ndim != 2 or 0 in region.shape:
        raise ValueError(f"region_mask must be a non-empty [H, W] grid, got shape {region.shape}")
    if region.dtype != bool and not np.all((region == 0) | (region == 1)):
        raise ValueError("region_mask must be bool or 0/1; threshold a map with "
                         "chestxray_tf.metrics.regions.map_to_region first")
    return region.astype(bool)


def iou_and_ior(region_mask, boxes_xywh, image_size, image_id="<unknown image>"):
    """IoU and IoR of a region on a grid against the union of the boxes of one class.

    Areas are continuous pixel areas: the region is a union of grid-cell rectangles, the truth is
    the union of the boxes (clipped to the image), and both are measured exactly by cutting the
    image along every cell edge and every box edge (coordinate compression): each piece lies in
    one cell and either inside or outside every box.

    Args:
        region_mask: bool [H, W], the detected region (all its pieces count as one region,
            Li et al. footnote 6); H = W = P for the patch grid.
        boxes_xywh: [4] or [N, 4] pixel boxes (x, y, w, h) of one class of the image.
        image_size: S (square image) or (width, height) of the frame of the boxes.
        image_id: named in the error for a box with no area inside the image.

    Returns:
        (iou, ior) as floats; an empty region gives (0.0, 0.0) (a miss).
    """
    region = _check_region(region_mask)
    boxes = clip_boxes_xywh(boxes_xywh, image_size, image_id)
    if not region.any():
        return 0.0, 0.0
    width, height = _size_wh(image_size)
    rows, cols = region.shape
    x_cells = np.arange(cols + 1) * width / cols
    y_cells = np.arange(rows + 1) * height / rows
    x0, y0 = boxes[:, 0:1], boxes[:, 1:2]
    x1, y1 = x0 + boxes[:, 2:3], y0 + boxes[:, 3:4]
    xs = np.unique(np.concatenate([x_cells, x0.ravel(), x1.ravel()]))
    ys = np.unique(np.concatenate([y_cells, y0.ravel(), y1.ravel()]))
    x_mid = (xs[:-1] + xs[1:]) / 2
    y_mid = (ys[:-1] + ys[1:]) / 2
    col = np.searchsorted(x_cells, x_mid, side="right") - 1
    row = np.searchsorted(y_cells, y_mid, side="right") - 1
    in_region = region[row[:, None], col[None, :]]
    in_x = (x0 <= x_mid) & (x_mid < x1)
    in_y = (y0 <= y_mid) & (y_mid < y1)
    in_boxes = np.any(in_y[:, :, None] & in_x[:, None, :], axis=0)
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    intersection = area[in_region & in_boxes].sum()
    region_area = area[in_region].sum()
    union = region_area + area[in_boxes].sum() - intersection
    return float(intersection / union), float(intersection / region_area)


def _check_class_ids(class_ids, num_classes):
    ids = np.asarray(class_ids)
    if ids.ndim != 1:
        raise ValueError(f"class_ids must be a 1-D array, got shape {ids.shape}")
    bad = ~np.isin(ids, np.arange(num_classes))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"class_ids[{i}] = {ids[i].item()!r} is not a class index in "
                         f"[0, {num_classes})")
    return ids.astype(np.int64)


def _check_values(values, num_records, name):
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape != (num_records,):
        raise ValueError(f"{name} must have shape [{num_records}] (one value per record), "
                         f"got {vals.shape}")
    bad = ~np.isfinite(vals)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {vals[i]} is not finite")
    return vals


def _class_table(ids, values, num_classes):
    """ClassTable of checked ids [M] and values [..., M]."""
    one_hot = ids[:, None] == np.arange(num_classes)[None, :]
    counts = one_hot.sum(axis=0)
    has_records = counts > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = (values @ one_hot) / counts
    per_class = np.where(has_records, per_class, np.nan)
    if np.any(has_records):
        mean = per_class[..., has_records].mean(axis=-1)
    else:
        mean = np.full(per_class.shape[:-1], np.nan)
    return ClassTable(per_class=per_class, mean=mean, counts=counts)


def per_class_average(class_ids, values, num_classes=len(BOXED_CLASSES)):
    """Per-class mean of per-(image, class) values, and their mean over classes.

    Average IoU (Hermoza et al. Table 2) is this of `best_box_iou`, average cDice of
    `continuous_dice`, AFP (Sedai et al. Table 1) of `false_positive_count`.

    Args:
        class_ids: int [M], the class of each record (canonical index, `chestxray_tf.labels`).
        values: float [M], one value per record.
        num_classes: K (default: the 8 boxed classes).

    Returns:
        ClassTable with per_class [K] and a scalar mean.
    """
    ids = _check_class_ids(class_ids, num_classes)
    return _class_table(ids, _check_values(values, len(ids), "values"), num_classes)


def localization_accuracy(class_ids, overlaps, thresholds=DEFAULT_THRESHOLDS,
                          num_classes=len(BOXED_CLASSES), inclusive=False):
    """Accuracy at T: per class, the fraction of its test images whose overlap > T.

    Li et al. 2018, Sec. 4.2 and Table 2: called with the IoUs for T(IoU) and, separately, with
    the IoRs for T(IoR). Any paper's records feed it, one per (image, class) with a box of that
    class: the IoU of a region (`iou_and_ior`), or of the best predicted box (`best_box_iou`).

    Args:
        class_ids: int [M], the class of each record.
        overlaps: float [M] in [0, 1], the IoU (or IoR) of each record.
        thresholds: the T values.
        num_classes: K (default: the 8 boxed classes).
        inclusive: count overlap >= T as a hit (Rozenberg et al., Hermoza et al.) instead of
            overlap > T (Li et al., Sedai et al.).

    Returns:
        ClassTable with per_class [len(thresholds), K], mean [len(thresholds)], counts [K].
    """
    ids = _check_class_ids(class_ids, num_classes)
    vals = _check_values(overlaps, len(ids), "overlaps")
    outside = (vals < 0) | (vals > 1)
    if np.any(outside):
        i = int(np.argmax(outside))
        raise ValueError(f"overlaps[{i}] = {vals[i]} is not in [0, 1]")
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    hits = vals[None, :] >= t if inclusive else vals[None, :] > t
    return _class_table(ids, hits.astype(np.float64), num_classes)


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU of pixel boxes (x, y, w, h): [Na, 4] x [Nb, 4] -> [Na, Nb]."""
    a, b = _as_boxes(boxes_a), _as_boxes(boxes_b)
    ax1, ay1 = a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    inter_w = np.clip(np.minimum(ax1, bx1) - np.maximum(a[:, 0:1], b[:, 0]), 0, None)
    inter_h = np.clip(np.minimum(ay1, by1) - np.maximum(a[:, 1:2], b[:, 1]), 0, None)
    intersection = inter_w * inter_h
    union = (a[:, 2:3] * a[:, 3:4]) + (b[:, 2] * b[:, 3]) - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def best_box_iou(pred_boxes_xywh, true_boxes_xywh):
    """The largest IoU between any predicted box and any true box of one (image, class).

    With one predicted box (Hermoza et al.: the largest connected component) and several true
    boxes of the class, this is the max over the true boxes. With several predicted boxes
    (Sedai et al., Kim et al.: every thresholded piece gets a box) the image counts as localised
    at T when some predicted box matches some true box, which is this value > T.

    Args:
        pred_boxes_xywh: [Np, 4] pixel boxes, Np may be 0 (nothing detected).
        true_boxes_xywh: [4] or [Nt, 4] pixel boxes in the same frame.

    Returns:
        float; 0.0 when there is no predicted box.
    """
    ious = box_iou(pred_boxes_xywh, true_boxes_xywh)
    return float(ious.max()) if ious.size else 0.0


def false_positive_count(pred_boxes_xywh, true_boxes_xywh, threshold, inclusive=False):
    """The false positives of one (image, class): predicted boxes matching no true box.

    Sedai et al. 2018 report the "average false positive (AFP)" beside the accuracy at each
    T(IoU) (Table 1) without defining it further; they take it, with the accuracy, from the
    ChestX-ray8 benchmark of Wang et al. (their ref. [12]). A predicted box is a true detection
    when its IoU with a true box of the class is > T (Sedai et al., Sec. 3: "positive detection
    when IOU is greater than a given threshold value"); every other predicted box is a false
    positive. Several predicted boxes may match the same true box (no one-to-one assignment).
    AFP is `per_class_average` of these counts over the images of a class.

    Args:
        pred_boxes_xywh: [Np, 4] pixel boxes, Np may be 0.
        true_boxes_xywh: [4] or [Nt, 4] pixel boxes in the same frame.
        threshold: T(IoU).
        inclusive: a match is IoU >= T instead of IoU > T.

    Returns:
        int, the number of predicted boxes with no match.
    """
    best = box_iou(pred_boxes_xywh, true_boxes_xywh).max(axis=1, initial=0.0)
    matched = best >= threshold if inclusive else best > threshold
    return int(np.sum(~matched))


def continuous_dice(saliency_map, boxes_xywh, image_size, image_id="<unknown image>"):
    """Continuous Dice of a saliency map against the boxes of one class (Hermoza et al. 2020,
    Table 2; SPEC §5): cDice = 2 sum(h m) / (sum(h^2) + sum(m^2)).

    h is the saliency map in [0, 1] at its own resolution; m the binary mask of the union of the
    boxes at the same resolution, a cell being in the box when the two overlap by a positive area
    (the patch convention of `chestxray_tf.geometry.box_to_patch_mask`; the authors' released
    code floors the scaled box corners instead, which drops a partly covered last row/column).

    Args:
        saliency_map: float [H, H] in [0, 1] (square, over a square or rectangular image).
        boxes_xywh: [4] or [N, 4] pixel boxes of the class in the image frame.
        image_size: S or (width, height) of that frame.
        image_id: named in errors.

    Returns:
        float in [0, 1].
    """
    h = np.asarray(saliency_map, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] == 0:
        raise ValueError(f"saliency map of image {image_id} must be a square [H, H] grid, "
                         f"got shape {h.shape}")
    if not np.all((h >= 0) & (h <= 1)):
        raise ValueError(f"saliency map of image {image_id} has values outside [0, 1] "
                         f"(min {np.nanmin(h)}, max {np.nanmax(h)}); normalise it first")
    m = box_to_patch_mask(boxes_xywh, image_size, h.shape[0], image_id)
    return float(2 * np.sum(h * m) / (np.sum(h * h) + np.sum(m)))
