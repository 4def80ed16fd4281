"""Reading the records of a built set in order, naming the damaged ones (graph code, `tf.data`).

Damage is an error naming where it is, or with `skip_corrupt` a WARNING naming it and a count:

* a shard that ends early (truncated, a corrupt TFRecord, a manifest listing more records than
  it holds): each shard's record count is checked against manifest.json;
* a record that does not decode (a corrupt PNG, fields that do not fit the schema): named by
  its index in the shard (from 0), its image and its shard.

What is not damage is an error with `skip_corrupt` too: a record of a newer schema version
(this code is too old for it); a shard holding more records than manifest.json lists, or a
record that is not the image metadata.csv lists at its position (the manifest or metadata.csv
is not this set's).

How. `read_shard` yields items (dicts): `path`, `index` (in the shard), `record`, `image_id`
(what metadata.csv lists at that position) and `missing`: 0 for a record, > 0 for the end of a
shard that lacks that many records, or a `_MARK` code. The selected records are kept by their
position (metadata.csv's `shard_index`), so nothing is parsed before decoding. `decode_in_order`
numbers the items, pairs each with the one before it, decodes them in a parallel map whose
failures are dropped (`ignore_errors`), and a `scan` over what is left finds the gaps in the
numbers: a record that did not decode, named from its successor's pair. Nothing before the map
raises (every check is an item, raised or counted by the scan), so `ignore_errors` can only drop
a failed decoding. Against a plain parallel map of the decoder this costs about 5% of the
images/s for PNG and 15% for raw on 2 cores (the sequential `scan`); a dataset per record cost
10% and 30% (docs/benchmarks.md).
"""

import functools
import sys

import tensorflow as tf

from chestxray_tf.data import example

# `missing` codes of the items that are no record.
_MARK = {"end_of_stream": -1, "extra_record": -2}

# What names a record that does not decode (with defaults: it may lack them).
_HEADER_SPEC = {"schema_version": tf.io.FixedLenFeature([], tf.int64, default_value=0),
                "image_id": tf.io.FixedLenFeature([], tf.string, default_value="?")}


def message(*parts):
    """A string tensor joining str parts and tensors (numbers formatted), for graph errors."""
    return tf.strings.join([
        p if isinstance(p, str) or p.dtype == tf.string else tf.strings.as_string(p)
        for p in parts])


def read_shard(path, expected, selected, image_ids):
    """The items of one shard: its records at the positions `selected` keeps, then the end of
    the shard when it lacks records, or an item per record beyond `expected`.

    Args:
        path: the shard's path.
        expected: the records manifest.json lists for it.
        selected: bool [>= expected]: keep the record at this position.
        image_ids: string [>= expected]: the image metadata.csv lists at each position.
    """
    records = tf.data.TFRecordDataset(path).ignore_errors()  # a read error ends the shard
    counted = records.concatenate(tf.data.Dataset.from_tensors(tf.constant(b""))).enumerate()

    def item(index, record):
        missing = tf.where(tf.equal(record, b""), expected - index,
                           tf.where(index < expected, tf.constant(0, tf.int64),
                                    _MARK["extra_record"]))
        position = tf.clip_by_value(index, 0, tf.maximum(expected - 1, 0))
        keep = tf.logical_or(tf.not_equal(missing, 0), tf.logical_and(
            index < expected, tf.gather(selected, position)))
        return keep, {"path": path, "index": index, "record": record, "missing": missing,
                      "image_id": tf.gather(image_ids, position)}

    return counted.map(item).filter(lambda keep, _: keep).map(lambda _, item: item)


def _end_of_stream():
    """The item `decode_in_order` ends its stream with (to see a gap before it)."""
    return {"path": tf.constant(""), "index": tf.constant(-1, tf.int64),
            "record": tf.constant(b""), "missing": tf.constant(_MARK["end_of_stream"], tf.int64),
            "image_id": tf.constant("")}


def _header(record):
    """`_HEADER_SPEC` of a record, or its defaults when the record is no `tf.train.Example`.

    Tolerant because TF's parse error quotes the record's bytes, which Python then fails to
    decode (a UnicodeDecodeError instead of the error); the image id is made valid UTF-8 for
    the same reason.
    """
    defaults = {k: tf.constant(v.default_value, v.dtype) for k, v in _HEADER_SPEC.items()}
    parsed = tf.data.Dataset.from_tensors(record).map(
        lambda record: tf.io.parse_single_example(record, _HEADER_SPEC)).ignore_errors()
    header = parsed.concatenate(tf.data.Dataset.from_tensors(defaults)).take(1)
    header = header.get_single_element()
    header["image_id"] = tf.strings.unicode_transcode(header["image_id"], "UTF-8", "UTF-8")
    return header


def _warn(*parts):
    """Prints a WARNING line to stderr when run; returns True."""
    with tf.control_dependencies([tf.print(message("WARNING: ", *parts),
                                           output_stream=sys.stderr)]):
        return tf.constant(True)


def _damage(text, total, skip_corrupt, skipped=""):
    """An error with `text`, or with `skip_corrupt` a WARNING 'skipped `text` `skipped`' with
    the total skipped so far."""
    if skip_corrupt:
        return _warn("skipped ", text, skipped, " (skip_corrupt=True); ", total,
                     " corrupt records skipped so far by this dataset")
    return tf.debugging.Assert(False, [text])


