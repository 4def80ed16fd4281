"""Tests of chestxray_tf/models/blur_pool.py (Zhang 2019 BlurPool, Rozenberg et al. 2019
Sec. 3.3) against a loop reference: reflect padding by index, explicit filter sums, stride 2."""

import keras
import numpy as np
import pytest

from chestxray_tf.models.blur_pool import BlurPool2D, binomial_kernel


def reflect(index, size):
    """PyTorch ReflectionPad index map (edge not repeated): -1 -> 1, size -> size - 2."""
    if index < 0:
        return -index
    if index >= size:
        return 2 * (size - 1) - index
    return index


def reference_blur_pool(x, blur_size, stride=2):
    """Loop reference: out[r, c] = Σ_{u,v} a_u a_v x[reflect(sr + u - ⌊(s-1)/2⌋), ...] / Σ."""
    row = [1.0]
    for _ in range(blur_size - 1):  # Pascal's triangle, built by additions
        row = [a + b for a, b in zip([0.0] + row, row + [0.0])]
    total = sum(row) ** 2
    batch, height, width, channels = x.shape
    before = (blur_size - 1) // 2
    out_h, out_w = -(-height // stride), -(-width // stride)
    out = np.zeros((batch, out_h, out_w, channels))
    for b in range(batch):
        for r in range(out_h):
            for c in range(out_w):
                for ch in range(channels):
                    acc = 0.0
                    for u in range(blur_size):
                        for v in range(blur_size):
                            i = reflect(stride * r + u - before, height)
                            j = reflect(stride * c + v - before, width)
                            acc += row[u] * row[v] * x[b, i, j, ch]
                    out[b, r, c, ch] = acc / total
    return out


def test_binomial_coefficients():
    np.testing.assert_array_equal(binomial_kernel(3) * 16, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    np.testing.assert_array_equal(binomial_kernel(1), [[1.0]])
    np.testing.assert_array_equal(binomial_kernel(4)[0] * 64, [1, 3, 3, 1])
    for size in range(1, 8):
        assert binomial_kernel(size).shape == (size, size)
        np.testing.assert_allclose(binomial_kernel(size).sum(), 1.0)


@pytest.mark.parametrize("blur_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("height, width", [(8, 8), (7, 9), (5, 6)])
def test_matches_loop_reference(blur_size, height, width):
    x = np.random.default_rng(blur_size).normal(size=(2, height, width, 3)).astype(np.float32)
    out = np.asarray(BlurPool2D(blur_size)(x))
    assert out.shape == (2, -(-height // 2), -(-width // 2), 3)
    np.testing.assert_allclose(out, reference_blur_pool(x, blur_size), atol=1e-6)


def test_constant_input_gives_the_same_constant_borders_included():
    out = np.asarray(BlurPool2D(3)(np.full((1, 7, 6, 2), 0.75, np.float32)))
    np.testing.assert_allclose(out, 0.75, rtol=1e-6)


def test_checkerboard_is_removed_while_plain_subsampling_aliases():
    """The aliasing property (Zhang 2019): the ±1 checkerboard is at the Nyquist frequency.
    Blur + subsample gives 0; plain subsampling gives +1 or -1 depending on a 1-px shift."""
    rows, cols = np.indices((16, 16))
    board = np.where((rows + cols) % 2 == 0, 1.0, -1.0).astype(np.float32)[None, :, :, None]
    shifted = np.roll(board, 1, axis=2)
    for x in (board, shifted):
        np.testing.assert_allclose(BlurPool2D(3)(x), 0.0, atol=1e-7)
    np.testing.assert_array_equal(board[0, ::2, ::2, 0], 1.0)
    np.testing.assert_array_equal(shifted[0, ::2, ::2, 0], -1.0)
    np.testing.assert_array_equal(BlurPool2D(1)(board), board[:, ::2, ::2])  # size 1 = plain


def test_a_shift_by_the_stride_shifts_the_output_by_one_away_from_borders():
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 2)).astype(np.float32)
    out = np.asarray(BlurPool2D(3)(x))
    out_shifted = np.asarray(BlurPool2D(3)(np.roll(x, 2, axis=1)))
    np.testing.assert_allclose(out_shifted[:, 2:-1], out[:, 1:-2], atol=1e-6)


def test_no_weights_serialisable_and_bad_arguments():
    layer = BlurPool2D(5, name="blur")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, layer(inputs))
    assert not layer.weights
    restored = BlurPool2D.from_config(layer.get_config())
    assert restored.blur_size == 5 and restored.strides == 2
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x, verbose=0), restored(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"blur_size must be an integer in \[1, 7\], got 0"):
        BlurPool2D(0)
    with pytest.raises(ValueError, match="strides must be a positive integer, got 0"):
        BlurPool2D(3, strides=0)
    with pytest.raises(ValueError, match=r"needs spatial sizes >= 2 .* \(None, 1, 4, 3\)"):
        BlurPool2D(3).build((None, 1, 4, 3))
    assert BlurPool2D(1)(np.ones((1, 1, 1, 2), np.float32)).shape == (1, 1, 1, 2)
