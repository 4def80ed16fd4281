"""Class-balanced binary cross-entropy (Sedai et al. 2018, Sec. 2.2; Hermoza et al. 2020, Eq. 1).

Sedai et al.: L(W) = sum_c ( -beta_c sum_{y_c=1} log p_c - sum_{y_c=0} (1 - beta_c) log(1 - p_c) ),
beta_c = |y_c = 0| / |y_c|, "the percentage of '0' samples in the ground truth" of class c.
Hermoza et al.'s weights beta_P = 1 - P_c / |D| and beta_N = P_c / |D| are the same beta_c and
1 - beta_c. Per example (the trainer averages over the batch):

    l_n = sum_c [ -beta_c y_nc log sigmoid(z_nc) - (1 - beta_c)(1 - y_nc) log(1 - sigmoid(z_nc)) ]

from the logits z with log sigmoid(z) = log_sigmoid(z) and log(1 - sigmoid(z)) = log_sigmoid(-z),
finite for every finite z (brief D-2: beta_c from the training split's counts, constant).
"""

import numpy as np
from keras import ops


def class_balanced_bce(labels, logits, negative_fraction):
    """Per-example class-balanced binary cross-entropy from logits.

    Args:
        labels: [B, K] image labels y in {0, 1}.
        logits: [B, K] logits z (p = sigmoid(z)).
        negative_fraction: [K] beta_c, the fraction of negatives of class c (weight of the
            positives; the negatives get 1 - beta_c).

    Returns:
        loss [B], float32.
    """
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    beta = ops.cast(negative_fraction, "float32")
    if len(beta.shape) != 1 or beta.shape[0] != logits.shape[-1]:
        raise ValueError(f"negative_fraction must have shape [{logits.shape[-1]}] (one value "
                         f"per class of logits {tuple(logits.shape)}), got {tuple(beta.shape)}")
    per_class = -(beta * labels * ops.log_sigmoid(logits)
                  + (1.0 - beta) * (1.0 - labels) * ops.log_sigmoid(-logits))
    return ops.sum(per_class, axis=-1)


def negative_fraction(positive_counts, num_images):
    """beta_c = 1 - P_c / N_c: the fraction of negatives of each class in a selection.

    Args:
        positive_counts: [K] number of positive images P_c of each class.
        num_images: N, the number of images of the selection (a scalar, or [K] per class).

    Returns:
        float64 [K] in [0, 1].
    """
    positives = np.asarray(positive_counts, dtype=np.float64)
    images = np.broadcast_to(np.asarray(num_images, dtype=np.float64), positives.shape)
    if positives.ndim != 1:
        raise ValueError(f"positive_counts must be a [K] vector, got shape {positives.shape}")
    for name, values in (("positive_counts", positives), ("num_images", images)):
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
        if np.any(bad):
            c = int(np.argmax(bad))
            raise ValueError(f"{name}[{c}] = {values[c]} is not a count")
    empty = images == 0
    if np.any(empty):
        raise ValueError(f"num_images: class {int(np.argmax(empty))} has no images, its "
                         f"negative fraction is undefined")
    over = positives > images
    if np.any(over):
        c = int(np.argmax(over))
        raise ValueError(f"positive_counts[{c}] = {positives[c]:g} exceeds num_images "
                         f"{images[c]:g}")
    return 1.0 - positives / images


def batch_negative_fraction(labels):
    """beta_c of a batch (brief D-2 option `beta_from="batch"`): [B, K] labels -> [K]."""
    return 1.0 - ops.mean(ops.cast(labels, "float32"), axis=0)
