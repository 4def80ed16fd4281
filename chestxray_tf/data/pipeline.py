"""`tf.data` input pipelines for training and evaluation from a built TFRecord set (SPEC §0, §1).

read the shards (parallel interleave) -> keep the selected images' records (by their position in
the shard: nothing is parsed before decoding) -> shuffle records (training) -> parse, decode,
resize to the model size (`records.decode_in_order`) -> batch ->
augment (optional) -> 3 channels scaled to [-1, 1] or ImageNet mean/std, box targets (one XLA-fused
step). An element is a flat dict:

| key | shape, dtype | what |
|---|---|---|
| `image` | [B, S, S, 3] float32 | the normalised image; with `ship_grey` the grey pixels [B, S, S, 1] in [0, 255]: uint8 (float32 when augmented) |
| `labels` | [B, K] float32 | multi-hot image labels y_k |
| `box_mask` | [B, P, P, K] float32 | patch overlaps a box of class k (Li Sec. 3.2); with `grid` |
| `has_box` | [B, K] float32 | the annotation flag a_k: the image has a box of class k |
| `boxes` | [B, M, 4] float32 | normalised yxyx boxes, zero-padded |
| `box_labels` | [B, M] int32 | class id per box, -1 for padding |
| `image_id` | [B] string | |
| `skipped_records` | [B] int64 | with `skip_corrupt`, records skipped just before the example |

Damaged input (a shard that ends early, a record that does not decode) is an error naming the
shard and the record, or with `skip_corrupt` a WARNING naming it and a count: see `records`.
Summed over the examples a run consumed, `skipped_records` counts the records it skipped (the
trainer reports it at the end of each epoch).
"""

import os

import numpy as np
import tensorflow as tf

from chestxray_tf import labels as labels_lib
from chestxray_tf.data import augment as augment_lib
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import records as records_lib
from chestxray_tf.data import targets

NORMALIZATIONS = ("minus_one_one", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = {"hermoza": augment_lib.hermoza}
def _pad_boxes(features, max_boxes):
    """Boxes [N, 4] -> [M, 4] zero-padded, labels [N] -> [M] padded with -1 (N > M: error)."""
    boxes, labels = features["boxes"], tf.cast(features["box_labels"], tf.int32)
    count = tf.shape(labels)[0]
    check = tf.debugging.Assert(count <= max_boxes, [records_lib.message(
        "image ", features["image_id"], " has ", count, f" boxes, more than max_boxes={max_boxes}",
        ": raise max_boxes")])
    with tf.control_dependencies([check]):
        pad = max_boxes - count
    boxes = tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_boxes, 4])
    labels = tf.ensure_shape(tf.pad(labels, [[0, pad]], constant_values=-1), [max_boxes])
    return boxes, labels


def resize(image, image_size):
    """Grey [..., H, W, 1] -> [..., S, S, 1]: area resize down, bilinear up (float32); an image
    already S x S (statically) is returned as it is."""
    height, width = image.shape[-3], image.shape[-2]
    if height == image_size and width == image_size:
        return image

    def to(method):
        return lambda: tf.image.resize(image, [image_size, image_size], method=method)

    if height is not None:
        return to("area" if height > image_size else "bilinear")()
    return tf.cond(tf.shape(image)[-3] > image_size, to("area"), to("bilinear"))


def _decode(serialized, encoding, stored_size, image_size):
    """Per record: pixels at the model size ([S, S, 1], uint8 or float32) and the targets
    (boxes [N, 4] and box_labels [N]: a record with other counts is an error)."""
    features = example.parse(serialized)
    image = resize(example.decode_image(features, encoding, stored_size), image_size)
    check = tf.debugging.assert_equal(
        tf.shape(features["boxes"])[0], tf.shape(features["box_labels"])[0],
        message="the record has a different number of boxes and box labels")
    with tf.control_dependencies([check]):
        return {"image": image, "labels": tf.cast(features["labels"], tf.float32),
                "boxes": tf.identity(features["boxes"]), "box_labels": features["box_labels"],
                "image_id": features["image_id"]}


def _with_padded_boxes(element, max_boxes):
    boxes, box_labels = _pad_boxes(element, max_boxes)
    return dict(element, boxes=boxes, box_labels=box_labels)


def normalize(images, normalization):
    """Grey [..., 1] pixels in [0, 255] -> float32 [..., 3] in [-1, 1] or ImageNet-standardised."""
    images = tf.cast(images, tf.float32)
    if normalization == "minus_one_one":
        return tf.repeat(images * (1.0 / 127.5) - 1.0, 3, axis=-1)
    if normalization == "imagenet":
        return (images * (1.0 / 255.0) - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)
    raise ValueError(f"normalization {normalization!r} is not one of {NORMALIZATIONS}")


