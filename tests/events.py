"""Reading what a run logged to TensorBoard, for the tests."""

import os

import tensorflow as tf


def scalars(logdir, tag):
    """{step: value} of the scalar `tag` in the event files of `logdir` (files in name order,
    i.e. by creation time: a step logged again by a resumed run keeps its later value)."""
    values = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values
