"""One test harness for layers and backbones (in the manner of keras-hub's `run_layer_test`):
build, call, one gradient step that changes the trainable weights, and a `.keras` save / load
round trip that gives the same outputs."""

import keras
import numpy as np
import tensorflow as tf


def _flat(outputs):
    return [np.asarray(o) for o in tf.nest.flatten(outputs)]


def run_model_test(model, inputs, tmp_path, *, expected_shapes=None, atol=1e-5):
    """Checks `model` (a keras.Model) on `inputs`.

    Args:
        expected_shapes: the shapes of the flattened outputs (nest order), if given.

    Returns:
        the outputs of the first call.
    """
    outputs = model(inputs, training=False)
    if expected_shapes is not None:
        assert [tuple(o.shape) for o in _flat(outputs)] == [tuple(s) for s in expected_shapes]
    for value in _flat(outputs):
        assert np.isfinite(value).all()
    before = [w.numpy().copy() for w in model.trainable_weights]
    assert before, f"{model.name} has no trainable weights"
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    with tf.GradientTape() as tape:
        loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(o, tf.float32)))
                         for o in tf.nest.flatten(model(inputs, training=True))])
    grads = tape.gradient(loss, model.trainable_weights)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    optimizer.apply_gradients(
        [(g, w) for g, w in zip(grads, model.trainable_weights) if g is not None])
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    path = str(tmp_path / f"{model.name}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    for a, b in zip(_flat(model(inputs, training=False)), _flat(reloaded(inputs, training=False))):
        np.testing.assert_allclose(a, b, atol=atol)
    return outputs
