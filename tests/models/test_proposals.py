"""Tests of the Hermoza et al. 2020 proposals (Sec. 4.2, N = 395) against a loop port of the
authors' `_generate_anchors` + clipping (x1, y1, x2, y2 -> our y1, x1, y2, x2)."""

import numpy as np
import pytest

from chestxray_tf.models.hermoza2020 import proposal_boxes


def reference_anchors(input_size, sizes, strides, map_size):
    """Literal port: grid = map / stride cells, centres at arange(grid + 1) * input / grid on
    both axes (y outer), box = centre +- round(size / 2), clipped to the image."""
    boxes = []
    for size, stride in zip(sizes, strides):
        grid = map_size / stride
        spacing = input_size / grid
        half = round(size / 2)
        for i in range(int(grid) + 1):
            for j in range(int(grid) + 1):
                cy, cx = i * spacing, j * spacing
                x1, y1 = max(cx - half, 0), max(cy - half, 0)
                x2, y2 = min(cx + half, input_size), min(cy + half, input_size)
                boxes.append([y1, x1, y2, x2])
    return np.array(boxes)


def test_395_proposals_at_512():
    boxes = proposal_boxes()
    assert boxes.shape == (395, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, reference_anchors(512, (64, 128, 256), (8, 16, 32), 128))
    # Levels 17^2, 9^2, 5^2; first and last boxes as in the authors' generator.
    assert 17 ** 2 + 9 ** 2 + 5 ** 2 == 395
    np.testing.assert_array_equal(boxes[:3], [[0, 0, 32, 32], [0, 0, 32, 64], [0, 32, 32, 96]])
    np.testing.assert_array_equal(boxes[288], [480, 480, 512, 512])  # last 64-box
    np.testing.assert_array_equal(boxes[289], [0, 0, 64, 64])  # first 128-box
    np.testing.assert_array_equal(boxes[-1], [384, 384, 512, 512])
    assert boxes.min() == 0 and boxes.max() == 512
    assert set(np.unique(boxes[:, 3] - boxes[:, 1])) == {32, 64, 128, 256}
    # Interior centres every 32 / 64 / 128 pixels.
    np.testing.assert_array_equal(np.diff(boxes[17:20, 1]), [0, 32])  # row 1 starts at x = 0
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.all((boxes[:, 2:] - boxes[:, :2] > 0))
    assert np.allclose(centres[17 * 8 + 8], [256, 256])


@pytest.mark.parametrize("size", [64, 128, 256])
def test_scaled_geometry_keeps_395(size):
    boxes = proposal_boxes(size)
    assert boxes.shape == (395, 4)
    np.testing.assert_allclose(boxes, proposal_boxes(512) * size / 512)
    s = size / 512
    np.testing.assert_array_equal(
        boxes, reference_anchors(size, (64 * s, 128 * s, 256 * s), (8, 16, 32), 128))


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size must be an integer >= 4, got 10.5"):
        proposal_boxes(10.5)
    with pytest.raises(ValueError, match="stride dividing 128"):
        proposal_boxes(512, sizes=(64,), strides=(7,))
    with pytest.raises(ValueError, match="under 2 pixels"):
        proposal_boxes(8)
