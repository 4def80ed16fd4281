"""Losses of Kim, Jung, Lee (paper 002): the batch-weighted BCE of the classifier (Eq. 10,
Sec. 3.3) and the alignment loss (Eqs. 7-9, Sec. 3.2), per example so that the trainer's mean
over the batch gives the loss.
"""

from keras import ops

from chestxray_tf.models.kim import grid_smooth

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON]
WBCE_SCOPES = ("batch", "per_class")
LOSS_FORMS = ("mse", "literal")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def batch_weighted_bce(labels, probs, scope="batch"):
    """Weighted binary cross-entropy (Eq. 10) per example.

    L_WCE = w_P sum_{y in P} -ln M(x) + w_N sum_{y in N} -ln(1 - M(x)),
    w_P = (|P| + |N|) / |P|,  w_N = (|P| + |N|) / |N|.

    What is pooled (brief §2.7 [decision], as Wang et al. 2017 whom Eq. 10 cites): with
    scope="batch", P and N are the 1s and 0s of the whole B x K label matrix of the batch given
    (per replica under a distribution strategy), so |P| + |N| = B K; with scope="per_class",
    |P_c| and |N_c| are counted in column c and weight that class's terms. The counts are label
    statistics, constants for the gradient.

    Empty cases: a batch (or class) without positives has no positive term, so w_P multiplies
    nothing; the counts are guarded by max(|.|, 1), so no division by zero occurs and the loss is
    the plain negative (resp. positive) term weighted by (|P| + |N|) / |N| = 1.

    Args:
        labels: [B, K] targets in {0, 1}.
        probs: [B, K] predicted probabilities M(x), clipped to [1e-7, 1 - 1e-7].
        scope: "batch" or "per_class".

    Returns:
        loss [B] float32: sum over k of the weighted terms of image b, so that its mean over the
        batch is Eq. 10 divided by B.
    """
    _check_choice("wbce_scope", scope, WBCE_SCOPES)
    labels = ops.cast(labels, "float32")
    probs = ops.clip(ops.cast(probs, "float32"), EPSILON, 1.0 - EPSILON)
    axis = None if scope == "batch" else 0
    positives = ops.sum(labels, axis=axis)
    negatives = ops.sum(1.0 - labels, axis=axis)
    total = positives + negatives
    w_p = ops.stop_gradient(total / ops.maximum(positives, 1.0))
    w_n = ops.stop_gradient(total / ops.maximum(negatives, 1.0))
    terms = -(w_p * labels * ops.log(probs) + w_n * (1.0 - labels) * ops.log(1.0 - probs))
    return ops.sum(terms, axis=-1)


def _norm(squares):
    """sqrt with a zero (not NaN) gradient at 0, for the literal L2 norms of Eqs. 7-8."""
    positive = squares > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, 1.0)), 0.0)


def euclidean_loss(anchor, smoothed, form="mse"):
    """L_e(A, I) (Eq. 8) per example.

    Args:
        anchor: A, [S, S, C] or [1, S, S, C].
        smoothed: phi(I) = B(G(W_A(I))), [B, S, S, C].
        form: "mse" (default, brief §2.3 [decision]): mean over i, j and channels of
            (A - phi(I))^2; "literal": sum over the pixels of ||A^{ij} - phi(I)^{ij}||_2, the
            norm over the channels, as printed.

    Returns:
        [B] float32.
    """
    _check_choice("loss_form", form, LOSS_FORMS)
    diff = ops.cast(smoothed, "float32") - ops.cast(anchor, "float32")
    if form == "mse":
        return ops.mean(ops.square(diff), axis=(1, 2, 3))
    return ops.sum(_norm(ops.sum(ops.square(diff), axis=-1)), axis=(1, 2))


def perceptual_loss(anchor_features, features, form="mse"):
    """L_p(A, I) (Eq. 7) per example, summed over the layers s = 1..N_I.

    Args:
        anchor_features: F_s(A), a list of [H_s, W_s, C_s] or [1, H_s, W_s, C_s] (computed once).
        features: F_s(phi(I)), a list of [B, H_s, W_s, C_s], same order.
        form: "mse" (default): mean over (c, h, w) of (F_s(A) - F_s(phi(I)))^2, Johnson et al.'s
            feature loss; "literal": ||F_s(A) - F_s(phi(I))||_2 / (C^s H^s W^s), as printed.

    Returns:
        [B] float32.
    """
    _check_choice("loss_form", form, LOSS_FORMS)
    if len(anchor_features) != len(features) or not features:
        raise ValueError(f"perceptual_loss needs as many anchor features as features, got "
                         f"{len(anchor_features)} and {len(features)}")
    total = 0.0
    for reference, feature in zip(anchor_features, features):
        diff = ops.cast(feature, "float32") - ops.cast(reference, "float32")
        squares = ops.square(diff)
        if form == "mse":
            total = total + ops.mean(squares, axis=(1, 2, 3))
        else:
            size = diff.shape[1] * diff.shape[2] * diff.shape[3]
            total = total + _norm(ops.sum(squares, axis=(1, 2, 3))) / size
    return total


def alignment_loss(anchor, smoothed, anchor_features, features, form="mse"):
    """L_total = L_e + L_p (Eq. 9) per example.

    Returns:
        (loss [B], {"align_e": L_e [B], "align_p": L_p [B]}).
    """
    l_e = euclidean_loss(anchor, smoothed, form)
    l_p = perceptual_loss(anchor_features, features, form)
    return l_e + l_p, {"align_e": l_e, "align_p": l_p}


def make_alignment_loss(perceptual_net, anchor, pool_size, form="mse"):
    """The S1 loss of the aligned images W_A(I), with phi(I) = B(G(W_A(I))) (Eq. 6) and the
    frozen perceptual network F (S0's `stage_outputs_model`, run in inference mode).

    F_s(A) is taken of the unsmoothed anchor (it is already a mean; brief §2.16) at every call,
    so `anchor` may be a variable that a compute stage writes after the loss is made (the
    `kim` task's anchor stage); the cost is one image's forward pass per step, and no gradient
    flows into A or F.

    Args:
        perceptual_net: a model image [B, S, S, 3] -> the list of its F_s.
        anchor: A [S, S, 3] (an array or a variable).
        pool_size: G's window (S / 32: 16 at 512 px).
        form: "mse" or "literal".

    Returns:
        loss_fn(aligned [B, S, S, 3]) -> (loss [B], {"align_e": [B], "align_p": [B]}).
    """
    _check_choice("loss_form", form, LOSS_FORMS)

    def loss_fn(aligned):
        reference = ops.stop_gradient(ops.cast(ops.convert_to_tensor(anchor), "float32")[None])
        anchor_features = [ops.stop_gradient(f) for f in
                           _as_list(perceptual_net(reference, training=False))]
        smoothed = grid_smooth(ops.cast(aligned, "float32"), pool_size)
        features = _as_list(perceptual_net(smoothed, training=False))
        return alignment_loss(reference, smoothed, anchor_features, features, form)

    return loss_fn


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
