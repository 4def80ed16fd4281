"""The PAC-CRF of Rozenberg et al. 2019 (paper 001, Sec. 3.3, Fig. 3), after Su et al. 2019's
pixel-adaptive-convolution CRF, adapted to multi-label patches (brief §3.3).

Potentials (Sec. 3.3): unary ψ_j(k) from the patch probabilities p_jk ("in the absence of
neighbor dependence, the CRF will simply choose z = p"); pairwise
ψ_jl(k_j, k_l) = G(f_j, f_l) W_{k_j k_l}(ξ_j - ξ_l) over a fixed window Ω around each patch,
with G a fixed Gaussian kernel on learnable features f and W a learned class compatibility per
spatial offset.

Patches are multi-label (sigmoid, not softmax), so the CRF is K binary chains coupled through
W, solved by mean-field in log-odds (decision, brief §2.14 and errata 3):

    G[i, δ] = exp(-½ ‖f_{i+δ} - f_i‖²) for δ ∈ Ω \\ {0} with i + δ on the grid, else 0
    l⁰ = w_u u,      u = logit(p) (the head's pre-sigmoid output)
    lᵗ = w_u u + m(lᵗ⁻¹),   m_o(i) = Σ_{δ} G[i, δ] Σ_c W[δ, c, o] q_c(i + δ),   t = 1..T
    z = σ(lᵀ)

with q = 2σ(l) - 1 (`message="spin"`, the expected spin of the binary CRF: present neighbours
raise a patch's log-odds, absent ones lower them) or q = σ(l) (`message="pac"`, PacCRF's
uncentred form). w_u is learned (init 1, as PacCRF's unary weight), W starts near 0
(U(-5e-4, 5e-4)), so at initialisation z = p. T = 5 (PacCRF's default).

Implementation: the window is one gather from the zero-padded grid (the layout of
`extract_patches`, (dy, dx, c), which the tests check against); the message is one matmul of
the [B, P, P, |Ω|·K] gathered, kernel-weighted q with W reshaped to [|Ω|·K, K]. The T steps
are unrolled (T static). The largest tensors are the gathered q and f, [B, P, P, |Ω|, K] and
[B, P, P, |Ω|, C_f]: 400·361·14 floats = 8.1 MB per image at P = 20, window 19,
K = C_f = 14 (measured: forward + backward of 5 steps at batch 16 in 0.6 s on 2 CPU cores,
~75 MB of resident memory per image).

`crf_feature_branch` is the lower branch of Fig. 3 ("two 2D convolution layers, each followed
by a rectified linear unit and batch-normalization", output P x P).
"""

import keras
import numpy as np
from keras import ops

from chestxray_tf.models.layers import Float32Layer

MESSAGES = ("spin", "pac")


