"""A differentiable affine image sampler (spatial transformer; Jaderberg et al. 2015), with the
semantics of PyTorch's `affine_grid` + `grid_sample(mode="bilinear", align_corners=False)`
(Kim et al. brief §3.2), and the same map applied to points and boxes.

Coordinates. An H x W image spans the normalised square [-1, 1]^2, x to the right, y down;
pixel (row i, col j) has its centre at x = (2j + 1)/W - 1, y = (2i + 1)/H - 1 (align_corners
False). A matrix A = [M | t] of shape [2, 3] maps each *output* point (x_t, y_t) to the *input*
point it reads, (x_s, y_s) = M (x_t, y_t) + t (the STN convention: t_x > 0 moves the content to
the left). Normalised coordinates do not depend on the resolution, so one A warps an image and
a map of any size alike.

Sampling. Input point (x_s, y_s) is pixel (row, col) = (((y_s + 1) H - 1)/2, ((x_s + 1) W - 1)/2)
and is read bilinearly from its 4 neighbours; a neighbour outside the image contributes
`fill_value` instead of a pixel (PyTorch's "zeros" padding for fill 0). The output is
differentiable in the image and in A (through the bilinear weights) and is computed with one
gather per corner: no loop over pixels, static shapes.
"""

import numpy as np
from keras import ops


def affine_grid(matrices, height, width):
    """Input points read by each output pixel: [B, 2, 3] -> (x_s, y_s) [B, height * width, 2],
    output pixels in row-major order."""
    matrices = ops.convert_to_tensor(matrices)
    x_t = (2.0 * np.arange(width) + 1.0) / width - 1.0
    y_t = (2.0 * np.arange(height) + 1.0) / height - 1.0
    xx, yy = np.meshgrid(x_t, y_t)  # [height, width] each, xx varies along columns
    points = np.stack([xx.ravel(), yy.ravel(), np.ones(height * width)], axis=-1)
    points = ops.convert_to_tensor(points, dtype=matrices.dtype)
    return ops.einsum("bij,nj->bni", matrices, points)


def grid_sample(images, points, fill_value=0.0):
    """Bilinear samples of `images` [B, H, W, C] at normalised points [B, N, 2] -> [B, N, C].

    Each of the 4 neighbours of a point weighs (1 - |dx|)(1 - |dy|); a neighbour outside the
    image reads `fill_value`.
    """
    images = ops.convert_to_tensor(images)
    _, height, width, channels = images.shape
    if height is None or width is None or channels is None:
        raise ValueError(f"grid_sample needs static image sizes, got shape {images.shape}")
    points = ops.cast(points, images.dtype)
    col = ((points[..., 0] + 1.0) * width - 1.0) / 2.0
    row = ((points[..., 1] + 1.0) * height - 1.0) / 2.0
    col0 = ops.floor(col)
    row0 = ops.floor(row)
    flat = ops.reshape(images, (-1, height * width, channels))
    out = 0.0
    total_weight = 0.0
    for d_row, d_col in ((0, 0), (0, 1), (1, 0), (1, 1)):
        r = row0 + d_row
        c = col0 + d_col
        weight = (1.0 - ops.abs(row - r)) * (1.0 - ops.abs(col - c))
        inside = (r >= 0) & (r <= height - 1) & (c >= 0) & (c <= width - 1)
        weight = ops.where(inside, weight, ops.zeros_like(weight))
        index = (ops.cast(ops.clip(r, 0, height - 1), "int32") * width
                 + ops.cast(ops.clip(c, 0, width - 1), "int32"))
        values = ops.take_along_axis(flat, ops.expand_dims(index, -1), axis=1)
        out = out + ops.expand_dims(weight, -1) * values
        total_weight = total_weight + weight
    return out + ops.expand_dims(1.0 - total_weight, -1) * ops.cast(fill_value, images.dtype)


