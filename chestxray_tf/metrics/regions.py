"""From maps to regions to boxes: thresholding, connected components, bounding boxes
(SPEC §1, §3, §4, §5).

* Li et al. 2018, Sec. 3.3: the patches with p > T_s (0.5) form the region; its discrete pieces
  together count as one region (`map_to_region(..., keep="all")`).
* Kim et al. (Sec. 4.3) and Sedai et al. 2018 (Sec. 3): binarise the CAM / attention map and
  enclose the resulting masks with rectangles (`map_to_boxes(..., keep="all")`: a box per piece).
* Hermoza et al. 2020, Sec. 3.2 (inference): threshold, keep the largest connected component,
  take the smallest rectangle covering it (`map_to_boxes(..., keep="largest")`).

A map is an H x W grid of any resolution laid over the image: cell (r, c) covers the pixels
[c*W_img/W, (c+1)*W_img/W) x [r*H_img/H, (r+1)*H_img/H), so boxes come out in the pixels of the
image whatever the map's resolution (the patch grid of `chestxray_tf.geometry` when H = W = P).
Connected components use 8-connectivity (cells touching by a corner are connected), as the
outer contours of OpenCV's `findContours` in Hermoza et al.'s released code do; a blob that is
one lesion on a coarse grid often touches itself only diagonally.
"""

import numpy as np
from scipy import ndimage

from chestxray_tf.geometry import _size_wh

# 8-connectivity for scipy.ndimage.label.
CONNECTIVITY = np.ones((3, 3), dtype=bool)

KEEP_CHOICES = ("all", "largest")


def _check_map(saliency_map):
    values = np.asarray(saliency_map, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"a map must be a non-empty [H, W] grid, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("the map has non-finite values")
    return values


def _check_mask(mask):
    mask = np.asarray(mask)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"a mask must be a non-empty [H, W] grid, got shape {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"a mask must be bool, got dtype {mask.dtype}")
    return mask


def _check_keep(keep):
    if keep not in KEEP_CHOICES:
        raise ValueError(f"keep must be one of {KEEP_CHOICES}, got {keep!r}")


def binarize(saliency_map, threshold, inclusive=False):
    """bool [H, W]: the cells of the map above the threshold (value > T, or >= T when
    `inclusive`: Li et al. use p > T_s, Rozenberg et al. z >= 0.5)."""
    values = _check_map(saliency_map)
    return values >= threshold if inclusive else values > threshold


def binarize_band(saliency_map, low, high):
    """bool [H, W]: the cells with low <= value <= high (both ends kept).

    The "wang2017" binarisation option of the Sedai et al. 2018 brief (D-13): Wang et al.'s
    band of the normalised map, low = 60/255, high = 180/255.
    """
    if not low <= high:
        raise ValueError(f"binarize_band needs low <= high, got low={low!r}, high={high!r}")
    values = _check_map(saliency_map)
    return (values >= low) & (values <= high)


def connected_components(mask):
    """Labels of the 8-connected components of a bool mask.

    Returns:
        (labels int [H, W] with 0 for background and 1..n for the components, numbered in
        raster order of their first cell; n).
    """
    return ndimage.label(_check_mask(mask), structure=CONNECTIVITY)


def largest_component(mask):
    """bool [H, W]: the largest 8-connected component of the mask (most cells; a tie goes to
    the component whose first cell comes first in raster order). An empty mask stays empty."""
    labels, count = connected_components(mask)
    if count == 0:
        return np.zeros(labels.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return labels == (np.argmax(sizes) + 1)


def map_to_region(saliency_map, threshold, keep="all", inclusive=False):
    """Thresholded map -> region mask on the map's grid, for `iou_and_ior`.

    Args:
        saliency_map: float [H, W], any resolution (patch grid, CAM, or the image's own pixels).
        threshold: T_s.
        keep: "all" (every piece; Li et al.'s region) or "largest" (the largest 8-connected
            component; Hermoza et al.).
        inclusive: value >= T instead of value > T.

    Returns:
        bool [H, W].
    """
    _check_keep(keep)
    mask = binarize(saliency_map, threshold, inclusive)
    return largest_component(mask) if keep == "largest" else mask


def region_boxes(mask, image_size, keep="all"):
    """Bounding boxes of the 8-connected components of a mask, in pixels of the image.

    The box of a component is the smallest rectangle covering its cells, each cell being the
    rectangle of the image it covers (see the module docstring).

    Args:
        mask: bool [H, W] on a grid over the image.
        image_size: S (square image) or (width, height).
        keep: "all" (a box per component, in raster order of their first cell) or "largest"
            (the box of `largest_component`).

    Returns:
        float64 [N, 4] boxes (x, y, w, h); N = 0 for an empty mask, N <= 1 for "largest".
    """
    _check_keep(keep)
    mask = _check_mask(mask)
    if keep == "largest":
        mask = largest_component(mask)
    labels, _ = connected_components(mask)
    slices = ndimage.find_objects(labels)
    if not slices:
        return np.zeros((0, 4))
    extents = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in slices],
                       dtype=np.float64)
    width, height = _size_wh(image_size)
    rows, cols = mask.shape
    x0 = extents[:, 2] * width / cols
    x1 = extents[:, 3] * width / cols
    y0 = extents[:, 0] * height / rows
    y1 = extents[:, 1] * height / rows
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


def map_to_boxes(saliency_map, threshold, image_size, keep="largest", inclusive=False):
    """Saliency map -> predicted boxes: threshold, connected components, bounding boxes.

    Args:
        saliency_map: float [H, W], any resolution.
        threshold: binarisation threshold.
        image_size: S or (width, height) of the frame of the boxes.
        keep: "largest" (Hermoza et al.) or "all" (Sedai et al., Kim et al.).
        inclusive: value >= T instead of value > T.

    Returns:
        float64 [N, 4] pixel boxes (x, y, w, h); N = 0 when nothing passes the threshold.
    """
    return region_boxes(binarize(saliency_map, threshold, inclusive), image_size, keep)
