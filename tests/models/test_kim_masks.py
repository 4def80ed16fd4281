"""Tests of chestxray_tf/models/kim_masks.py (Eq. 3, pseudo-disease masks) and kim_anchor.py."""

import numpy as np
import pytest

from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES
from chestxray_tf.models.kim_anchor import anchor_image, choose_anchor_images
from chestxray_tf.models.kim_masks import (DiseaseMaskAccumulator, disease_masks,
                                           pseudo_disease_masks, rasterise_polygons)

K = len(CLASS_NAMES)
EFF, CAR = CLASS_NAMES.index("Effusion"), CLASS_NAMES.index("Cardiomegaly")


def reference_masks(cams, probs, min_images=10, binary=False, renormalise=True):
    """Eq. 3 with loops: filter P_c >= 0.8 (else the top min_images by P_c), flip-sum unless
    Cardiomegaly, min-max normalise, mean, divide by the peak, keep >= 0.5."""
    n, h, w, _ = cams.shape
    out = np.zeros((h, w, K))
    for k, name in enumerate(CLASS_NAMES):
        if name not in BOXED_CLASSES:
            continue
        chosen = [d for d in range(n) if probs[d, k] >= 0.8]
        if len(chosen) < min_images:
            chosen = sorted(range(n), key=lambda d: -probs[d, k])[:min_images]
        mean = np.zeros((h, w))
        for d in chosen:
            bar = np.zeros((h, w))
            for i in range(h):
                for j in range(w):
                    bar[i, j] = cams[d, i, j, k] + (0 if name == "Cardiomegaly"
                                                    else cams[d, i, w - 1 - j, k])
            low, high = bar.min(), bar.max()
            for i in range(h):
                for j in range(w):
                    mean[i, j] += (bar[i, j] - low) / (high - low) / len(chosen)
        peak = mean.max() if renormalise else 1.0
        for i in range(h):
            for j in range(w):
                value = mean[i, j] / peak
                out[i, j, k] = (1.0 if binary else value) if value >= 0.5 else 0.0
    return out


def test_an_impulse_is_mirrored_for_effusion_but_not_cardiomegaly():
    cams = np.zeros((1, 8, 8, K))
    cams[0, 2, 3, :] = 1.0
    masks, info = disease_masks(cams, np.ones((1, K)), min_images=1)
    expected_eff = np.zeros((8, 8))
    expected_eff[2, 3] = expected_eff[2, 4] = 1.0
    np.testing.assert_array_equal(masks[..., EFF], expected_eff)
    expected_car = np.zeros((8, 8))
    expected_car[2, 3] = 1.0
    np.testing.assert_array_equal(masks[..., CAR], expected_car)
    np.testing.assert_array_equal(masks[..., len(BOXED_CLASSES):], 0.0)  # unboxed classes
    assert info["counts"]["Effusion"] == 1 and not any(info["fallback"].values())


