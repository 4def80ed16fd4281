"""The multi-instance loss of Li et al. 2018 (paper 000, Sec. 3.2), equation by equation.

For patch probabilities p_jk of the P x P patches j of an image and a class k:

* Eq. 1, image with a box of class k:
  p(y_k | x, box) = prod_{j in box} p_jk * prod_{j not in box} (1 - p_jk).
* Eq. 2, image without a box of class k (also the image score at test time):
  p(y_k | x) = 1 - prod_j (1 - p_jk).
* Eq. 4 and the total loss: L = sum_k [ -lambda_bbox a_k log p(y_k | x, box)
  - (1 - a_k) (y_k log p(y_k | x) + (1 - y_k) log(1 - p(y_k | x))) ], where the annotation flag
  a_k is per (image, class). The L2 weight regularisation of Eq. 4 lives on the model's kernels.

A boxed image's other classes (`other_classes`): Sec. 3.2 says "for a class other than k, this
image is treated as the negative sample without a bounding box". Two readings:
* "image_label" (default, SPEC §1): such a class uses the image-level term with the image's
  own label y_k. An NIH image boxed for one finding often carries other findings (its label
  row says so); calling them negative would train against the labels.
* "negative" (the literal reading): on an image with any box, every class without a box of
  its own gets the image-level term with y_k = 0.

Smoothing (Sec. 3.4, "Smoothing the image-level scores"): every factor p_jk and 1 - p_jk is
mapped from [0, 1] to [s, 1], v -> s + (1 - s) v with s = `smoothing` = 0.98, before the
products, in training and at test time.

Numerics (SPEC §1 decision): products are sums of logs in float32. With smoothing, a factor's
log is log1p(-(1 - s)(1 - v)), which is finite for every v in [0, 1]. With `smoothing=None` the
factors are unmapped and p is clipped to [EPSILON, 1 - EPSILON] before log p and log1p(-p), as
Keras' binary cross-entropy clips (clipped values get zero gradient). log(1 - p(y_k | x)) is
the sum S_k = sum_j log((1 - p_jk)~) and p(y_k | x) = -expm1(S_k); its log is taken of
max(-expm1(S_k), EPSILON), so an image whose patches are all exactly 0 costs -log(EPSILON)
rather than infinity.
"""

from keras import ops

# float32-safe clipping bound of the log terms (Keras' default fuzz factor).
EPSILON = 1e-7


def _check_smoothing(smoothing):
    if smoothing is not None and not 0.0 < smoothing < 1.0:
        raise ValueError(f"smoothing must be None or in (0, 1), got {smoothing!r}")


def log_patch_factors(patch_probs, smoothing=0.98):
    """Elementwise (log p~, log (1 - p)~) of `patch_probs` in float32.

    `~` is the smoothing map v -> s + (1 - s) v with s = `smoothing`; with `smoothing=None`
    there is no map and p is clipped to [EPSILON, 1 - EPSILON].
    """
    _check_smoothing(smoothing)
    p = ops.cast(patch_probs, "float32")
    if smoothing is None:
        p = ops.clip(p, EPSILON, 1.0 - EPSILON)
        return ops.log(p), ops.log1p(-p)
    shrink = 1.0 - smoothing
    return ops.log1p(-shrink * (1.0 - p)), ops.log1p(-shrink * p)


def _sum_patches(x):
    """[B, P, P, K] -> [B, K]: the sum over the patch grid."""
    return ops.sum(x, axis=(1, 2))


def log_image_negative(patch_probs, smoothing=0.98):
    """log(1 - p(y_k | x)) = sum_j log((1 - p_jk)~), Eq. 2 in log space: [B, P, P, K] -> [B, K]."""
    return _sum_patches(log_patch_factors(patch_probs, smoothing)[1])


def image_probs(patch_probs, smoothing=0.98):
    """Image-level score p(y_k | x) = 1 - prod_j (1 - p_jk)~ (Eq. 2): [B, P, P, K] -> [B, K]."""
    return -ops.expm1(log_image_negative(patch_probs, smoothing))


OTHER_CLASSES = ("image_label", "negative")


def li2018_loss(labels, box_mask, has_box, patch_probs, *, lambda_bbox=5.0, smoothing=0.98,
                other_classes="image_label", return_terms=False):
    """Per-example loss of Li et al. 2018, Eq. 4 summed over the classes.

    Args:
        labels: [B, K] image labels y_k in {0, 1}.
        box_mask: [B, P, P, K] 1 for the patches overlapping a box of class k (the set N).
        has_box: [B, K] annotation flag a_k: 1 when the image has a box of class k (then
            labels[b, k] is 1 too).
        patch_probs: [B, P, P, K] patch probabilities p_jk in [0, 1].
        lambda_bbox: weight of the box term (5 in the paper).
        smoothing: lower end s of the [s, 1] range the factors are mapped to (0.98 in the
            paper), or None for no mapping.
        other_classes: the label of a boxed image's classes without a box: "image_label"
            (its own y_k) or "negative" (0, the literal reading of Sec. 3.2); see the module
            docstring.
        return_terms: also return the two terms of the loss.

    Returns:
        loss [B] = box_term + image_term; with `return_terms`, (loss, {"box_term": [B],
        "image_term": [B]}), each summed over the classes.
    """
    if other_classes not in OTHER_CLASSES:
        raise ValueError(f"other_classes must be one of {OTHER_CLASSES}, got {other_classes!r}")
    labels = ops.cast(labels, "float32")
    box_mask = ops.cast(box_mask, "float32")
    has_box = ops.cast(has_box, "float32")
    if other_classes == "negative":
        boxed_image = ops.max(has_box, axis=-1, keepdims=True)
        labels = labels * (1.0 - boxed_image) + has_box
    log_p, log_not_p = log_patch_factors(patch_probs, smoothing)
    # Eq. 1: log p(y_k | x, box) = sum_{j in box} log p~ + sum_{j not in box} log (1 - p)~.
    log_box = _sum_patches(box_mask * log_p + (1.0 - box_mask) * log_not_p)
    box_term = -lambda_bbox * ops.sum(has_box * log_box, axis=-1)
    # Eq. 2 in log space, then the binary cross-entropy of Eq. 4.
    log_negative = _sum_patches(log_not_p)
    log_positive = ops.log(ops.maximum(-ops.expm1(log_negative), EPSILON))
    image_bce = -(labels * log_positive + (1.0 - labels) * log_negative)
    image_term = ops.sum((1.0 - has_box) * image_bce, axis=-1)
    loss = box_term + image_term
    if return_terms:
        return loss, {"box_term": box_term, "image_term": image_term}
    return loss
