"""Tests of chestxray_tf/data/augment.py: boxes follow their image through the random affine."""

import numpy as np

from chestxray_tf.data import augment

S = 64
KEY = np.array([7, 0], np.int64)


def _rectangles(batch, box_yxyx):
    """Batch of black images with one white rectangle exactly filling `box_yxyx`."""
    y0, x0, y1, x1 = (np.asarray(box_yxyx) * S).astype(int)
    images = np.zeros((batch, S, S, 1), np.float32)
    images[:, y0:y1, x0:x1] = 255.0
    boxes = np.zeros((batch, 3, 4), np.float32)
    boxes[:, 0] = box_yxyx
    labels = -np.ones((batch, 3), np.int32)
    labels[:, 0] = 4
    return images, boxes, labels


def _extent(image):
    """(ymin, xmin, ymax, xmax) in pixels of the pixels brighter than half."""
    ys, xs = np.nonzero(image[..., 0] > 127.5)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)


def test_flip_only_mirrors_pixels_and_boxes_exactly():
    images, boxes, labels = _rectangles(16, [0.25, 0.125, 0.5, 0.375])
    flip = augment.random_affine(zoom=(1.0, 1.0), shift_pixels_at_512=0.0, rotation_degrees=0.0,
                                 horizontal_flip=True)
    out, out_boxes, out_labels = (t.numpy() for t in flip(images, boxes, labels, KEY))
    flipped = 0
    for i in range(16):
        if np.array_equal(out[i], images[i]):
            np.testing.assert_allclose(out_boxes[i, 0], boxes[i, 0], atol=1e-6)
        else:
            np.testing.assert_array_equal(out[i], images[i, :, ::-1])
            np.testing.assert_allclose(out_boxes[i, 0], [0.25, 0.625, 0.5, 0.875], atol=1e-6)
            flipped += 1
        np.testing.assert_array_equal(out_labels[i], [4, -1, -1])
        np.testing.assert_array_equal(out_boxes[i, 1:], 0.0)
    assert 0 < flipped < 16


def test_hermoza_boxes_enclose_the_moved_rectangle():
    images, boxes, labels = _rectangles(16, [20 / S, 22 / S, 38 / S, 45 / S])
    out, out_boxes, out_labels = (t.numpy() for t in augment.hermoza()(images, boxes, labels, KEY))
    assert not np.allclose(out, images)
    for i in range(16):
        assert out_labels[i, 0] == 4
        # A rotated, zoomed, shifted rectangle: its extent is the box around its corners.
        np.testing.assert_allclose(_extent(out[i]), out_boxes[i, 0] * S, atol=1.5)


def test_box_pushed_out_of_the_image_is_dropped():
    images, boxes, labels = _rectangles(32, [28 / S, 0.0, 36 / S, 2 / S])
    shift = augment.random_affine(zoom=(1.0, 1.0), shift_pixels_at_512=256.0,
                                  rotation_degrees=0.0, horizontal_flip=False)
    out, out_boxes, out_labels = (t.numpy() for t in shift(images, boxes, labels, KEY))
    dropped = out_labels[:, 0] == -1
    assert 0 < dropped.sum() < 32
    np.testing.assert_array_equal(out_boxes[dropped], 0.0)
    assert (out[dropped] < 127.5).all()
    for i in np.flatnonzero(~dropped):
        np.testing.assert_allclose(_extent(out[i]), out_boxes[i, 0] * S, atol=1.0)


def test_same_key_same_transform_other_key_other_transform():
    images, boxes, labels = _rectangles(4, [20 / S, 22 / S, 38 / S, 45 / S])
    hermoza = augment.hermoza()
    first = hermoza(images, boxes, labels, KEY)[0].numpy()
    np.testing.assert_array_equal(first, hermoza(images, boxes, labels, KEY)[0].numpy())
    assert not np.allclose(first, hermoza(images, boxes, labels, KEY + 1)[0].numpy())
