"""The threshold loss of Rozenberg et al. 2019 (paper 001, Sec. 3.2), equation by equation.

For the P x P patch scores z_jk of an image (the CRF output, or the patch probabilities p_jk
when there is no CRF), a class k and its box b_k (a set of patches, complement b̄_k):

* soft counts: s_in = 1ᵀ(I[b_k] ⊙ z_k), s_out = 1ᵀ(I[b̄_k] ⊙ z_k), s = 1ᵀ z_k, with patch
  counts |b_k| and |b̄_k| = P² - |b_k|;
* Eq. 9 (annotated, ReLU form): |b|⁻¹ ReLU(τ|b| - s_in) + |b̄|⁻¹ ReLU(s_out - ρ|b̄|)
  = ReLU(τ - s_in/|b|) + ReLU(s_out/|b̄| - ρ);
* Eq. 11 (unannotated, ReLU form): y ReLU(τ̂ - s) + γ (1 - y) ReLU(s - ρ̂);
* Eq. 12 (default, `form="relu"`): L = Σ_k λ_ann a_k Eq. 9 + (1 - a_k) Eq. 11;
* `form="sigmoid"`: Eq. 3 with Eq. 5, -σ(s_in - τ|b|) σ(ρ|b̄| - s_out), and Eq. 8,
  -y σ(s - τ̂) - (1 - y) σ(ρ̂ - s), exactly as printed (counts unscaled, no γ: the brief §2.21).

τ, ρ are fractions of |b| and |b̄|, τ̂, ρ̂ patch counts (Eq. 6-7: "a meaning in absolute terms").

Empty sets (decision, docs/rozenberg2019.md): a term of Eq. 9 whose set is empty (|b̄| = 0 for a
box covering the whole grid, |b| = 0 for an empty mask) is 0, the limit of its unnormalised
form ReLU(0 - 0); the division uses max(|.|, 1), so the gradient is finite. Eq. 5 has no
division and is used as printed (its factor is σ(0) = 1/2 for an empty set).

γ (Eq. 11, "the ratio of positive to negative examples in the data ... follows the practice in
[1]"): `pooled_gamma` computes it from the label counts of the training selection, pooled over
the classes as Wang et al. 2017 pool |P| / |N| (default), or per class.
"""

import numpy as np
from keras import ops

THRESHOLD_NAMES = ("tau", "rho", "tau_hat", "rho_hat")
FORMS = ("relu", "sigmoid")


def _check_rank(name, tensor, ranks):
    if len(tensor.shape) not in ranks:
        raise ValueError(f"{name} must have rank {' or '.join(map(str, ranks))}, got shape "
                         f"{tuple(tensor.shape)}")


def _annotation_flags(has_box, box_size):
    """a_k [B, K]: `has_box` [B, K] as given, or [B] (the image is annotated) spread to the
    classes whose box mask is non-empty."""
    _check_rank("has_box", has_box, (1, 2))
    if len(has_box.shape) == 1:
        return has_box[:, None] * ops.cast(box_size > 0, "float32")
    return has_box


def _thresholds(thresholds):
    """(τ, ρ, τ̂, ρ̂), each [B, K] or [1, K], from [4, K] or [B, 4, K]."""
    _check_rank("thresholds", thresholds, (2, 3))
    if thresholds.shape[-2] != len(THRESHOLD_NAMES):
        raise ValueError(f"thresholds must hold (tau, rho, tau_hat, rho_hat) on axis -2, got "
                         f"shape {tuple(thresholds.shape)}")
    if len(thresholds.shape) == 2:
        thresholds = thresholds[None]
    return tuple(thresholds[:, index] for index in range(len(THRESHOLD_NAMES)))


def _fraction(count, size):
    """count / size with size clipped to 1 (size = 0 only where count = 0)."""
    return count / ops.maximum(size, 1.0)


def _relu_terms(counts, thresholds, labels, gamma):
    """Eq. 9 and Eq. 11 per (image, class)."""
    s_in, s_out, s, n_in, n_out = counts
    tau, rho, tau_hat, rho_hat = thresholds
    inside = ops.where(n_in > 0, ops.relu(tau - _fraction(s_in, n_in)), 0.0)
    outside = ops.where(n_out > 0, ops.relu(_fraction(s_out, n_out) - rho), 0.0)
    image = labels * ops.relu(tau_hat - s) + gamma * (1.0 - labels) * ops.relu(s - rho_hat)
    return inside + outside, image


def _sigmoid_terms(counts, thresholds, labels):
    """Eq. 5 and Eq. 8 per (image, class)."""
    s_in, s_out, s, n_in, n_out = counts
    tau, rho, tau_hat, rho_hat = thresholds
    box = -ops.sigmoid(s_in - tau * n_in) * ops.sigmoid(rho * n_out - s_out)
    image = -labels * ops.sigmoid(s - tau_hat) - (1.0 - labels) * ops.sigmoid(rho_hat - s)
    return box, image