def _when(condition, check):
    """Runs the op `check()` only when `condition` holds."""
    return tf.cond(condition, lambda: tf.group(check()), tf.no_op)


def _failed_record(previous, gap, total, skip_corrupt):
    """The check of `gap` > 0 records that did not decode; `previous` is the last of them."""
    header = _header(previous["record"])
    where = message("record ", previous["index"], " (image ", header["image_id"],
                    ") of TFRecord shard ", previous["path"])
    newer = tf.debugging.Assert(header["schema_version"] <= example.SCHEMA_VERSION, [message(
        where, " was written with TFRecord schema version ", header["schema_version"],
        f", newer than the version {example.SCHEMA_VERSION} this chestxray_tf reads: update "
        "chestxray_tf or rebuild the shards")])
    with tf.control_dependencies([newer]):
        before = tf.cond(gap > 1, lambda: message(
            " (and the ", gap - 1, " records read just before it, which did not decode either)"),
            lambda: tf.constant(""))
        return _damage(message(where, ": its image does not decode or its fields do not fit "
                               f"TFRecord schema version {example.SCHEMA_VERSION}", before),
                       total, skip_corrupt)


def _check(skip_corrupt, state, item):
    """`scan` step over the decoded items, in order -> (state, (keep, element)).

    state = (last sequence number, records skipped so far, skips not yet given to an example).
    A gap in the sequence numbers is records that did not decode (`_failed_record`); the end of
    a short shard is damage too; a record beyond the manifest's count or one that is not the
    image metadata.csv lists is an error. Each example gets `skipped_records`, the records
    skipped since the example before it.
    """
    last, total, pending = state
    seq, previous, current, element = item
    missing = current["missing"]
    gap = seq - last - 1
    skipped = gap + tf.maximum(missing, 0)
    total += skipped
    # Every message is built in a branch that runs only when the check fails.
    checks = [
        _when(gap > 0, lambda: _failed_record(previous, gap, total, skip_corrupt)),
        _when(missing > 0, lambda: _damage(
            message("corrupt or truncated TFRecord shard ", current["path"], ": read ",
                    current["index"], " of the ", current["index"] + missing,
                    " records that manifest.json lists"),
            total, skip_corrupt, message(" - skipped ", missing, " records"))),
        _when(tf.equal(missing, _MARK["extra_record"]), lambda: tf.debugging.Assert(False, [
            message("TFRecord shard ", current["path"], " holds more than the ",
                    current["index"], " records that manifest.json lists: the manifest does "
                    "not describe this set (rebuild it)")])),
        _when(tf.logical_and(tf.equal(missing, 0),
                             tf.not_equal(element["image_id"], current["image_id"])),
              lambda: tf.debugging.Assert(False, [message(
                  "record ", current["index"], " of TFRecord shard ", current["path"],
                  " is image ", tf.strings.unicode_transcode(element["image_id"], "UTF-8",
                                                             "UTF-8"),
                  ", but metadata.csv lists ", current["image_id"], " there: metadata.csv "
                  "does not describe this set (rebuild it)")])),
    ]
    is_example = tf.equal(missing, 0)
    pending += skipped
    with tf.control_dependencies(checks):
        element = dict(element, skipped_records=tf.where(is_example, pending, 0))
    return (seq, total, tf.where(is_example, tf.constant(0, tf.int64), pending)), (is_example,
                                                                                  element)


def _zeros(decode):
    """Zeros of the structure `decode` returns for one record (no boxes)."""
    spec = tf.function(decode).get_concrete_function(tf.TensorSpec([], tf.string))
    return tf.nest.map_structure(lambda t: tf.zeros([d or 0 for d in t.shape], t.dtype),
                                 spec.structured_outputs)


def decode_in_order(items, decode, *, skip_corrupt, num_parallel_calls):
    """`read_shard` items -> the decoded elements, in the items' order (see the module doc),
    each with `skipped_records` (int64; 0 without `skip_corrupt`).

    Args:
        items: a dataset of `read_shard` items (shuffled or not).
        decode: record -> element dict with an `image_id`.
        skip_corrupt: count and skip damage instead of failing.
        num_parallel_calls: parallelism of the decoding.
    """
    end = tf.data.Dataset.from_tensors(_end_of_stream())
    ds = items.concatenate(end).scan(
        tf.nest.map_structure(tf.zeros_like, _end_of_stream()),
        lambda previous, item: (item, (previous, item))).enumerate()
    zeros = _zeros(decode)

    def decode_item(seq, pair):
        previous, item = pair
        element = tf.cond(tf.equal(item["missing"], 0), lambda: decode(item["record"]),
                          lambda: zeros)
        return seq, previous, {k: item[k] for k in ("path", "index", "missing", "image_id")}, \
            element

    ds = ds.map(decode_item, num_parallel_calls=num_parallel_calls,
                deterministic=True).ignore_errors()  # order: the check needs it
    zero = tf.constant(0, tf.int64)
    return ds.scan((tf.constant(-1, tf.int64), zero, zero),
                   functools.partial(_check, skip_corrupt)).filter(
        lambda keep, _: keep).map(lambda _, element: element)
