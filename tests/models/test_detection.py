"""Tests of chestxray_tf/models/detection.py against NumPy loop ports of the definitions:
RoIAlign (torchvision `roi_align_forward_kernel`, aligned=False), bilinear box crops, the
Faster R-CNN box decoding, and the box rasterisation of Hermoza et al.'s `build_heatmap`."""

import math

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf.models import detection


def bilinear(feature, y, x):
    """torchvision's `bilinear_interpolate` (roi_align_kernel.cpp) on one [h, w, C] map."""
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def reference_roi_align(feature, box, scale, out, ratio):
    """One box (y1, x1, y2, x2), aligned=False: no -0.5 shift, roi size at least 1."""
    y1, x1, y2, x2 = (float(v) * scale for v in box)
    roi_h, roi_w = max(y2 - y1, 1.0), max(x2 - x1, 1.0)
    bin_h, bin_w = roi_h / out, roi_w / out
    result = np.zeros((out, out, feature.shape[2]))
    for ph in range(out):
        for pw in range(out):
            total = np.zeros(feature.shape[2])
            for iy in range(ratio):
                y = y1 + ph * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    x = x1 + pw * bin_w + (ix + 0.5) * bin_w / ratio
                    total += bilinear(feature, y, x)
            result[ph, pw] = total / (ratio * ratio)
    return result


def random_boxes(rng, count, size):
    """Boxes inside, across the border, thinner than one map cell, and beyond the image."""
    corners = rng.uniform(-0.2 * size, 1.2 * size, size=(count, 2))
    sides = rng.choice([0.5, 3.0, 0.3 * size, size], size=(count, 2)) * rng.uniform(0.5, 1.5,
                                                                                      (count, 2))
    return np.concatenate([corners, corners + sides], axis=1).astype(np.float32)


@pytest.mark.parametrize("sampler", detection.SAMPLERS)
@pytest.mark.parametrize("map_size, image_size", [(8, 32), (7, 7), (16, 64)])
def test_roi_align_matches_torchvision_definition(map_size, image_size, sampler):
    rng = np.random.default_rng(map_size)
    features = rng.normal(size=(2, map_size, map_size, 3)).astype(np.float32)
    fixed = np.array([[0, 0, image_size, image_size],  # the whole image
                      [0, 0, 1, 1],  # a corner box under one cell
                      [image_size - 2, image_size - 3, image_size, image_size],  # far corner
                      [2, 3, 2, 3]], np.float32)  # a point
    boxes = np.stack([np.concatenate([fixed, random_boxes(rng, 12, image_size)])
                      for _ in range(2)])
    out = detection.roi_align(features, boxes, image_size=image_size, sampler=sampler).numpy()
    assert out.shape == (2, 16, 5, 5, 3) and out.dtype == np.float32
    scale = map_size / image_size
    for b in range(2):
        for n in range(16):
            np.testing.assert_allclose(
                out[b, n], reference_roi_align(features[b], boxes[b, n], scale, 5, 2),
                atol=1e-5, err_msg=f"image {b} box {boxes[b, n]}")


def test_roi_align_shared_boxes_and_other_settings():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    boxes = random_boxes(rng, 5, 24)
    out = detection.roi_align(features, boxes, image_size=24, output_size=3,
                              sampling_ratio=1).numpy()
    assert out.shape == (3, 5, 3, 3, 2)
    for b in range(3):
        for n in range(5):
            np.testing.assert_allclose(out[b, n],
                                       reference_roi_align(features[b], boxes[n], 0.25, 3, 1),
                                       atol=1e-5)


