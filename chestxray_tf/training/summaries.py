"""TensorBoard pictures: heat maps of a model's maps over the input images."""

import tensorflow as tf


def heatmap_overlay(images, maps, alpha=0.5):
    """Blends maps in [0, 1] of any resolution, in red, over the images.

    Args:
        images: [N, S, S, 3] model inputs in [-1, 1] (or any range: rescaled per image).
        maps: [N, h, w] values in [0, 1] (patch probabilities, CAMs, saliency maps).
        alpha: opacity of the heat map at value 1.

    Returns:
        [N, S, S, 3] float32 in [0, 1], for `tf.summary.image`.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    grey = (images - low) / tf.maximum(high - low, 1e-6)
    size = tf.shape(images)[1:3]
    heat = tf.image.resize(tf.convert_to_tensor(maps, tf.float32)[..., None], size,
                           method="nearest")
    red = tf.concat([tf.ones_like(heat), tf.zeros_like(heat), tf.zeros_like(heat)], axis=-1)
    weight = alpha * heat
    return (1.0 - weight) * grey + weight * red