def preprocess_image(grey_uint8, image_size, normalization="minus_one_one"):
    """One image (or a batch) outside the pipeline, e.g. at serving: grey uint8 [..., H, W, 1]
    -> float32 [..., S, S, 3], resized and normalised as `make_dataset` does."""
    return normalize(resize(grey_uint8, image_size), normalization)


def to_uint8(images):
    """Pixels in [0, 255] -> uint8, rounded to the nearest grey level (a resized image's are
    fractional: at most half a level, 1/255 in [-1, 1] units, from the float path)."""
    if images.dtype == tf.uint8:
        return images
    return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def _batch_targets(normalization, grid, grey_dtype=None):
    """The batch-level normalisation and box targets, compiled with XLA into one fused pass.

    Fusing the cast, scale and 3-channel broadcast halves the cost of the memory-bound
    normalisation (the largest cost of the pipeline after PNG decoding). With `grey_dtype`
    the grey pixels are shipped instead, for the training step to normalise on the device
    (`normalize`): uint8 is a twelfth of the bytes of float32 [S, S, 3] (float32 grey, for
    an augmentation's fractional pixels, a third).
    """
    @tf.function(jit_compile=True)
    def finish(images, boxes, box_labels):
        if grey_dtype is None:
            shipped = normalize(images, normalization)
        elif grey_dtype == tf.uint8:
            shipped = to_uint8(images)
        else:
            shipped = tf.cast(images, grey_dtype)
        out = {"image": shipped,
               "has_box": targets.has_box(boxes, box_labels, labels_lib.NUM_CLASSES)}
        if grid is not None:
            out["box_mask"] = targets.box_to_patch_mask(boxes, box_labels, grid,
                                                        labels_lib.NUM_CLASSES)
        return out

    return finish


def _finish_batch(index, batch, finish, augment, seed):
    """Batch-level steps: augmentation (optional; random stream keyed by (seed, batch index)),
    then normalisation and box targets."""
    images, boxes, box_labels = batch["image"], batch["boxes"], batch["box_labels"]
    if augment is not None:
        key = tf.stack([tf.constant(seed, tf.int64), index])
        images, boxes, box_labels = augment(tf.cast(images, tf.float32), boxes, box_labels, key)
    return dict(batch, boxes=boxes, box_labels=box_labels, **finish(images, boxes, box_labels))


def _resolve_augment(augment):
    if augment is None or callable(augment):
        return augment
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment {augment!r} is not one of {sorted(AUGMENTATIONS)} or a callable")
    return AUGMENTATIONS[augment]()


def _selection(manifest, table, image_ids):
    """Rows of metadata.csv `table` of the selected images (all when `image_ids` is None)."""
    if image_ids is None:
        return table
    wanted = _unique_ids(image_ids)
    unknown = sorted(set(wanted) - set(table["image_id"]))
    if unknown:
        raise ValueError(f"{len(unknown)} of the {len(wanted)} selected images are not in "
                         f"{manifest['dir']}, e.g. {unknown[:5]}")
    return table[table["image_id"].isin(wanted)]


def _positions(manifest, table, names, counts, wanted):
    """Per shard, by position (metadata.csv's shard_index): keep the record (its image is in
    `wanted`)? and its image id -> (bool [shards, n], str [shards, n]), n >= every count."""
    width = max(1, *counts)
    keep = np.zeros((len(names), width), bool)
    ids = np.full((len(names), width), "", object)
    row = {name: i for i, name in enumerate(names)}
    table = table[table["shard"].isin(row)]
    rows, positions = table["shard"].map(row).to_numpy(int), table["shard_index"].to_numpy(int)
    beyond = (positions < 0) | (positions >= np.asarray(counts, int)[rows])
    if beyond.any():
        first = table[beyond].iloc[0]
        raise ValueError(
            f"{manifest['dir']}/metadata.csv puts image {first['image_id']} at position "
            f"{first['shard_index']} of TFRecord shard {first['shard']}, which manifest.json "
            f"lists with {counts[row[first['shard']]]} records ({int(beyond.sum())} such rows): "
            "they do not describe the same set (rebuild it)")
    ids[rows, positions] = table["image_id"].to_numpy()
    keep[rows, positions] = table["image_id"].isin(wanted).to_numpy()
    return keep, ids.astype(str)


def _unique_ids(ids):
    """The distinct ids of `ids` as a list of str (order kept)."""
    return list(dict.fromkeys(str(i) for i in np.asarray(ids, dtype=object).reshape(-1)))


