"""The anchor image of Kim et al.'s alignment module (paper 002, Sec. 3.2): "a generalized chest
image generated from the average of 2,000 normal random samples" (brief §2.16: "No Finding"
images of the training split, at the model's size and normalisation, N = min(2000, available),
a fixed seed).
"""

import numpy as np

NUM_ANCHOR_IMAGES = 2000


def choose_anchor_images(candidates, num_images=NUM_ANCHOR_IMAGES, seed=0):
    """A random subset of N = min(num_images, len(candidates)) of the candidates (e.g. the ids
    of the "No Finding" training images), drawn without replacement with `seed`, in the
    candidates' order."""
    candidates = list(candidates)
    if not candidates:
        raise ValueError("choose_anchor_images got no candidate images")
    if int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
    picked = np.random.default_rng(seed).choice(len(candidates),
                                                min(int(num_images), len(candidates)),
                                                replace=False)
    return [candidates[i] for i in sorted(picked)]


def anchor_image(images):
    """A = the pixelwise mean of the images, float32 [H, W, C].

    Args:
        images: an iterable of images [H, W, C] or of batches [B, H, W, C] (mixed freely),
            all of one size; summed in float64.
    """
    total, count, shape = 0.0, 0, None
    for item in images:
        batch = np.asarray(item, dtype=np.float64)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or (shape is not None and batch.shape[1:] != shape):
            raise ValueError(f"anchor_image needs images [H, W, C] of one size, got an item of "
                             f"shape {np.shape(item)} after images of shape {shape}")
        shape = batch.shape[1:]
        total = total + batch.sum(axis=0)
        count += batch.shape[0]
    if count == 0:
        raise ValueError("anchor_image got no images")
    return (total / count).astype(np.float32)
