"""Writing files that a later run reads, so that a kill never leaves half of one.

Every writer goes to a temporary name in the same folder and renames it into place
(`tf.io.gfile`, so local paths and gs:// alike): a reader sees the old file or the new one,
never a part.
"""

import json
import os
import uuid

import tensorflow as tf


def _temporary(path):
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write(path, data):
    """Writes `data` (str or bytes) to `path` through a temporary file renamed into place."""
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    tmp = _temporary(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def atomic_write_json(path, payload, indent=2):
    """`atomic_write` of `payload` as JSON."""
    atomic_write(path, json.dumps(payload, indent=indent))


def atomic_copy(source, target):
    """Copies `source` to `target` through a temporary file renamed into place."""
    tmp = _temporary(target)
    try:
        tf.io.gfile.copy(source, tmp, overwrite=True)
        tf.io.gfile.rename(tmp, target, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