def test_roi_align_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    features = tf.constant(rng.normal(size=(1, 4, 4, 1)), tf.float32)
    boxes = tf.constant([[0.5, 1.0, 13.0, 9.5], [-2.0, 10.0, 3.0, 17.5]], tf.float32)
    theoretical, numerical = tf.test.compute_gradient(
        lambda f: detection.roi_align(f, boxes, image_size=16), [features], delta=1e-2)
    assert np.abs(theoretical[0]).sum() > 0
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_gather_sampler_compiles_with_xla():
    """CropAndResize has no XLA kernel; the gather sampler compiles and gives the same values
    and feature gradients."""
    rng = np.random.default_rng(6)
    features = tf.constant(rng.normal(size=(2, 8, 8, 3)), tf.float32)
    boxes = tf.constant(random_boxes(rng, 6, 32))

    def run(f, sampler):
        with tf.GradientTape() as tape:
            tape.watch(f)
            out = detection.roi_align(f, boxes, image_size=32, sampler=sampler)
            loss = tf.reduce_sum(out * tf.range(3, dtype=tf.float32))
        return out, tape.gradient(loss, f)

    compiled = tf.function(lambda f: run(f, "gather"), jit_compile=True)(features)
    eager = run(features, "crop_and_resize")
    for got, expected in zip(compiled, eager):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def reference_crop(image, box, crop_size):
    """Bilinear sample at the centres of crop_size^2 cells of the box (pixel centres i + 0.5),
    edge pixels repeated outside."""
    height, width = image.shape[:2]
    y1, x1, y2, x2 = (float(v) for v in box)
    result = np.zeros((crop_size, crop_size, image.shape[2]))
    for i in range(crop_size):
        y = y1 + (i + 0.5) * (y2 - y1) / crop_size - 0.5
        for j in range(crop_size):
            x = x1 + (j + 0.5) * (x2 - x1) / crop_size - 0.5
            yc, xc = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
            result[i, j] = bilinear(image, yc, xc)
    return result


@pytest.mark.parametrize("sampler", detection.SAMPLERS)
def test_crop_boxes_matches_reference_and_has_box_gradients(sampler):
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 12, 12, 3)).astype(np.float32)
    boxes = np.array([[[0, 0, 12, 12], [2.5, 1, 9, 4.5], [0, 10, 1.5, 12]],
                      [[3, 3, 4, 4], [0, 0, 6, 12], [7.2, 0.4, 11.9, 8.8]]], np.float32)
    crops = detection.crop_boxes(images, boxes, 6, sampler).numpy()
    assert crops.shape == (2, 3, 6, 6, 3)
    for b in range(2):
        for k in range(3):
            np.testing.assert_allclose(crops[b, k], reference_crop(images[b], boxes[b, k], 6),
                                       atol=1e-5)
    # The whole image at its own size is the image.
    whole = np.tile(np.array([[[0, 0, 12, 12]]], np.float32), (2, 1, 1))
    np.testing.assert_allclose(detection.crop_boxes(images, whole, 12, sampler).numpy()[:, 0],
                               images,
                               atol=1e-5)
    box_var = tf.Variable(boxes)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(detection.crop_boxes(images, box_var, 6, sampler)
                             * rng.normal(size=crops.shape))
    grad = tape.gradient(loss, box_var).numpy()
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad[:, 1:]).sum(axis=-1) > 0)


def reference_glimpse(image, box, n, variance=1.0):
    """Loop port of the authors' `_get_va_locs` + `_get_va_crop` (x1, y1, x2, y2 from ours)."""
    size = image.shape[0]
    y1, x1, y2, x2 = (float(v) / size for v in box)
    w, h = x2 - x1, y2 - y1
    gx, gy = (x1 + w / 2) * 2 - 1, (y1 + h / 2) * 2 - 1
    ggx, ggy = (size + 1) / 2 * (gx + 1), (size + 1) / 2 * (gy + 1)
    sx, sy = (size - 1) / (n - 1) * w, (size - 1) / (n - 1) * h
    fx, fy = np.zeros((n, size)), np.zeros((n, size))
    for i in range(n):
        for a in range(size):
            fx[i, a] = math.exp(-(a - (ggx + (i - n / 2 - 0.5) * sx)) ** 2 / (2 * variance))
            fy[i, a] = math.exp(-(a - (ggy + (i - n / 2 - 0.5) * sy)) ** 2 / (2 * variance))
        fx[i] /= max(fx[i].sum(), 1e-8)
        fy[i] /= max(fy[i].sum(), 1e-8)
    out = np.zeros((n, n, image.shape[2]))
    for c in range(image.shape[2]):
        out[:, :, c] = fy @ image[:, :, c] @ fx.T
    return out


def test_glimpse_matches_authors_crop_and_moves_with_the_box():
    rng = np.random.default_rng(7)
    images = rng.normal(size=(2, 16, 16, 2)).astype(np.float32)
    boxes = np.array([[[0, 0, 16, 16], [2, 3, 9, 14]], [[4, 4, 6, 6], [0, 8, 16, 16]]],
                     np.float32)
    crops = detection.glimpse_boxes(images, boxes, 5).numpy()
    assert crops.shape == (2, 2, 5, 5, 2)
    for b in range(2):
        for k in range(2):
            np.testing.assert_allclose(crops[b, k], reference_glimpse(images[b], boxes[b, k], 5),
                                       atol=1e-5)
    box_var = tf.Variable(boxes)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(detection.glimpse_boxes(images, box_var, 5) * crops)
    grad = tape.gradient(loss, box_var).numpy()
    assert np.all(np.isfinite(grad)) and np.all(np.abs(grad).sum(axis=-1) > 0)