def affine_warp(images, matrices, output_size=None, fill_value=0.0):
    """Warps images [B, H, W, C] by matrices [B, 2, 3] -> [B, H_o, W_o, C].

    Output pixel (i, j) = the input read at A (x_t(j), y_t(i), 1) (see the module docstring).
    `output_size` = (H_o, W_o), the input's size by default.
    """
    images = ops.convert_to_tensor(images)
    height, width = output_size or images.shape[1:3]
    points = affine_grid(ops.cast(matrices, images.dtype), height, width)
    return ops.reshape(grid_sample(images, points, fill_value),
                       (-1, height, width, images.shape[-1]))


MIN_DET = 1e-3


def degenerate_affine(matrices, min_det=MIN_DET):
    """bool [B]: |det M| <= min_det for matrices [B, 2, 3] = [M | t], the matrices that
    `invert_affine` replaces by the identity (to be counted and reported)."""
    matrices = ops.convert_to_tensor(matrices)
    det = matrices[:, 0, 0] * matrices[:, 1, 1] - matrices[:, 0, 1] * matrices[:, 1, 0]
    return ops.abs(det) <= min_det


def invert_affine(matrices, min_det=MIN_DET):
    """A^-1 = [M^-1 | -M^-1 t] of matrices [B, 2, 3] = [M | t]; a matrix with |det M| <= min_det
    (not invertible in practice, `degenerate_affine`) gives the identity (brief §3.2)."""
    matrices = ops.convert_to_tensor(matrices)
    a, b, t_x = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, t_y = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * d - b * c
    ok = ops.logical_not(degenerate_affine(matrices, min_det))
    det = ops.where(ok, det, ops.ones_like(det))
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    inverse = ops.stack([
        ops.stack([ia, ib, -(ia * t_x + ib * t_y)], axis=-1),
        ops.stack([ic, id_, -(ic * t_x + id_ * t_y)], axis=-1)], axis=1)
    identity = ops.cast(ops.convert_to_tensor(np.eye(2, 3)), matrices.dtype)
    return ops.where(ok[:, None, None], inverse, identity[None])


def transform_boxes(boxes_yxyx, matrices):
    """Maps boxes through the point map of A: the box of the output frame whose points A sends
    to the given boxes' corners, i.e. each corner u (in [0, 1]) goes to A (2u - 1, 1) rescaled to
    [0, 1], and the result is the axis-aligned box enclosing the 4 mapped corners.

    So `transform_boxes(b, A)` takes a box of the *warped* frame to the *original* one, and
    `transform_boxes(b, invert_affine(A))` the original to the warped frame (NumPy).

    Args:
        boxes_yxyx: [N, 4] normalised (ymin, xmin, ymax, xmax) boxes, one per matrix.
        matrices: [N, 2, 3].

    Returns:
        float64 [N, 4] normalised (ymin, xmin, ymax, xmax), not clipped to the image.
    """
    boxes = np.asarray(boxes_yxyx, dtype=np.float64).reshape(-1, 4)
    matrices = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3)
    if len(boxes) != len(matrices):
        raise ValueError(f"transform_boxes needs one matrix per box, got {len(boxes)} boxes "
                         f"and {len(matrices)} matrices")
    ymin, xmin, ymax, xmax = boxes.T
    corners_x = np.stack([xmin, xmax, xmin, xmax], axis=-1) * 2.0 - 1.0
    corners_y = np.stack([ymin, ymin, ymax, ymax], axis=-1) * 2.0 - 1.0
    points = np.stack([corners_x, corners_y, np.ones_like(corners_x)], axis=-1)  # [N, 4, 3]
    mapped = (np.einsum("nij,nkj->nki", matrices, points) + 1.0) / 2.0  # [N, 4, (x, y)]
    return np.stack([mapped[..., 1].min(-1), mapped[..., 0].min(-1),
                     mapped[..., 1].max(-1), mapped[..., 0].max(-1)], axis=-1)