def make_dataset(manifest_path, image_ids=None, *, image_size, batch_size, training, grid=None,
                 normalization="minus_one_one", max_boxes=8, augment=None, seed=0,
                 shuffle_buffer=512, num_parallel_calls=4, interleave_cycle=4,
                 input_context=None, drop_remainder=None, repeat=False, skip_batches=0,
                 deterministic=True, skip_corrupt=False, ship_grey=False):
    """The training or evaluation `tf.data.Dataset` of a built set (elements: see module doc).

    Args:
        manifest_path: the set's folder or manifest.json.
        image_ids: the images to use (e.g. from `select_ids`); None = all. Filtered in-graph
            before decoding; an id not in the set is an error.
        image_size: model input size S (resized from the stored size: area down, bilinear up).
        batch_size: global batch size (per replica when `input_context` is given: divided by
            its number of replicas).
        training: shuffle shards and records (seeded); else read the shards' records
            interleaved in turn.
        grid: P of the `box_mask` target; None leaves `box_mask` out.
        normalization: 'minus_one_one' or 'imagenet'.
        max_boxes: M, the padded number of boxes (an image with more is an error).
        augment: None, 'hermoza' or a callable (images, boxes, box_labels, key) -> (images,
            boxes, box_labels), applied to float [B, S, S, 1] pixel batches in [0, 255]; `key`
            is the int64 [2] stateless random key (seed, batch index) (see `augment`).
        seed: shuffle and augmentation seed.
        shuffle_buffer: records in the shuffle buffer (encoded, before decoding).
        num_parallel_calls: parallelism of the maps and the interleave. A fixed number (4 by
            default): AUTOTUNE was seen settling on a slower setting on 2 cores.
        interleave_cycle: shards read at once.
        input_context: a `tf.distribute.InputContext` (from
            `strategy.distribute_datasets_from_function`): this pipeline reads every
            num_input_pipelines-th shard from input_pipeline_id.
        drop_remainder: drop a last partial batch (default: `training`).
        repeat: read the shards endlessly (reshuffled each pass when training), e.g. for
            `fit(steps_per_epoch=...)`; the pipeline then never drains at epoch ends.
        skip_batches: drop the first batches of this (deterministic) order before decoding
            them, to resume mid-epoch (counted in per-pipeline batches).
        deterministic: the same arguments give the same element order (and augmentation); False
            lets the parallel steps after decoding emit out of order.
        skip_corrupt: log, count and skip the unreadable rest of a shard that ends early and
            each record that does not decode, instead of failing (see `records`).
        ship_grey: ship the grey pixels [B, S, S, 1] (uint8, rounded after a resize; float32
            with `augment`) instead of normalised float32 [B, S, S, 3] images, for the
            consumer to `normalize` on its device (the trainer's step does).

    Raises:
        ValueError: bad arguments, unknown ids, fewer shards than input pipelines.
        FileNotFoundError: a shard listed in the manifest is missing.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization {normalization!r} is not one of {NORMALIZATIONS}")
    augment = _resolve_augment(augment)
    manifest = manifest_lib.read_manifest(manifest_path)
    missing = [p for p in manifest["shard_paths"] if not tf.io.gfile.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shards listed in {manifest['dir']}/manifest.json "
                                f"are missing, e.g. {missing[:3]}")
    shards = list(zip(manifest["shard_paths"], [s["count"] for s in manifest["shards"]]))
    if input_context is not None:
        pipelines = input_context.num_input_pipelines
        if len(shards) < pipelines:
            raise ValueError(f"{len(shards)} shards cannot feed {pipelines} input pipelines: "
                             "rebuild with --num_shards >= the number of input pipelines")
        shards = shards[input_context.input_pipeline_id::pipelines]
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    table = manifest_lib.read_metadata(manifest["dir"])
    selected = _selection(manifest, table, image_ids)
    if drop_remainder is None:
        drop_remainder = training

    paths, counts = zip(*shards)
    keep, ids = _positions(manifest, table, [os.path.basename(p) for p in paths], counts,
                           set(selected["image_id"]))
    num_examples = int(keep.sum())
    files = tf.data.Dataset.from_tensor_slices(
        (list(paths), np.asarray(counts, np.int64), keep, ids))
    if training:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    items = files.interleave(
        records_lib.read_shard, cycle_length=min(interleave_cycle, len(paths)), block_length=1,
        num_parallel_calls=min(interleave_cycle, num_parallel_calls, len(paths)),
        deterministic=deterministic)
    if training:
        items = items.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    items = items.skip(skip_batches * batch_size)
    ds = records_lib.decode_in_order(
        items, lambda r: _decode(r, manifest["encoding"], manifest["image_size"], image_size),
        skip_corrupt=skip_corrupt, num_parallel_calls=num_parallel_calls)
    if repeat:
        ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    elif not skip_corrupt:  # one element per selected record
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            max(0, num_examples - skip_batches * batch_size)))
    ds = ds.map(lambda element: _with_padded_boxes(element, max_boxes),
                num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).enumerate(start=skip_batches)
    grey_dtype = None if not ship_grey else (tf.uint8 if augment is None else tf.float32)
    finish = _batch_targets(normalization, grid, grey_dtype)
    ds = ds.map(lambda index, batch: _finish_batch(index, batch, finish, augment, seed),
                num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)
