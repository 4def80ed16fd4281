"""In-graph training targets from boxes: PxP patch masks and box flags (Li et al. 2018, Sec. 3.2).

The TensorFlow twin of `geometry.box_to_patch_mask`, batched and class-aware: patch (r, c) of
a PxP grid is positive for class k when a box of class k overlaps it by a positive area. With
normalised boxes the rule of `geometry` reads `x0 * P < c + 1 - tol and x1 * P > c + tol`
with tol = `geometry.EDGE_TOLERANCE` (the same tolerance, so float32 here and float64 there
agree). Several boxes of one class give the union of their masks.
"""

import tensorflow as tf

from chestxray_tf.geometry import EDGE_TOLERANCE


def valid_boxes(boxes_yxyx, box_labels):
    """bool [..., M]: slots holding a real box (label >= 0 and positive area)."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes_yxyx, axis=-1)
    return (box_labels >= 0) & (ymax > ymin) & (xmax > xmin)


def box_to_patch_mask(boxes_yxyx, box_labels, grid, num_classes):
    """Per-class patch masks of padded boxes.

    Args:
        boxes_yxyx: float [..., M, 4] normalised (ymin, xmin, ymax, xmax); clipped to [0, 1].
        box_labels: int [..., M] class ids, -1 for padding slots.
        grid: P.
        num_classes: K.

    Returns:
        float32 [..., P, P, K], indexed [row, column, class], 1 where a box of the class overlaps
        the patch.
    """
    boxes = tf.clip_by_value(tf.cast(boxes_yxyx, tf.float32), 0.0, 1.0)
    labels = tf.where(valid_boxes(boxes, box_labels), tf.cast(box_labels, tf.int32), -1)
    ymin, xmin, ymax, xmax = tf.unstack(boxes * float(grid), axis=-1)
    lower = tf.range(grid, dtype=tf.float32)
    upper, lower = lower + (1.0 - EDGE_TOLERANCE), lower + EDGE_TOLERANCE
    rows = tf.cast((ymin[..., None] < upper) & (ymax[..., None] > lower), tf.float32)
    cols = tf.cast((xmin[..., None] < upper) & (xmax[..., None] > lower), tf.float32)
    classes = tf.one_hot(labels, num_classes, dtype=tf.float32)  # all zero for -1
    overlaps = tf.einsum("...mr,...mc,...mk->...rck", rows, cols, classes)
    return tf.cast(overlaps > 0.0, tf.float32)


def has_box(boxes_yxyx, box_labels, num_classes):
    """float32 [..., K]: 1 where the image has a (valid) box of class k (the flag a_k)."""
    labels = tf.where(valid_boxes(boxes_yxyx, box_labels), tf.cast(box_labels, tf.int32), -1)
    return tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.float32), axis=-2)
