"""Box formats, box scaling, and box -> patch-grid masks (SPEC §0, §1).

Two box formats are used in the package:

* `xywh`: pixels of an image, (x, y) the top-left corner, as in NIH's BBox_List_2017.csv
  (whose boxes live in the 1024x1024 PNG frame).
* `yxyx`: normalised (ymin, xmin, ymax, xmax) in [0, 1], as stored in the TFRecords, so a box
  follows its image through any resize.

A PxP patch grid over an S x S image: patch (r, c) covers the pixels
[c*S/P, (c+1)*S/P) x [r*S/P, (r+1)*S/P). A patch is positive for a box when the two overlap
by a positive area (Li et al. 2018, Sec. 3.2: partial overlap counts); several boxes of one
class give the union of their masks.
"""

import numpy as np


def _as_boxes(boxes):
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [4] or [N, 4], got {np.shape(boxes)}")
    return arr


def _size_wh(image_size):
    """(width, height) of `image_size` given as S or (width, height)."""
    if np.ndim(image_size) == 0:
        return float(image_size), float(image_size)
    width, height = image_size
    return float(width), float(height)


def xywh_to_yxyx(boxes_xywh, image_size):
    """Pixel boxes (x, y, w, h) -> normalised (ymin, xmin, ymax, xmax) of an image.

    `image_size` is S (square) or (width, height). Returns float64 [N, 4].
    """
    b = _as_boxes(boxes_xywh)
    width, height = _size_wh(image_size)
    x, y, w, h = b.T
    return np.stack([y / height, x / width, (y + h) / height, (x + w) / width], axis=-1)


def yxyx_to_xywh(boxes_yxyx, image_size):
    """Normalised (ymin, xmin, ymax, xmax) -> pixel boxes (x, y, w, h) of an image."""
    b = _as_boxes(boxes_yxyx)
    width, height = _size_wh(image_size)
    ymin, xmin, ymax, xmax = b.T
    return np.stack([xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height],
                    axis=-1)


def scale_boxes_xywh(boxes_xywh, from_size, to_size):
    """Rescales pixel boxes from an image of `from_size` to one of `to_size` (S or (w, h))."""
    b = _as_boxes(boxes_xywh)
    fw, fh = _size_wh(from_size)
    tw, th = _size_wh(to_size)
    return b * np.array([tw / fw, th / fh, tw / fw, th / fh])


def clip_boxes_xywh(boxes_xywh, image_size, image_id="<unknown image>"):
    """Clips pixel boxes to the image; a box with no area left is an error naming the image.

    Raises:
        ValueError: a box has zero or negative area after clipping.
    """
    b = _as_boxes(boxes_xywh)
    width, height = _size_wh(image_size)
    x0 = np.clip(b[:, 0], 0.0, width)
    y0 = np.clip(b[:, 1], 0.0, height)
    x1 = np.clip(b[:, 0] + b[:, 2], 0.0, width)
    y1 = np.clip(b[:, 1] + b[:, 3], 0.0, height)
    empty = (x1 <= x0) | (y1 <= y0)
    if np.any(empty):
        bad = b[np.argmax(empty)].tolist()
        raise ValueError(
            f"box {bad} (x, y, w, h) of image {image_id} has no area inside the "
            f"{width:g}x{height:g} image")
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


# A box overlaps a patch when it covers more than this fraction of a patch's side on both axes:
# NIH coordinates such as 341.333333 put an edge ~3e-7 px from a patch edge (1024 / 12 * 4),
# where float32 (the in-graph mask of `data.targets`) and float64 disagree on a "positive"
# overlap. 1e-4 of a patch (0.005 px at 1024 px, P = 20) is far above float32's error there, so
# both masks agree.
EDGE_TOLERANCE = 1e-4


def box_to_patch_mask(boxes_xywh, image_size, grid, image_id="<unknown image>"):
    """PxP bool mask of the patches that overlap any of the boxes by more than
    `EDGE_TOLERANCE` of a patch on each axis (a positive area, up to float rounding).

    Args:
        boxes_xywh: [4] or [N, 4] pixel boxes of one class of one image (their union is
            taken). Boxes crossing the border are clipped.
        image_size: S (square image) or (width, height) of the frame the boxes are in.
        grid: P, the number of patches per side.
        image_id: named in the error for a box with no area after clipping.

    Returns:
        bool array [P, P], indexed [row, column].
    """
    b = clip_boxes_xywh(boxes_xywh, image_size, image_id)
    width, height = _size_wh(image_size)
    edges = np.arange(grid + 1, dtype=np.float64)
    # Patch c spans [c*S/P, (c+1)*S/P); it overlaps [x0, x1) by more than EDGE_TOLERANCE of a
    # patch iff x0 < (c+1 - tol)*S/P and x1 > (c + tol)*S/P. Compared as x*P < (c+1-tol)*S
    # to avoid dividing by P.
    x0, y0 = b[:, 0:1] * grid, b[:, 1:2] * grid
    x1, y1 = (b[:, 0:1] + b[:, 2:3]) * grid, (b[:, 1:2] + b[:, 3:4]) * grid
    upper, lower = edges[None, 1:] - EDGE_TOLERANCE, edges[None, :-1] + EDGE_TOLERANCE
    cols = (x0 < upper * width) & (x1 > lower * width)
    rows = (y0 < upper * height) & (y1 > lower * height)
    return np.any(rows[:, :, None] & cols[:, None, :], axis=0)
