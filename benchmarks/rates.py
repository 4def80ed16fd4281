"""Input rates shared by the benchmarks: images/s of a dataset, the decode-only bound of a
built set, and the training pipeline over it."""

import time

import tensorflow as tf

from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import pipeline


def images_per_second(dataset, batch_size, *, seconds, repeats, warmup=5):
    """Best images/s over `repeats` timed windows of `seconds` of an endless dataset of full
    batches, after `warmup` batches (threads started, shards in the page cache)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    best = 0.0
    for _ in range(repeats):
        batches, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            next(iterator)
            batches += 1
        best = max(best, batches * batch_size / (time.perf_counter() - start))
    return best


def decode_only(manifest_path, batch_size, parallel):
    """Read + parse + decode to uint8 [S, S, 1], batched: the bound for the full pipeline."""
    manifest = manifest_lib.read_manifest(manifest_path)
    files = tf.data.Dataset.from_tensor_slices(manifest["shard_paths"])
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=parallel,
                               num_parallel_calls=parallel, deterministic=False)
    images = records.map(
        lambda r: example.decode_image(example.parse(r), manifest["encoding"],
                                       manifest["image_size"]),
        num_parallel_calls=parallel, deterministic=False)
    return images.repeat().batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def training_pipeline(manifest_path, batch_size, parallel, *, image_size, grid, ship_grey):
    """The trainer's input (`pipeline.make_dataset`, training, endless) with box masks on a
    `grid` x `grid` patch grid; `ship_grey`: uint8 grey images (else float32 [S, S, 3])."""
    return pipeline.make_dataset(
        manifest_path, image_size=image_size, grid=grid, batch_size=batch_size,
        training=True, num_parallel_calls=parallel, repeat=True, ship_grey=ship_grey)
