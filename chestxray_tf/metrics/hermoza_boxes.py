"""Hermoza et al. 2020 inference map -> one box per (image, class), and the options of their
released code (Sec. 3.2 step 3-4; brief §8, errata 8).

* Threshold: an absolute value (the paper; the code on the Sal map) or a percentile
  (`percentile_threshold`, the code on Det / Mix: the round(n p)-th smallest map value). The mask
  is map >= T, or map > T when T is the map's minimum (the code's `get_mask`).
* keep="largest" (paper): the box of the largest 8-connected component
  (`regions.region_boxes(keep="largest")`); keep="most_active" (code "split"): the box of the
  component whose bounding box holds the largest map value; keep="union" (code): every
  component's box, scored with `multi_iou`.
Boxes are (x, y, w, h) pixels of the image, with exact cell extents (the code's inclusive-max
boxes are one map cell narrower).
"""

import numpy as np

from chestxray_tf.geometry import _as_boxes
from chestxray_tf.metrics import regions

KEEP_CHOICES = ("largest", "most_active", "union")


def percentile_threshold(saliency_map, fraction):
    """The k-th smallest value of the map, k = round(n * fraction) (torch `kthvalue`, 1-based):
    fraction 0.6 keeps about the top 40 % of the cells."""
    values = np.sort(regions._check_map(saliency_map).ravel())
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = int(np.round(values.size * fraction))
    return float(values[max(k, 1) - 1])


def threshold_mask(saliency_map, threshold):
    """bool mask: map >= T, or map > T when T equals the map's minimum (authors' `get_mask`)."""
    values = regions._check_map(saliency_map)
    return values > threshold if threshold == values.min() else values >= threshold


def _cell_boxes_max(values, boxes, image_size):
    """Max of the map over the cells of each (x, y, w, h) pixel box (exact cell extents)."""
    rows, cols = values.shape
    width, height = (float(image_size), float(image_size)) if np.ndim(image_size) == 0 else \
        tuple(float(v) for v in image_size)
    scores = []
    for x, y, w, h in boxes:
        r0, r1 = int(round(y * rows / height)), int(round((y + h) * rows / height))
        c0, c1 = int(round(x * cols / width)), int(round((x + w) * cols / width))
        scores.append(values[r0:r1, c0:c1].max())
    return np.array(scores)


def map_to_boxes(saliency_map, threshold, image_size, keep="largest", percentile=False):
    """Inference map -> predicted box(es) of one (image, class).

    Args:
        saliency_map: float [H, W] (x_S, x_RPN or x_FS), any resolution over the image.
        threshold: T, or the fraction of `percentile_threshold` when `percentile`.
        image_size: S or (width, height) of the frame of the boxes.
        keep: "largest" (paper), "most_active" or "union" (authors' code).
        percentile: threshold by the map's own quantile (the code's Det / Mix maps).

    Returns:
        float64 [M, 4] (x, y, w, h): M <= 1 for "largest" / "most_active"; M = 0 when the mask is
        empty.
    """
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")
    values = regions._check_map(saliency_map)
    if percentile:
        threshold = percentile_threshold(values, threshold)
    mask = threshold_mask(values, threshold)
    if keep == "largest":
        return regions.region_boxes(mask, image_size, keep="largest")
    boxes = regions.region_boxes(mask, image_size, keep="all")
    if keep == "union" or len(boxes) <= 1:
        return boxes
    return boxes[np.argmax(_cell_boxes_max(values, boxes, image_size))][None]


def multi_iou(pred_boxes_xywh, true_box_xywh):
    """IoU of several predicted boxes with one true box as the authors' `multi_iou`:
    sum_i |b_i ∩ g| / (sum_i |b_i| + |g| - sum_i |b_i ∩ g|) (overlaps counted per box).
    0 for no predicted box."""
    pred = np.asarray(pred_boxes_xywh, dtype=np.float64).reshape(-1, 4)
    truth = _as_boxes(true_box_xywh)
    if truth.shape[0] != 1:
        raise ValueError(f"multi_iou takes one true box, got {truth.shape[0]}")
    if pred.shape[0] == 0:
        return 0.0
    g = truth[0]
    inter_w = np.clip(np.minimum(pred[:, 0] + pred[:, 2], g[0] + g[2])
                      - np.maximum(pred[:, 0], g[0]), 0, None)
    inter_h = np.clip(np.minimum(pred[:, 1] + pred[:, 3], g[1] + g[3])
                      - np.maximum(pred[:, 1], g[1]), 0, None)
    intersection = np.sum(inter_w * inter_h)
    union = np.sum(pred[:, 2] * pred[:, 3]) + g[2] * g[3] - intersection
    return float(intersection / union) if union > 0 else 0.0
