"""Tests of chestxray_tf/models/kim.py and sampler.py: Eq. 6, the bilinear sampler, the aligner,
B(G(.)), boxes through the alignment, and the attention CAM head (Eqs. 1, 2, 4, 5)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from chestxray_tf.losses.kim import batch_weighted_bce
from chestxray_tf.models.kim import (AffineParams, AttentionCam, OriginalFrameMaps,
                                     SpatialTransformer, affine_matrix, boxes_to_aligned,
                                     boxes_to_original, build_aligner, build_classifier,
                                     grid_smooth)
from chestxray_tf.models.resnet import RESNET18_TINY, RESNET50_TINY
from chestxray_tf.models.sampler import affine_warp, degenerate_affine, invert_affine


def reference_matrix(s_x, s_y, t_x, t_y, theta):
    """Eq. 6, entry by entry."""
    return np.array([[s_x * math.cos(theta), -s_y * math.sin(theta), t_x],
                     [s_x * math.sin(theta), s_y * math.cos(theta), t_y]])


def reference_warp(image, matrix, out_h, out_w, fill):
    """PyTorch affine_grid + grid_sample (bilinear, align_corners=False, constant fill), pixel by
    pixel and corner by corner (brief §3.2)."""
    height, width, channels = image.shape
    out = np.zeros((out_h, out_w, channels))
    for i in range(out_h):
        for j in range(out_w):
            x_t, y_t = (2 * j + 1) / out_w - 1, (2 * i + 1) / out_h - 1
            x_s = matrix[0, 0] * x_t + matrix[0, 1] * y_t + matrix[0, 2]
            y_s = matrix[1, 0] * x_t + matrix[1, 1] * y_t + matrix[1, 2]
            col, row = ((x_s + 1) * width - 1) / 2, ((y_s + 1) * height - 1) / 2
            for r in (math.floor(row), math.floor(row) + 1):
                for c in (math.floor(col), math.floor(col) + 1):
                    weight = (1 - abs(row - r)) * (1 - abs(col - c))
                    inside = 0 <= r < height and 0 <= c < width
                    out[i, j] += weight * (image[r, c] if inside else fill)
    return out


def smooth_image(size, channels=2):
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    u, v = i / size, j / size
    bands = [np.sin(3 * u + 1) * np.cos(2 * v), np.exp(-((u - .4) ** 2 + (v - .6) ** 2) * 6)]
    return np.stack(bands[:channels], axis=-1)


def warp(image, params, fill=-1.0, output_size=None, dtype="float64"):
    matrices = affine_matrix(np.asarray(params, dtype)[None])
    return np.asarray(affine_warp(np.asarray(image, dtype)[None], matrices, output_size,
                                  fill))[0]


def test_affine_matrix_hand_case():
    got = np.asarray(affine_matrix(np.array([[2.0, 3.0, 0.1, 0.2, math.pi / 2]])))
    np.testing.assert_allclose(got[0], [[0, -3, 0.1], [2, 0, 0.2]], atol=1e-7)


def test_affine_matrix_random():
    rng = np.random.default_rng(1)
    params = rng.normal(size=(6, 5))
    got = np.asarray(affine_matrix(params))
    assert got.shape == (6, 2, 3)
    for p, m in zip(params, got):
        np.testing.assert_allclose(m, reference_matrix(*p), rtol=1e-12)


def test_identity_params_reproduce_the_image():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(7, 11, 3))
    np.testing.assert_allclose(warp(image, [1, 1, 0, 0, 0]), image, atol=1e-12)


@pytest.mark.parametrize("params, out_size", [
    ((1.1, 0.9, 0.08, -0.05, 0.1), None),
    ((0.7, 1.3, -0.3, 0.2, -0.6), None),
    ((1.4, 0.8, 0.5, 0.1, 2.0), (5, 8)),  # mostly outside, another output size
])
def test_sampler_equals_the_loop_reference(params, out_size):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(6, 9, 2))
    out_h, out_w = out_size or image.shape[:2]
    expected = reference_warp(image, reference_matrix(*params), out_h, out_w, fill=-1.0)
    np.testing.assert_allclose(warp(image, params, output_size=out_size), expected, atol=1e-12)


def test_sampler_equals_keras_affine_transform():
    size = 24
    image = smooth_image(size).astype(np.float32)
    params = (1.1, 0.9, 0.08, -0.05, 0.1)
    (a, b, t_x), (c, d, t_y) = reference_matrix(*params)
    # Pixel-space transform of the same map (brief §3.2; output (col, row) -> input (col, row)).
    transform = [a, b, ((a + b) * (1 - size) + size * t_x + size - 1) / 2,
                 c, d, ((c + d) * (1 - size) + size * t_y + size - 1) / 2, 0, 0]
    expected = keras.ops.image.affine_transform(
        image[None], np.array([transform], np.float32), interpolation="bilinear",
        fill_mode="constant", fill_value=-1.0)
    got = warp(image, params, dtype="float32")
    assert np.mean(got == -1.0) > 0.01  # part of the output lies outside the input
    np.testing.assert_allclose(got, np.asarray(expected)[0], atol=2e-5)


def test_sampler_equals_scipy_map_coordinates():
    rng = np.random.default_rng(4)
    image = rng.normal(size=(10, 13, 1))
    params = rng.normal([1, 1, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.4])
    m = reference_matrix(*params)
    i, j = np.meshgrid(np.arange(10), np.arange(13), indexing="ij")
    x_t, y_t = (2 * j + 1) / 13 - 1, (2 * i + 1) / 10 - 1
    col = ((m[0, 0] * x_t + m[0, 1] * y_t + m[0, 2] + 1) * 13 - 1) / 2
    row = ((m[1, 0] * x_t + m[1, 1] * y_t + m[1, 2] + 1) * 10 - 1) / 2
    expected = ndimage.map_coordinates(image[..., 0], [row, col], order=1, mode="grid-constant",
                                       cval=0.5)
    np.testing.assert_allclose(warp(image, params, fill=0.5)[..., 0], expected, atol=1e-12)


def test_positive_t_x_of_one_pixel_moves_the_content_one_pixel_left():
    rng = np.random.default_rng(5)
    image = rng.normal(size=(4, 8, 1))
    got = warp(image, [1, 1, 2 / 8, 0, 0], fill=-1.0)
    np.testing.assert_allclose(got[:, :-1], image[:, 1:], atol=1e-12)
    np.testing.assert_allclose(got[:, -1], -1.0, atol=1e-12)


def test_gradients_wrt_the_five_parameters_match_finite_differences():
    image = smooth_image(24)
    weights = np.random.default_rng(11).normal(size=(24, 24, 2))
    params = np.array([[1.1, 0.9, 0.08, -0.05, 0.1]])

    def objective(p):
        return tf.reduce_sum(affine_warp(image[None], affine_matrix(p), fill_value=-1.0) * weights)

    p = tf.Variable(params)
    with tf.GradientTape() as tape:
        value = objective(p)
    grad = tape.gradient(value, p).numpy()[0]
    eps = 1e-5
    numeric = np.array([(objective(params + eps * e) - objective(params - eps * e)).numpy()
                        / (2 * eps) for e in np.eye(5)[:, None, :]])
    assert np.all(np.abs(numeric) > 1.0)  # every parameter moves the objective
    np.testing.assert_allclose(grad, numeric, rtol=1e-3)


def test_integer_translation_then_its_inverse_is_exact_except_the_strip_shifted_out():
    rng = np.random.default_rng(6)
    image = rng.normal(size=(8, 8, 1))
    params = np.array([[1, 1, 2 * 2 / 8, -2 * 1 / 8, 0]])  # 2 px left, 1 px down
    matrices = affine_matrix(params)
    there = affine_warp(image[None], matrices, fill_value=-1.0)
    back = np.asarray(affine_warp(there, invert_affine(matrices), fill_value=-1.0))[0]
    np.testing.assert_allclose(back[:-1, 2:], image[:-1, 2:], atol=1e-12)
    np.testing.assert_allclose(back[-1], -1.0, atol=1e-12)
    np.testing.assert_allclose(back[:, :2], -1.0, atol=1e-12)


def test_general_warp_then_inverse_is_close_to_identity_in_the_interior():
    image = smooth_image(32)
    params = np.array([[1.1, 0.9, 0.05, -0.04, 0.15]])
    matrices = affine_matrix(params)
    back = np.asarray(affine_warp(affine_warp(image[None], matrices), invert_affine(matrices)))[0]
    assert np.abs(back[8:-8, 8:-8] - image[8:-8, 8:-8]).max() < 0.03


def test_invert_affine_against_numpy_and_degenerate_matrices():
    rng = np.random.default_rng(7)
    matrices = affine_matrix(rng.normal([1, 1, 0, 0, 0], 0.3, size=(4, 5)))
    got = np.asarray(invert_affine(matrices))
    for m, inv in zip(np.asarray(matrices), got):
        full = np.vstack([m, [0, 0, 1]])
        np.testing.assert_allclose(np.vstack([inv, [0, 0, 1]]), np.linalg.inv(full), atol=1e-10)
    singular = np.array([[[1.0, 2.0, 0.3], [0.5, 1.0, 0.1]], [[0.03, 0, 0], [0, 0.03, 0]],
                         [[0.04, 0, 0], [0, 0.04, 0]]])  # det 0, 9e-4, 1.6e-3
    np.testing.assert_array_equal(degenerate_affine(singular), [True, True, False])
    inverse = np.asarray(invert_affine(singular))
    np.testing.assert_allclose(inverse[0], np.eye(2, 3))
    np.testing.assert_allclose(inverse[1], np.eye(2, 3))
    np.testing.assert_allclose(inverse[2], np.diag([25.0, 25.0, 0])[:2], rtol=1e-12)


@pytest.mark.parametrize("params", [(1.0, 1.0, 0.25, -0.125, 0.0), (0.8, 1.25, 0.1, 0.05, 0.0),
                                    (1.1, 0.9, -0.1, 0.05, 0.3)])
def test_a_box_warps_to_boxes_to_aligned_and_back(params):
    size = 64
    box = np.array([[0.25, 0.375, 0.625, 0.75]])  # (ymin, xmin, ymax, xmax)
    image = np.zeros((size, size, 1))
    image[16:40, 24:48] = 1.0
    warped = warp(image, params, fill=0.0)
    aligned = boxes_to_aligned(box, np.array([params]))
    rows, cols = np.nonzero(warped[..., 0] > 0.5)
    measured = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / size
    # The content's bounding box, to a pixel (the corners of a rotated box are thin slivers).
    np.testing.assert_allclose(measured, aligned[0], atol=(1.5 if params[4] == 0 else 3) / size)
    if params[4] == 0:  # boxes stay boxes: back exactly
        np.testing.assert_allclose(boxes_to_original(aligned, np.array([params])), box, atol=1e-12)
    else:  # the enclosing box of the enclosing box contains the box
        back = boxes_to_original(aligned, np.array([params]))[0]
        assert np.all(back[:2] <= box[0, :2] + 1e-12) and np.all(back[2:] >= box[0, 2:] - 1e-12)


def test_grid_smooth_shape_constant_and_linear_ramp():
    size, pool = 128, 4  # pool = S / 32 as 16 at 512 px
    constant = np.full((1, size, size, 3), 0.3, np.float32)
    np.testing.assert_allclose(np.asarray(grid_smooth(constant, pool)), constant, atol=1e-6)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    ramp = (0.01 * i - 0.02 * j + 0.5).astype(np.float32)[None, :, :, None]
    got = np.asarray(grid_smooth(ramp, pool))
    assert got.shape == ramp.shape
    border = size // 64  # half a pooling block
    np.testing.assert_allclose(got[:, border:-border, border:-border],
                               ramp[:, border:-border, border:-border], atol=1e-5)
    assert np.abs(got - ramp).max() > 1e-3  # the border is clamped
    with pytest.raises(ValueError, match="pool_size 5 must divide"):
        grid_smooth(ramp, 5)


@pytest.mark.parametrize("bounded, hidden", [(False, 0), (True, 0), (False, 16)])
def test_aligner_is_the_identity_at_initialisation_and_trains(bounded, hidden):
    rng = np.random.default_rng(8)
    aligner = build_aligner(64, backbone=RESNET18_TINY, bounded=bounded, hidden=hidden)
    image = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    out = aligner(image, training=False)
    np.testing.assert_allclose(out["params"], np.tile([1, 1, 0, 0, 0], (3, 1)), atol=1e-7)
    np.testing.assert_allclose(out["aligned"], image, atol=1e-6)
    assert out["aligned"].dtype == "float32" and out["params"].dtype == "float32"
    regressor = aligner.get_layer("aligner_regressor")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(aligner(image, training=True)["aligned"] - 0.2))
    grad = tape.gradient(loss, regressor.kernel)
    assert np.abs(grad.numpy()).max() > 0  # the loss reaches the five parameters


def test_bounded_params_formula():
    rng = np.random.default_rng(9)
    raw = rng.normal(size=(4, 5)).astype(np.float32)
    got = np.asarray(AffineParams(bounded=True)(raw))
    t = np.tanh(raw.astype(np.float64))
    expected = np.stack([1 + .5 * t[:, 0], 1 + .5 * t[:, 1], .5 * t[:, 2], .5 * t[:, 3],
                         math.pi / 6 * t[:, 4]], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(AffineParams()(raw)), raw)


def reference_attention_cam(features, kernel, bias, masks, union=False):
    """Eqs. 1, 4, 5 literally: f'_c = psi_c * f + f per class, Ŝ_c = sum_k w_k^c f'_k, then the
    GAP of Ŝ_c plus b_c, with loops."""
    batch, height, width, channels = features.shape
    classes = kernel.shape[1]
    cams = np.zeros((batch, height, width, classes))
    for b in range(batch):
        for c in range(classes):
            for i in range(height):
                for j in range(width):
                    psi = masks[i, j].max() if union else masks[i, j, c]
                    for k in range(channels):
                        f = features[b, i, j, k]
                        cams[b, i, j, c] += kernel[k, c] * (psi * f + f)
    return cams, cams.mean(axis=(1, 2)) + bias


@pytest.mark.parametrize("attention", ["class", "union"])
def test_attention_cam_equals_the_literal_equations(attention):
    rng = np.random.default_rng(10)
    features = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    head = AttentionCam(3, attention=attention)
    head.build(features.shape)
    head.bias.assign(rng.normal(size=3))
    masks = rng.uniform(0, 1, (3, 4, 3)) * (rng.uniform(size=(3, 4, 3)) > 0.4)
    head.set_masks(masks)
    cams, logits = head(features)
    ref_cams, ref_logits = reference_attention_cam(features, head.kernel.numpy(),
                                                   head.bias.numpy(), masks, attention == "union")
    np.testing.assert_allclose(cams, ref_cams, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_attention_cam_without_masks_is_gap_then_dense_and_psi_one_doubles():
    rng = np.random.default_rng(11)
    features = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
    head = AttentionCam(3)
    cams, logits = head(features)
    dense = features.mean(axis=(1, 2)) @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(logits, dense, rtol=1e-5, atol=1e-6)
    head.set_masks(np.ones((4, 4, 3)))
    cams_one, logits_one = head(features)
    np.testing.assert_allclose(cams_one, 2 * np.asarray(cams), rtol=1e-6)
    np.testing.assert_allclose(logits_one, 2 * np.asarray(cams).mean(axis=(1, 2))
                               + head.bias.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"masks must have shape \(4, 4, 3\)"):
        head.set_masks(np.ones((4, 4, 2)))
    with pytest.raises(ValueError, match="finite and >= 0"):
        head.set_masks(-np.ones((4, 4, 3)))


def test_layers_round_trip_through_a_keras_file(tmp_path):
    rng = np.random.default_rng(12)
    image = keras.Input((16, 16, 3))
    params_in = keras.Input((5,))
    aligned = SpatialTransformer(fill_value=-0.5)([image, AffineParams(bounded=True)(params_in)])
    cams, logits = AttentionCam(2, attention="union")(keras.layers.Conv2D(4, 3)(aligned))
    model = keras.Model([image, params_in], [aligned, cams, logits])
    head = [layer for layer in model.layers if isinstance(layer, AttentionCam)][0]
    head.set_masks(rng.uniform(size=(14, 14, 2)))
    inputs = [rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32),
              rng.normal(0, 0.5, (2, 5)).astype(np.float32)]
    inputs[1][0] = [0, 0, 5, 0, 0]  # s = 1, t_x = 0.5 tanh(5): a quarter is shifted out
    path = tmp_path / "kim.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for got, expected in zip(reloaded(inputs), model(inputs)):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.mean(np.asarray(model(inputs)[0])[0, :, -3:] == -0.5) > 0.9  # the fill shows


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"params must be \[B, 5\].* got shape \(2, 4\)"):
        affine_matrix(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="attention must be one of .* got 'sum'"):
        AttentionCam(3, attention="sum")
    with pytest.raises(ValueError, match="num_classes .* got 0"):
        AttentionCam(0)
    with pytest.raises(ValueError, match="fill_value .* got nan"):
        SpatialTransformer(fill_value=float("nan"))
    with pytest.raises(ValueError, match="fill_value .* got 'black'"):
        SpatialTransformer(fill_value="black")
    assert SpatialTransformer(fill_value=np.float32(-1)).fill_value == -1.0
    with pytest.raises(ValueError, match="bounded .* got 'yes'"):
        AffineParams(bounded="yes")
    with pytest.raises(ValueError, match="hidden .* got -1"):
        build_aligner(64, backbone=RESNET18_TINY, hidden=-1)


def test_original_frame_maps_equal_resize_then_inverse_warp_then_min_max():
    rng = np.random.default_rng(5)
    cams = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    params = np.array([[1.1, 0.9, 0.1, -0.05, 0.2], [0.8, 1.2, -0.2, 0.1, -0.1]], np.float32)
    got = np.asarray(OriginalFrameMaps(12)([cams, params]))
    resized = np.asarray(keras.ops.image.resize(cams, (12, 12), interpolation="bilinear"))
    for b in range(2):
        inverse = np.linalg.inv(np.vstack([reference_matrix(*params[b]), [0, 0, 1]]))[:2]
        for k in range(3):
            m = resized[b, :, :, k:k + 1]
            warped = reference_warp(m - m.min(), inverse, 12, 12, fill=0.0)[..., 0]
            expected = (warped - warped.min()) / (warped.max() - warped.min())
            np.testing.assert_allclose(got[b, :, :, k], expected, atol=1e-5)
    unwarped = np.asarray(OriginalFrameMaps(4)(cams))
    np.testing.assert_allclose(unwarped[0, :, :, 0], (cams[0, :, :, 0] - cams[0, :, :, 0].min())
                               / np.ptp(cams[0, :, :, 0]), atol=1e-6)
    np.testing.assert_array_equal(OriginalFrameMaps(4)(np.ones((1, 2, 2, 1))), 0.0)


def test_classifier_with_a_frozen_aligner_trains_only_the_classifier(tmp_path):
    rng = np.random.default_rng(6)
    aligner = build_aligner(64, backbone=RESNET18_TINY)
    regressor = aligner.get_layer("aligner_regressor")
    regressor.bias.assign([1.1, 0.9, 0.1, 0.0, 0.1])  # not the identity
    model = build_classifier(64, backbone=RESNET50_TINY, num_classes=3, aligner=aligner,
                             cam_size=16)
    images = rng.uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.float32)
    out = model(images)
    assert out["cam"].shape == (3, 16, 16, 3) and out["cam_scores"].shape == (3, 2, 2, 3)
    bias = model.get_layer("cam_head").bias.numpy()
    np.testing.assert_allclose(out["image_probs"], 1 / (1 + np.exp(-(np.asarray(
        out["cam_scores"]).mean(axis=(1, 2)) + bias))), rtol=1e-5)
    assert float(np.min(out["cam"])) == 0.0 and float(np.max(out["cam"])) == 1.0
    frozen = [w.numpy().copy() for w in aligner.weights]
    head_before = model.get_layer("cam_head").kernel.numpy().copy()
    optimizer = keras.optimizers.Adam(1e-2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(batch_weighted_bce(labels, model(images, training=True)
                                                 ["image_probs"]))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))
    for before, after in zip(frozen, aligner.weights):  # BN statistics included
        np.testing.assert_array_equal(before, after.numpy())
    assert np.abs(model.get_layer("cam_head").kernel.numpy() - head_before).max() > 0
    path = tmp_path / "classifier.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for key, value in model(images).items():
        np.testing.assert_allclose(reloaded(images)[key], value, rtol=1e-5, atol=1e-6)
