"""Tests of chestxray_tf/evaluation/figures.py: ROC curves and heat-map galleries for maps of any
resolution."""

import numpy as np
import pytest
from matplotlib import image as mpimg

from chestxray_tf.evaluation import figures
from chestxray_tf.metrics.auc import AUCResult

SIZE = 64


def upsample_reference(grid, height, width):
    """Pixel (i, j) takes the cell whose pixel span [r H/h, (r+1) H/h) holds it (loops)."""
    h, w = len(grid), len(grid[0])
    out = np.zeros((height, width), dtype=np.asarray(grid).dtype)
    for i in range(height):
        for j in range(width):
            for r in range(h):
                if r * height / h <= i < (r + 1) * height / h:
                    break
            for c in range(w):
                if c * width / w <= j < (c + 1) * width / w:
                    break
            out[i, j] = grid[r][c]
    return out


@pytest.mark.parametrize("grid_shape, image_shape", [
    ((3, 3), (9, 9)), ((20, 20), (64, 64)), ((2, 5), (7, 11)), ((16, 16), (16, 16)),
])
def test_upsample_to_image_matches_the_cell_convention(grid_shape, image_shape):
    grid = np.random.default_rng(0).uniform(size=grid_shape)
    np.testing.assert_array_equal(figures.upsample_to_image(grid, *image_shape),
                                  upsample_reference(grid, *image_shape))


def coloured_pixels(png, rgb, tolerance=0.15):
    """Pixels of colour `rgb` left of the gallery's colour scale (the right 8% of the PNG)."""
    pixels = mpimg.imread(png)[..., :3]
    pixels = pixels[:, :int(pixels.shape[1] * 0.92)]
    return int(np.sum(np.all(np.abs(pixels - np.asarray(rgb)) < tolerance, axis=-1)))


def test_gallery_has_a_colour_scale(tmp_path):
    """The right strip holds the jet scale from blue (0) to red (1), whatever the maps."""
    images, maps = blank_case()
    pixels = mpimg.imread(figures.plot_heatmap_gallery(
        images, maps, [np.zeros((0, 4))], None, None, tmp_path / "g.png"))[..., :3]
    strip = pixels[:, int(pixels.shape[1] * 0.92):]
    reddish = np.all(np.abs(strip - (0.5, 0, 0)) < 0.2, axis=-1).sum()
    bluish = np.all(np.abs(strip - (0, 0, 0.5)) < 0.2, axis=-1).sum()
    assert reddish > 5 and bluish > 5


def blank_case(count=1):
    """Black images under all-zero maps: the only yellow or cyan pixels are the drawings."""
    return np.zeros((count, SIZE, SIZE)), np.zeros((count, 4, 4))


def test_true_boxes_are_yellow_and_the_region_is_outlined(tmp_path):
    images, maps = blank_case()
    region = np.zeros((4, 4), dtype=bool)
    region[1:3, 1:3] = True
    bare = figures.plot_heatmap_gallery(images, maps, [np.zeros((0, 4))], None, None,
                                        tmp_path / "bare.png")
    drawn = figures.plot_heatmap_gallery(images, maps, [np.array([[8, 8, 40, 30]])], [region],
                                         ["Mass"], tmp_path / "drawn.png")
    assert coloured_pixels(bare, (1, 1, 0)) == 0 and coloured_pixels(bare, (0, 1, 1)) == 0
    assert coloured_pixels(drawn, (1, 1, 0)) > 50
    assert coloured_pixels(drawn, (0, 1, 1)) > 50


@pytest.mark.parametrize("map_shape", [(16, 16), (2, 2), (16, 16), (SIZE, SIZE), (20, 20),
                                       (3, 7)])
def test_maps_of_any_resolution(tmp_path, map_shape):
    """Patch grids, CAMs at 1/32 and 1/4, full-resolution saliency, grids that do not divide
    the image."""
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (3, SIZE, SIZE, 3))  # 3-channel grey, as the pipeline gives
    maps = rng.uniform(size=(3,) + map_shape)
    regions = [m > 0.7 for m in maps]
    boxes = [np.array([[4, 4, 20, 10], [30, 30, 8, 8]]), np.zeros((0, 4)), [1, 2, 3, 4]]
    out = figures.plot_heatmap_gallery(images, maps, boxes, regions, ["a", "b", "c"],
                                       tmp_path / "gallery.png", pred_boxes=[boxes[0], None,
                                                                             None], columns=2)
    pixels = mpimg.imread(out)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(maps=np.full((1, 4, 4), 1.5)), ValueError, "outside"),
    (dict(maps=np.zeros((2, 4, 4))), ValueError, "2 entries for 1 images"),
    (dict(pred_regions=[np.ones((4, 4))]), ValueError, "bool"),
    (dict(true_boxes=[np.zeros((2, 3))]), ValueError, "boxes"),
    (dict(images=np.zeros((0, SIZE, SIZE)), maps=np.zeros((0, 4, 4)), true_boxes=[]),
     ValueError, "no image"),
])
def test_bad_gallery_input_is_a_clear_error(tmp_path, kwargs, error, message):
    images, maps = blank_case()
    args = dict(images=images, maps=maps, true_boxes=[None], pred_regions=None, titles=None,
                out_png=tmp_path / "x.png")
    args.update(kwargs)
    with pytest.raises(error, match=message):
        figures.plot_heatmap_gallery(**args)


def test_roc_legend():
    result = AUCResult(per_class=np.array([0.81234, np.nan]), defined=np.array([True, False]),
                       mean=0.81234)
    assert figures.roc_legend(result, ("Mass", "Hernia")) == ["Mass (AUC 0.812)",
                                                              "Hernia (AUC —)"]


def test_plot_roc_curves(tmp_path):
    rng = np.random.default_rng(2)
    labels = (rng.uniform(size=(40, 14)) < 0.3).astype(int)
    labels[:, 13] = 0  # a class without positives is listed, not drawn
    probs = np.clip(0.4 * labels + 0.6 * rng.uniform(size=(40, 14)), 0, 1)
    out = figures.plot_roc_curves(labels, probs, tmp_path / "roc.png")
    # Small multiples: 4 panels a row, 4 rows for 14 classes (2.6 in each, 100 dpi).
    assert mpimg.imread(out).shape[:2] == (int(100 * (2.6 * 4 + 0.4)), int(100 * 2.6 * 4))
    with pytest.raises(ValueError, match="one column per class"):
        figures.plot_roc_curves(labels[:, :3], probs[:, :3], tmp_path / "bad.png")
