"""On-the-fly geometric augmentation moving boxes with their image (Hermoza et al. 2020, Sec. 4).

Hermoza et al. train with "zoom between 0 and 0.1, translation in the four directions between
-50 and 50 pixels, rotation between -10 and 10 degrees and random horizontal flipping" at
512 x 512. **[decision]** Zoom is a zoom-in by a factor in [1, 1.1]; the 50 px shift scales with
the image size (50 / 512 of the side); the area uncovered by the transform is filled with 0
(black, as outside the body on a radiograph).

One random affine map per image is applied to the pixels (`keras.ops.image.affine_transform`,
bilinear) and to the boxes: each box becomes the axis-aligned box around its four transformed
corners, clipped to the image; a box left without area is dropped (label -1), so its class falls
back to the image-level target.
"""

import math

import keras
import tensorflow as tf

HERMOZA = {"zoom": (1.0, 1.1), "shift_pixels_at_512": 50.0, "rotation_degrees": 10.0,
           "horizontal_flip": True}


def _random_affine(batch, image_size, zoom, shift, rotation_degrees, horizontal_flip, key):
    """Per image: 2x2 linear part L and translation t of the map u' = L (u - c) + c + t."""
    keys = tf.random.experimental.stateless_split(key, 5)

    def uniform(low, high, k):
        return tf.random.stateless_uniform([batch], keys[k], low, high)

    scale = uniform(zoom[0], zoom[1], 0)
    angle = uniform(-rotation_degrees, rotation_degrees, 1) * (math.pi / 180.0)
    shift_x = uniform(-shift, shift, 2) * image_size
    shift_y = uniform(-shift, shift, 3) * image_size
    flip = tf.where(uniform(0.0, 1.0, 4) < 0.5, -1.0, 1.0) if horizontal_flip else 1.0
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    # L = scale * R(angle) @ diag(flip, 1), acting on (x, y) column vectors.
    linear = tf.reshape(tf.stack([cos * flip, -sin, sin * flip, cos], axis=-1), [-1, 2, 2])
    return linear, tf.stack([shift_x, shift_y], axis=-1)


def _transform_images(images, linear, translation, image_size):
    """Warps images by u' = L (u - c) + c + t (u in continuous pixel coordinates)."""
    # affine_transform maps each output pixel index to an input pixel index; an index x is the
    # continuous coordinate x + 0.5, so the centre in index coordinates is (S - 1) / 2.
    inverse = tf.linalg.inv(linear)
    centre = (image_size - 1) / 2.0
    offset = centre - tf.linalg.matvec(inverse, centre + translation)
    flat = tf.concat([inverse[:, 0, :], offset[:, 0:1], inverse[:, 1, :], offset[:, 1:2],
                      tf.zeros_like(offset)], axis=-1)
    return keras.ops.image.affine_transform(images, flat, interpolation="bilinear",
                                            fill_mode="constant", fill_value=0.0)


def _transform_boxes(boxes_yxyx, box_labels, linear, translation, image_size):
    """Moves normalised boxes [B, M, 4] with the images; drops boxes left without area."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes_yxyx * image_size, axis=-1)
    corners_x = tf.stack([xmin, xmax, xmin, xmax], axis=-1)  # [B, M, 4 corners]
    corners_y = tf.stack([ymin, ymin, ymax, ymax], axis=-1)
    centre = image_size / 2.0
    linear = linear[:, None, None]  # [B, 1, 1, 2, 2]
    dx, dy = corners_x - centre, corners_y - centre
    new_x = linear[..., 0, 0] * dx + linear[..., 0, 1] * dy + centre + translation[:, None, 0:1]
    new_y = linear[..., 1, 0] * dx + linear[..., 1, 1] * dy + centre + translation[:, None, 1:2]
    moved = tf.stack([tf.reduce_min(new_y, -1), tf.reduce_min(new_x, -1),
                      tf.reduce_max(new_y, -1), tf.reduce_max(new_x, -1)], axis=-1)
    moved = tf.clip_by_value(moved / image_size, 0.0, 1.0)
    keep = ((box_labels >= 0) & (moved[..., 2] > moved[..., 0]) & (moved[..., 3] > moved[..., 1]))
    return (tf.where(keep[..., None], moved, 0.0),
            tf.where(keep, box_labels, tf.constant(-1, box_labels.dtype)))


def random_affine(*, zoom, shift_pixels_at_512, rotation_degrees, horizontal_flip):
    """An augmentation hook for `pipeline.make_dataset`.

    Args:
        zoom: (min, max) zoom-in factor.
        shift_pixels_at_512: maximum shift along x and along y, in pixels of a 512 px image.
        rotation_degrees: maximum rotation either way.
        horizontal_flip: flip half of the images left-right.

    Returns:
        augment(images [B, S, S, C] float32, boxes [B, M, 4], box_labels [B, M], key)
            -> (images, boxes, box_labels), boxes transformed consistently; `key` is a
            stateless random key (int [2]): the same key, the same transforms.
    """
    def augment(images, boxes, box_labels, key):
        size = images.shape[1]
        linear, translation = _random_affine(
            tf.shape(images)[0], size, zoom, shift_pixels_at_512 / 512.0, rotation_degrees,
            horizontal_flip, key)
        images = _transform_images(images, linear, translation, size)
        boxes, box_labels = _transform_boxes(boxes, box_labels, linear, translation, size)
        return images, boxes, box_labels

    return augment


def hermoza():
    """Hermoza et al.'s training augmentation (zoom, shift, rotation, horizontal flip)."""
    return random_affine(**HERMOZA)