def test_normalisation_comes_after_the_flip_sum():
    # Flip-summed, the map is [3, 2, 2, 3] -> N = [1, 0, 0, 1]; normalising first would give
    # [1, 1/3, 1/3, 1] (mean above 0.5 kept at the centre).
    cams = np.zeros((1, 1, 4, K))
    cams[0, 0, :, EFF] = [1.0, 2.0, 0.0, 2.0]
    masks, _ = disease_masks(cams, np.ones((1, K)), min_images=1)
    np.testing.assert_allclose(masks[0, :, EFF], [1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("binary, renormalise", [(False, True), (True, True), (False, False)])
def test_random_cams_equal_the_loop_reference(binary, renormalise):
    rng = np.random.default_rng(7)
    cams = rng.normal(size=(30, 5, 6, K))
    probs = rng.uniform(0.5, 1.0, (30, K))
    probs[:, CAR] = 0.3  # no Cardiomegaly image passes: the fallback
    masks, info = disease_masks(cams, probs, binary=binary, renormalise=renormalise)
    np.testing.assert_allclose(masks, reference_masks(cams, probs, binary=binary,
                                                      renormalise=renormalise), atol=1e-12)
    assert info["fallback"]["Cardiomegaly"] and info["counts"]["Cardiomegaly"] == 0
    assert not info["fallback"]["Effusion"]
    assert info["counts"]["Effusion"] == int(np.sum(probs[:, EFF] >= 0.8)) >= 10
    assert masks[..., EFF].max() == 1.0 if renormalise else masks[..., EFF].max() < 1.0


def test_confidence_filter_includes_0_8_and_drops_0_79():
    cams = np.zeros((2, 4, 4, K))
    cams[0, 1, 1, CAR] = 1.0  # P = 0.8: kept
    cams[1, 3, 0, CAR] = 1.0  # P = 0.79: dropped
    probs = np.full((2, K), 0.0)
    probs[:, CAR] = [0.8, 0.79]
    masks, info = disease_masks(cams, probs, min_images=1)
    assert info["counts"]["Cardiomegaly"] == 1
    expected = np.zeros((4, 4))
    expected[1, 1] = 1.0
    np.testing.assert_array_equal(masks[..., CAR], expected)


def test_empty_set_falls_back_to_the_most_confident_images():
    cams = np.zeros((3, 4, 4, K))
    for d, (i, j) in enumerate([(0, 0), (1, 1), (2, 2)]):
        cams[d, i, j, CAR] = 1.0
    probs = np.zeros((3, K))
    probs[:, CAR] = [0.1, 0.5, 0.3]  # none >= 0.8
    masks, info = disease_masks(cams, probs, min_images=2)
    assert info["fallback"]["Cardiomegaly"] and info["counts"]["Cardiomegaly"] == 0
    expected = np.zeros((4, 4))
    expected[1, 1] = expected[2, 2] = 1.0  # the two most confident images, averaged
    np.testing.assert_array_equal(masks[..., CAR], expected)


def test_batches_accumulate_to_the_one_shot_masks():
    rng = np.random.default_rng(2)
    cams = rng.normal(size=(25, 4, 4, K))
    probs = rng.uniform(0.3, 1.0, (25, K))
    accumulator = DiseaseMaskAccumulator()
    for start in range(0, 25, 7):
        accumulator.update(cams[start:start + 7], probs[start:start + 7])
    np.testing.assert_allclose(accumulator.masks(), disease_masks(cams, probs)[0], atol=1e-12)
    with pytest.raises(ValueError, match=r"CAMs of size \(3, 3\) after CAMs of size \(4, 4\)"):
        accumulator.update(cams[:1, :3, :3], probs[:1])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="confidence must be in"):
        DiseaseMaskAccumulator(confidence=80)
    with pytest.raises(ValueError, match="mask_classes"):
        DiseaseMaskAccumulator(mask_classes=("Covid",))
    with pytest.raises(ValueError, match="call update first"):
        DiseaseMaskAccumulator().masks()
    with pytest.raises(ValueError, match=r"probs \[B, 14\]"):
        DiseaseMaskAccumulator().update(np.zeros((2, 4, 4, K)), np.zeros((2, 3)))


def test_pseudo_disease_masks_on_hand_drawn_regions():
    size, grid = 64, 8  # 8 px per cell
    lungs = np.zeros((size, size), bool)
    lungs[8:56, 8:24] = lungs[8:56, 40:56] = True
    heart = np.zeros((size, size), bool)
    heart[32:48, 24:40] = True
    masks = pseudo_disease_masks(lungs, heart, grid)
    lung_cells = np.zeros((grid, grid))
    lung_cells[1:7][:, [1, 2, 5, 6]] = 1
    heart_cells = np.zeros((grid, grid))
    heart_cells[4:6, 3:5] = 1
    below = np.arange(grid)[:, None]
    effusion = lung_cells * (below >= 5)  # rows >= 40 px: the lower third of rows 8..56
    atelectasis = lung_cells * (below >= 3)  # rows >= 24 px
    lateral = np.zeros((grid, grid))
    lateral[1:7, [1, 6]] = 1  # cols 8..13 and 51..55 cover >= half of cells 1 and 6
    pneumothorax = np.maximum(lung_cells * (below < 4), lateral)
    expected = {"Infiltration": lung_cells, "Mass": lung_cells, "Nodule": lung_cells,
                "Pneumonia": lung_cells, "Cardiomegaly": heart_cells, "Effusion": effusion,
                "Atelectasis": atelectasis, "Pneumothorax": pneumothorax}
    for k, name in enumerate(CLASS_NAMES):
        np.testing.assert_array_equal(masks[..., k], expected.get(name, 0.0), err_msg=name)
    with pytest.raises(ValueError, match="divisible by grid 7"):
        pseudo_disease_masks(lungs, heart, 7)


def test_rasterise_polygons_uses_pixel_centres():
    square = [(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)]
    triangle = [(0.0, 0.0), (0.2, 0.0), (0.0, 0.2)]
    got = rasterise_polygons([square, triangle], 8)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    expected[0, 0] = True  # centre (1/16, 1/16) is inside the triangle, (3/16, 1/16) is not
    np.testing.assert_array_equal(got, expected)


def test_anchor_is_the_mean_of_images_and_batches():
    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (7, 4, 5, 3))
    items = [images[0], images[1:4], images[4], images[5:]]
    got = anchor_image(iter(items))
    assert got.dtype == np.float32 and got.shape == (4, 5, 3)
    expected = np.zeros((4, 5, 3))
    for image in images:
        expected += image / 7
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match="no images"):
        anchor_image([])
    with pytest.raises(ValueError, match=r"shape \(4, 4, 3\)"):
        anchor_image([images[0], images[1, :, :4]])


def test_choose_anchor_images():
    ids = [f"img{i}" for i in range(50)]
    chosen = choose_anchor_images(ids, num_images=20, seed=3)
    assert len(set(chosen)) == 20 and set(chosen) <= set(ids)
    assert chosen == sorted(chosen, key=ids.index) == choose_anchor_images(ids, 20, seed=3)
    assert chosen != choose_anchor_images(ids, 20, seed=4)
    assert choose_anchor_images(ids[:5], num_images=2000) == ids[:5]
    with pytest.raises(ValueError, match="num_images must be a positive integer, got 0"):
        choose_anchor_images(ids, num_images=0)