def _window_indices(height, width, window):
    """int32 [P, P, window²]: for each patch and offset (dy, dx) (row-major), the index of the
    neighbour in the flattened grid zero-padded by window // 2 on each side."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    dy, dx = (offset.ravel() for offset in np.meshgrid(np.arange(window), np.arange(window),
                                                        indexing="ij"))
    padded_width = width + 2 * (window // 2)
    return ((rows[..., None] + dy) * padded_width + cols[..., None] + dx).astype(np.int32)


def _window_patches(x, window):
    """[B, P, P, C] -> [B, P, P, window², C]: the values at every offset of the window
    (row-major (dy, dx)), zero outside the grid: one gather from the zero-padded grid (on CPU
    ~100x faster than `extract_patches`, forward and backward, with the same layout)."""
    _, height, width, channels = x.shape
    half = window // 2
    padded = ops.pad(x, ((0, 0), (half, half), (half, half), (0, 0)))
    flat = ops.reshape(padded, (-1, (height + 2 * half) * (width + 2 * half), channels))
    return ops.take(flat, _window_indices(height, width, window), axis=1)


def pairwise_kernel(features, window):
    """G [B, P, P, window²]: exp(-½ ‖f_{i+δ} - f_i‖²) for neighbours δ ≠ 0 on the grid."""
    neighbours = _window_patches(features, window)
    distance = ops.sum(ops.square(neighbours - features[:, :, :, None, :]), axis=-1)
    on_grid = _window_patches(ops.ones_like(features[:1, :, :, :1]), window)[..., 0]
    not_centre = np.ones(window * window, np.float32)
    not_centre[window * window // 2] = 0.0
    return ops.exp(-0.5 * distance) * on_grid * not_centre


@keras.saving.register_keras_serializable(package="chestxray_tf")
class PacCrf(Float32Layer):
    """Mean-field PAC-CRF over the patch grid: [u [B, P, P, K], f [B, P, P, C_f]] -> z [B, P, P, K].

    Args:
        window: odd side of the window Ω (19 in the paper).
        steps: mean-field iterations T (5); 0 gives z = σ(w_u u).
        message: "spin" (q = 2σ(l) - 1, default) or "pac" (q = σ(l)).

    Weights: `compatibility` W [window², K, K] (row (dy, dx) of the offset, class c of the
    neighbour, class o of the patch; the centre row is unused) and `unary_weight` w_u.
    Computes in float32 (the default dtype) whatever the global policy.
    """

    def __init__(self, window=19, steps=5, message="spin", **kwargs):
        super().__init__(**kwargs)
        if int(window) != window or window < 1 or window % 2 == 0:
            raise ValueError(f"PacCrf window must be an odd positive integer, got {window!r}")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"PacCrf steps must be an integer >= 0, got {steps!r}")
        if message not in MESSAGES:
            raise ValueError(f"PacCrf message must be one of {', '.join(MESSAGES)}, "
                             f"got {message!r}")
        self.window, self.steps, self.message = int(window), int(steps), message

    def build(self, input_shape):
        unary_shape, feature_shape = input_shape
        if None in unary_shape[1:] or None in feature_shape[1:]:
            raise ValueError(f"PacCrf needs static grid and channel sizes, got {input_shape}")
        if tuple(unary_shape[1:3]) != tuple(feature_shape[1:3]):
            raise ValueError(f"PacCrf unaries and features must share the P x P grid, got "
                             f"{tuple(unary_shape)} and {tuple(feature_shape)}")
        classes = unary_shape[-1]
        self.compatibility = self.add_weight(
            name="compatibility", shape=(self.window * self.window, classes, classes),
            initializer=keras.initializers.RandomUniform(-5e-4, 5e-4))
        self.unary_weight = self.add_weight(name="unary_weight", shape=(),
                                            initializer=keras.initializers.Constant(1.0))

    def _spins(self, logits):
        q = ops.sigmoid(logits)
        return 2.0 * q - 1.0 if self.message == "spin" else q

    def call(self, inputs):
        unaries, features = (ops.cast(x, "float32") for x in inputs)
        height, width, classes = unaries.shape[1:]
        kernel = pairwise_kernel(features, self.window)[..., None]  # [B, P, P, |Ω|, 1]
        compatibility = ops.reshape(self.compatibility, (-1, classes))  # [|Ω| K, K]
        unary = self.unary_weight * unaries
        logits = unary
        for _ in range(self.steps):
            weighted = kernel * _window_patches(self._spins(logits), self.window)
            weighted = ops.reshape(weighted, (-1, height, width, compatibility.shape[0]))
            logits = unary + ops.matmul(weighted, compatibility)
        return ops.sigmoid(logits)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "window": self.window, "steps": self.steps,
                "message": self.message}


def crf_feature_branch(image, *, grid, widths=(32, 14), resize=4, name="crf_features"):
    """The lower branch of Fig. 3: image [B, S, S, 3] -> f [B, P, P, widths[-1]].

    Area-resize to resize·P (brief §3.1: 4P), then per width Conv3x3 -> ReLU -> BN (the
    paper's order, "each followed by a rectified linear unit and batch-normalization"); the
    convolutions have stride 2 when `resize` = 2 ** len(widths) and stride 1 when `resize` = 1.
    The Gaussian kernel's scale is learned through the last BN's scale. When S is a multiple
    of resize·P, the area resize is an average pool over S / (resize·P) pixel blocks (the same
    values; XLA has no ResizeArea kernel, so this keeps `jit_compile` and TPUs open).
    """
    if resize not in (1, 2 ** len(widths)):
        raise ValueError(f"crf_feature_branch resize must be 1 or 2 ** len(widths) = "
                         f"{2 ** len(widths)}, got {resize!r}")
    strides, size = 1 if resize == 1 else 2, resize * grid
    side = image.shape[1]
    if side is not None and side == image.shape[2] and side % size == 0:
        x = keras.layers.AveragePooling2D(side // size, name=f"{name}_resize")(image)
    else:
        x = keras.layers.Resizing(size, size, interpolation="area", name=f"{name}_resize")(image)
    for index, width in enumerate(widths, start=1):
        x = keras.layers.Conv2D(width, 3, strides=strides, padding="same",
                                name=f"{name}_conv{index}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{index}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{index}")(x)
    return x