def rozenberg2019_loss(labels, box_mask, has_box, z, thresholds, *, lambda_ann=70.0, gamma,
                       form="relu", return_terms=False):
    """Per-example loss of Rozenberg et al. 2019: Eq. 12 (`form="relu"`) or Eq. 3 + 5 + 8.

    Args:
        labels: [B, K] image labels y_k in {0, 1}.
        box_mask: [B, P, P, K] I[b_k]: 1 for the patches of the box of class k.
        has_box: [B, K] annotation flag a_k (the pipeline's `has_box`), or [B] (the image is
            annotated; then a_k = 1 for the classes with a non-empty box mask).
        z: [B, P, P, K] patch scores in [0, 1].
        thresholds: [4, K] or [B, 4, K]: (τ_k, ρ_k, τ̂_k, ρ̂_k); τ, ρ in [0, 1] are fractions
            of |b_k| and |b̄_k|, τ̂, ρ̂ patch counts.
        lambda_ann: λ_ann, weight of the box term (70 in the paper).
        gamma: γ of Eq. 11, a scalar or [K] (see `pooled_gamma`); unused by `form="sigmoid"`.
        form: "relu" (Eq. 9 + 11 = Eq. 12) or "sigmoid" (Eq. 5 + 8).
        return_terms: also return the two terms.

    Returns:
        loss [B] float32; with `return_terms`, (loss, {"box_term": [B], "image_term": [B]}),
        box_term = Σ_k λ_ann a_k L_ann^k and image_term = Σ_k (1 - a_k) L_un^k.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if not lambda_ann >= 0:
        raise ValueError(f"lambda_ann must be >= 0, got {lambda_ann!r}")
    labels, box_mask, has_box, z, thresholds, gamma = (
        ops.cast(value, "float32") for value in (labels, box_mask, has_box, z, thresholds, gamma))
    _check_rank("z", z, (4,))
    if tuple(box_mask.shape) != tuple(z.shape):
        raise ValueError(f"box_mask and z must have the same shape [B, P, P, K], got "
                         f"{tuple(box_mask.shape)} and {tuple(z.shape)}")
    _check_rank("gamma", gamma, (0, 1))
    grid_size = float(z.shape[1] * z.shape[2])
    n_in = ops.sum(box_mask, axis=(1, 2))
    counts = (ops.sum(box_mask * z, axis=(1, 2)), ops.sum((1.0 - box_mask) * z, axis=(1, 2)),
              ops.sum(z, axis=(1, 2)), n_in, grid_size - n_in)
    flags = _annotation_flags(has_box, n_in)
    if form == "relu":
        box, image = _relu_terms(counts, _thresholds(thresholds), labels, gamma)
    else:
        box, image = _sigmoid_terms(counts, _thresholds(thresholds), labels)
    box_term = lambda_ann * ops.sum(flags * box, axis=-1)
    image_term = ops.sum((1.0 - flags) * image, axis=-1)
    loss = box_term + image_term
    if return_terms:
        return loss, {"box_term": box_term, "image_term": image_term}
    return loss


def label_counts(labels):
    """(positives [K], negatives [K]): the numbers of 1s and 0s per class of an [N, K] label
    matrix (e.g. the training selection's)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be an [N, K] matrix of 0/1, got shape {labels.shape}")
    positives = labels.sum(axis=0)
    return positives, labels.shape[0] - positives


def pooled_gamma(positives, negatives, *, per_class=False):
    """γ of Eq. 11, "the ratio of positive to negative examples in the data".

    Args:
        positives, negatives: [K] counts of positive and negative labels per class (see
            `label_counts`) of the training selection.
        per_class: False (default): one scalar Σ_k positives / Σ_k negatives, the pooled
            |P| / |N| of Wang et al. 2017 Eq. 1; True: γ_k = positives_k / negatives_k, [K].

    Returns:
        float32 scalar or [K].
    """
    positives = np.asarray(positives, np.float64)
    negatives = np.asarray(negatives, np.float64)
    if positives.shape != negatives.shape or positives.ndim != 1:
        raise ValueError(f"positives and negatives must be [K] counts of the same shape, got "
                         f"{positives.shape} and {negatives.shape}")
    if (positives < 0).any() or (negatives < 0).any():
        raise ValueError(f"counts must be >= 0, got positives={positives.tolist()}, "
                         f"negatives={negatives.tolist()}")
    if per_class:
        empty = np.flatnonzero(negatives == 0)
        if empty.size:
            raise ValueError(f"per-class gamma needs negatives in every class; classes "
                             f"{empty.tolist()} have none")
        return (positives / negatives).astype(np.float32)
    if negatives.sum() == 0:
        raise ValueError("pooled gamma needs at least one negative label, got none")
    return np.float32(positives.sum() / negatives.sum())
