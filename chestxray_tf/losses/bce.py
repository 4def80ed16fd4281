"""Plain binary cross-entropy of the "reference" baseline (Li et al. 2018, Sec. 4.1, Table 1):
L = sum_k -(y_k log p_k + (1 - y_k) log(1 - p_k)) per image, the image-level term of Eq. 4
without boxes. p is clipped to [1e-7, 1 - 1e-7] by Keras (its default fuzz factor).
"""

from keras import ops


def bce_loss(labels, probs):
    """Per-example binary cross-entropy summed over the classes.

    Args:
        labels: [B, K] image labels y_k in {0, 1}.
        probs: [B, K] predicted probabilities p_k in [0, 1].

    Returns:
        loss [B], float32.
    """
    labels = ops.cast(labels, "float32")
    probs = ops.cast(probs, "float32")
    return ops.sum(ops.binary_crossentropy(labels, probs), axis=-1)