def reference_decode(delta, anchor, size, clamp=math.log(1000 / 16)):
    y1, x1, y2, x2 = anchor
    h, w = y2 - y1, x2 - x1
    cy, cx = y1 + 0.5 * h, x1 + 0.5 * w
    dy, dx, dh, dw = delta
    pcy, pcx = dy * h + cy, dx * w + cx
    ph, pw = math.exp(min(dh, clamp)) * h, math.exp(min(dw, clamp)) * w
    box = [pcy - 0.5 * ph, pcx - 0.5 * pw, pcy + 0.5 * ph, pcx + 0.5 * pw]
    return [min(max(v, 0.0), size) for v in box]


def test_decode_boxes():
    anchors = np.array([[0, 0, 32, 32], [100, 200, 164, 328], [384, 384, 512, 512]], np.float32)
    zero = detection.decode_boxes(np.zeros((3, 4)), anchors, 512).numpy()
    np.testing.assert_array_equal(zero, anchors)  # a zero regressor keeps the anchors
    # Hand case: shift the centre by half a height down, double the width.
    hand = detection.decode_boxes([[0.5, 0.0, 0.0, math.log(2.0)]], anchors[1:2], 512).numpy()
    np.testing.assert_allclose(hand, [[132, 136, 196, 392]], atol=1e-4)
    rng = np.random.default_rng(4)
    deltas = rng.normal(0, 1, size=(3, 4)).astype(np.float32)
    deltas[0, 2:] = 10.0  # beyond the clamp
    out = detection.decode_boxes(deltas, anchors, 512).numpy()
    for n in range(3):
        np.testing.assert_allclose(out[n], reference_decode(deltas[n], anchors[n], 512),
                                   rtol=1e-5, atol=1e-3)
    clamped = detection.decode_boxes([[0, 0, 10.0, 10.0]], [[50000, 50000, 50032, 50032]],
                                     1e5).numpy()
    np.testing.assert_allclose(clamped[0, 2] - clamped[0, 0], 32 * 1000 / 16, rtol=1e-5)


def reference_rasterize(boxes, weights, image_size, map_size):
    """A loop port of `build_heatmap`: round the scaled box, add the weight to the slice."""
    batch, count, classes, _ = boxes.shape
    out = np.zeros((batch, map_size, map_size, classes))
    for b in range(batch):
        for n in range(count):
            for k in range(classes):
                y1, x1, y2, x2 = (int(np.round(v * map_size / image_size)) for v in boxes[b, n, k])
                out[b, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0), k] += weights[b, n, k]
    return out


def test_rasterize_boxes():
    rng = np.random.default_rng(5)
    corners = rng.uniform(0, 60, size=(2, 7, 3, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(0, 40, size=(2, 7, 3, 2))], -1)
    boxes = np.clip(boxes, 0, 64).astype(np.float32)
    boxes[0, 0, 0] = [2, 6, 10, 14]  # at map 16: rounds 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    weights = rng.normal(size=(2, 7, 3)).astype(np.float32)
    out = detection.rasterize_boxes(boxes, weights, 64, 16).numpy()
    np.testing.assert_allclose(out, reference_rasterize(boxes, weights, 64, 16), atol=1e-5)
    single = detection.rasterize_boxes(boxes[:1, :1, :1], np.ones((1, 1, 1)), 64, 16).numpy()
    assert single[0, :, :, 0].sum() == 2 * 2 and single[0, 0:2, 2:4, 0].sum() == 4


def test_bad_arguments():
    features = np.zeros((1, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="output_size must be a positive integer, got 0"):
        detection.roi_align(features, [[0, 0, 1, 1]], image_size=4, output_size=0)
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\] or \[B, N, 4\]"):
        detection.roi_align(features, [[0, 0, 1]], image_size=4)
    with pytest.raises(ValueError, match="sampler must be one of .* got 'nearest'"):
        detection.roi_align(features, [[0, 0, 1, 1]], image_size=4, sampler="nearest")
    with pytest.raises(ValueError, match="glimpse crop_size must be an integer >= 2, got 1"):
        detection.glimpse_boxes(features, [[[0, 0, 1, 1]]], 1)
    with pytest.raises(ValueError, match="crop_size must be a positive integer, got 2.5"):
        detection.crop_boxes(features, [[[0, 0, 1, 1]]], 2.5)
