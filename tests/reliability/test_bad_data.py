"""Bad data in a built set: each case is an error naming the shard and the record, or with
`skip_corrupt` a counted skip; the record parser survives any bytes (hypothesis).

Cases `tests/data/test_pipeline.py` already covers are not repeated here: a truncated shard
(error, and with `skip_corrupt` read up to the damage), a corrupt TFRecord, a missing shard, a
manifest of a newer schema version, more boxes than `max_boxes`.
"""

import functools
import json
import re
import shutil

from hypothesis import HealthCheck, given, settings, strategies as st
import pytest
import tensorflow as tf

from chestxray_tf import labels as labels_lib
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import pipeline
from chestxray_tf.data import records as records_lib
from chestxray_tf.data import selection as data
from chestxray_tf.training import trainer

import events
from tiny import tiny_config

SIZE = 64
FUZZ_SHARD = "fuzz.tfrecord"
FUZZ = settings(max_examples=500, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _copy(built_set, tmp_path):
    return shutil.copytree(built_set, tmp_path / "set")


def _records(shard):
    return [r.numpy() for r in tf.data.TFRecordDataset(shard)]


def _change_record(shard, index, change):
    """Rewrites record `index` of `shard` with change(tf.train.Example) (valid TFRecord CRCs);
    returns its image id."""
    records = _records(shard)
    proto = tf.train.Example.FromString(records[index])
    image_id = proto.features.feature["image_id"].bytes_list.value[0].decode()
    change(proto.features.feature)
    records[index] = proto.SerializeToString()
    with tf.io.TFRecordWriter(shard) as writer:
        for record in records:
            writer.write(record)
    return image_id


def _corrupt_png(feature):
    encoded = feature["image/encoded"].bytes_list.value
    encoded[0] = encoded[0][:len(encoded[0]) // 2]


def _extra_box_label(feature):
    feature["boxes/label"].int64_list.value.append(1)


def _short_labels(feature):
    del feature["labels"].int64_list.value[-1]


def _newer_schema(feature):
    feature["schema_version"].int64_list.value[0] = example.SCHEMA_VERSION + 1


def _image_ids(built, **kwargs):
    ds = pipeline.make_dataset(built, image_size=SIZE, batch_size=5, training=False, **kwargs)
    return [i.decode() for batch in ds for i in batch["image_id"].numpy()]


def _all_ids(built):
    return sorted(manifest_lib.read_metadata(built)["image_id"])


@pytest.mark.parametrize("change", [_corrupt_png, _extra_box_label, _short_labels])
def test_record_that_does_not_decode_is_an_error_naming_it(built_set, tmp_path, change):
    copy = _copy(built_set, tmp_path)
    shard = manifest_lib.read_manifest(copy)["shard_paths"][1]
    image_id = _change_record(shard, 3, change)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"record 3 (image {image_id}) of TFRecord shard {shard}: its image does not decode "
            "or its fields do not fit TFRecord schema version")):
        _image_ids(copy)


def _warned_skips(stderr):
    """{image id: count} of the skip_corrupt WARNING lines of skipped records."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r"WARNING: skipped record \d+ \(image (\S+)\) of TFRecord shard .*\(skip_corrupt=True\); "
        r"(\d+) corrupt records skipped so far", stderr)}


def test_skip_corrupt_leaves_out_and_counts_the_records_that_do_not_decode(built_set, tmp_path,
                                                                           capfd):
    copy = _copy(built_set, tmp_path)
    shards = manifest_lib.read_manifest(copy)["shard_paths"]
    bad = {_change_record(shards[1], 3, _corrupt_png), _change_record(shards[2], 0, _corrupt_png)}
    assert sorted(_image_ids(copy, skip_corrupt=True)) == sorted(set(_all_ids(copy)) - bad)
    skips = _warned_skips(capfd.readouterr().err)
    assert set(skips) == bad and sorted(skips.values()) == [1, 2]


def test_config_skip_corrupt_skips_in_training_too(built_set, tmp_path, capfd):
    """`config.data.skip_corrupt` reaches the training input (endless, shuffled): the bad record
    never arrives and each pass over it adds one to the count.

    The shards repeat before the shuffle buffer (64 of ~70 records), so a record may wait in the
    buffer for more than one pass: 60 batches (~7 passes) make a missing id all but impossible.
    """
    copy = _copy(built_set, tmp_path)
    bad = _change_record(manifest_lib.read_manifest(copy)["shard_paths"][0], 5, _corrupt_png)
    config = tiny_config(copy)
    config.data.skip_corrupt = True
    ds = data.dataset(config.data, _all_ids(copy), training=True, batch_size=8, seed=1)
    seen = [i.decode() for batch in ds.take(60) for i in batch["image_id"].numpy()]
    assert bad not in seen and set(seen) == set(_all_ids(copy)) - {bad}
    counts = [int(c) for c in re.findall(
        rf"image {re.escape(bad)}\).*?(\d+) corrupt records skipped", capfd.readouterr().err)]
    assert counts[:2] == [1, 2]


def _bad_training_record(built_set, tmp_path):
    """A copy of the set whose record of a training image (tiny config) has a corrupt PNG
    -> (copy, tiny config, that image id, its shard)."""
    copy = _copy(built_set, tmp_path)
    config = tiny_config(copy, steps_per_epoch=5, num_steps=15, checkpoint_every_steps=100)
    train = set(data.select(config.data).train)
    table = manifest_lib.read_metadata(copy)
    row = table[table["image_id"].isin(train)].iloc[0]
    shard = str(copy / row["shard"])
    assert _change_record(shard, int(row["shard_index"]), _corrupt_png) == row["image_id"]
    return copy, config, row["image_id"], shard


def test_training_fails_naming_a_record_that_does_not_decode(built_set, tmp_path):
    _, config, image_id, shard = _bad_training_record(built_set, tmp_path)
    config.train.num_steps = 60  # > 3 passes over the ~45 training images: it must be met
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"(image {image_id}) of TFRecord shard {shard}: its image does not decode")):
        trainer.train(config, str(tmp_path / "run"))


def test_training_reports_the_skipped_records_at_each_epoch_end(built_set, tmp_path):
    """With data.skip_corrupt, each epoch ends with its count in the log and in TensorBoard;
    3 epochs of 20 examples over ~45 images meet the bad record at least once."""
    _, config, _, _ = _bad_training_record(built_set, tmp_path)
    config.data.skip_corrupt = True
    workdir = tmp_path / "run"
    trainer.train(config, str(workdir))
    counts = events.scalars(str(workdir / "stages" / "0_train" / "logs"), "train/skipped_records")
    assert sorted(counts) == [5, 10, 15]
    assert 1 <= sum(counts.values()) and all(c in (0, 1) for c in counts.values())


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_record_of_a_newer_schema_is_an_error_naming_it(built_set, tmp_path, skip_corrupt):
    """A newer record in a set whose manifest has this code's version: not damage, so an error
    with `skip_corrupt` too."""
    copy = _copy(built_set, tmp_path)
    shard = manifest_lib.read_manifest(copy)["shard_paths"][2]
    image_id = _change_record(shard, 0, _newer_schema)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"record 0 (image {image_id}) of TFRecord shard {shard} was written with TFRecord "
            f"schema version {example.SCHEMA_VERSION + 1}, newer than the version "
            f"{example.SCHEMA_VERSION}")):
        _image_ids(copy, skip_corrupt=skip_corrupt)


def _set_count(copy, shard_index, delta):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][shard_index]["count"] += delta
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return manifest_lib.read_manifest(copy)["shard_paths"][shard_index]


def test_manifest_listing_fewer_records_than_metadata_places_is_an_error(built_set, tmp_path):
    """Found before reading: metadata.csv puts records beyond the shard's count."""
    copy = _copy(built_set, tmp_path)
    listed = json.loads((copy / "manifest.json").read_text())["shards"][2]["count"] - 2
    shard = _set_count(copy, 2, -2).rsplit("/", 1)[1]
    with pytest.raises(ValueError, match=rf"at position ({listed}|{listed + 1}) of TFRecord "
                       rf"shard {re.escape(shard)}, which manifest.json lists with {listed} "
                       r"records \(2 such rows\)"):
        _image_ids(copy)


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_shard_holding_more_records_than_listed_is_an_error(built_set, tmp_path,
                                                           skip_corrupt):
    copy = _copy(built_set, tmp_path)
    shard = manifest_lib.read_manifest(copy)["shard_paths"][2]
    records = _records(shard)
    with tf.io.TFRecordWriter(shard) as writer:
        for record in records + records[:1]:
            writer.write(record)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"TFRecord shard {shard} holds more than the {len(records)} records that "
            "manifest.json lists")):
        _image_ids(copy, skip_corrupt=skip_corrupt)


def test_record_that_is_not_the_image_metadata_lists_is_an_error(built_set, tmp_path):
    """Two records of a shard swapped: the shards and metadata.csv disagree."""
    copy = _copy(built_set, tmp_path)
    shard = manifest_lib.read_manifest(copy)["shard_paths"][1]
    records = _records(shard)
    records[0], records[1] = records[1], records[0]
    with tf.io.TFRecordWriter(shard) as writer:
        for record in records:
            writer.write(record)
    first, second = (tf.train.Example.FromString(r).features.feature["image_id"]
                     .bytes_list.value[0].decode() for r in records[:2])
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(
            f"record 0 of TFRecord shard {shard} is image {first}, but metadata.csv lists "
            f"{second} there: metadata.csv does not describe this set")):
        _image_ids(copy, skip_corrupt=True)


def test_manifest_listing_more_records_than_a_shard_holds(built_set, tmp_path, capfd):
    """An error naming the shard; with `skip_corrupt` a counted skip (it cannot be told from a
    truncated shard)."""
    copy = _copy(built_set, tmp_path)
    held = len(_records(manifest_lib.read_manifest(copy)["shard_paths"][1]))
    shard = _set_count(copy, 1, 3)
    message = f"TFRecord shard {shard}: read {held} of the {held + 3} records"
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        _image_ids(copy)
    assert sorted(_image_ids(copy, skip_corrupt=True)) == _all_ids(copy)
    assert re.search(re.escape(message) + r".*skipped 3 records", capfd.readouterr().err)


def test_missing_shard_is_an_error_with_skip_corrupt_too(built_set, tmp_path):
    copy = _copy(built_set, tmp_path)
    shard = manifest_lib.read_manifest(copy)["shard_paths"][0]
    (copy / shard.rsplit("/", 1)[1]).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(shard)):
        _image_ids(copy, skip_corrupt=True)


# ----------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def valid_record(built_set):
    """A record of the built set with boxes (a PNG of SIZE x SIZE)."""
    for record in _records(manifest_lib.read_manifest(built_set)["shard_paths"][0]):
        if len(tf.train.Example.FromString(record).features.feature["boxes/label"]
               .int64_list.value):
            return record
    raise AssertionError("no record with boxes in the built set")


_DECODE = functools.partial(pipeline._decode, encoding="png", stored_size=SIZE, image_size=SIZE)


def _decode_items(records, skip_corrupt, image_ids):
    """`records.decode_in_order` over records of a made-up shard FUZZ_SHARD (index = position;
    metadata.csv would list `image_ids` there)."""
    n = tf.size(records)
    items = tf.data.Dataset.from_tensor_slices({
        "path": tf.fill([n], FUZZ_SHARD), "index": tf.range(tf.cast(n, tf.int64)),
        "record": records, "missing": tf.zeros([n], tf.int64), "image_id": image_ids})
    return records_lib.decode_in_order(items, _DECODE, skip_corrupt=skip_corrupt,
                                       num_parallel_calls=2)


@pytest.fixture(scope="module")
def decode_record(valid_record):
    """The pipeline's path for one record of a PNG set (`records.decode_in_order` around
    `pipeline._decode`: parse, decode, resize, checks) as a function of the record."""
    image_id = tf.train.Example.FromString(valid_record).features.feature["image_id"]
    image_id = image_id.bytes_list.value[0]
    return tf.function(lambda record: _decode_items(record[None], False,
                                                    tf.constant([image_id])).get_single_element())


def _assert_decodes_or_fails_naming_the_record(decode_record, record):
    """A record gives an element of the schema's shapes, or an InvalidArgumentError naming it
    (never another exception, a crash or a hang)."""
    try:
        element = decode_record(tf.constant(record))
    except tf.errors.InvalidArgumentError as e:
        assert re.search(rf"record 0 (\(image .*\) )?of TFRecord shard {FUZZ_SHARD}", e.message)
        return
    assert element["image"].shape == (SIZE, SIZE, 1)
    assert element["labels"].shape == (labels_lib.NUM_CLASSES,)
    num_boxes = element["boxes"].shape[0]
    assert element["boxes"].shape == (num_boxes, 4)
    assert element["box_labels"].shape == (num_boxes,)
    assert element["image_id"].shape == ()
    assert int(element["skipped_records"]) == 0


@pytest.mark.parametrize("bad", [[1], [0, 1], [15, 16, 17], [3, 20], [39]])
def test_records_that_do_not_decode_are_named_and_counted_in_order(valid_record, bad):
    """Of 40 records, those in `bad` are not records: the others arrive in order; each skip is
    counted on the next example (one at the very end: counted in the WARNING only); without
    `skip_corrupt`, the last record of the first run of bad ones is named, with the run's
    length."""
    proto = tf.train.Example.FromString(valid_record)
    stream = []
    for i in range(40):
        proto.features.feature["image_id"].bytes_list.value[0] = f"img{i}".encode()
        stream.append(b"not a record" if i in bad else proto.SerializeToString())
    ids = tf.constant([f"img{i}" for i in range(40)])
    elements = list(_decode_items(tf.constant(stream), True, ids).as_numpy_iterator())
    kept = [i for i in range(40) if i not in bad]
    assert [e["image_id"].decode() for e in elements] == [f"img{i}" for i in kept]
    expected = []
    for previous, i in zip([-1] + kept[:-1], kept):
        expected.append(sum(1 for b in bad if previous < b < i))
    assert [int(e["skipped_records"]) for e in elements] == expected
    run_end = bad[0]
    while run_end + 1 in bad:
        run_end += 1
    message = f"record {run_end} (image ?) of TFRecord shard {FUZZ_SHARD}: its image does not"
    if run_end > bad[0]:
        message += (f" decode or its fields do not fit TFRecord schema version "
                    f"{example.SCHEMA_VERSION} (and the {run_end - bad[0]} records read just "
                    "before it")
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        list(_decode_items(tf.constant(stream), False, ids))


@FUZZ
@given(record=st.binary(max_size=2000))
def test_fuzz_random_bytes(decode_record, record):
    _assert_decodes_or_fails_naming_the_record(decode_record, record)


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_bytes_of_a_valid_record(decode_record, valid_record, data):
    """Byte flips, insertions, deletions and truncation anywhere in a valid record."""
    record = bytearray(valid_record)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(record) - 1))
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip":
            record[at] ^= data.draw(st.integers(1, 255))
        elif kind == "insert":
            record[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del record[at:at + data.draw(st.integers(1, 8))]
        else:
            del record[at:]
        if not record:
            break
    _assert_decodes_or_fails_naming_the_record(decode_record, bytes(record))


_VALUES = st.one_of(
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=20).map(
        lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))),
    st.lists(st.floats(width=32), max_size=20).map(
        lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))),
    st.lists(st.binary(max_size=40), max_size=3).map(
        lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))))


@FUZZ
@given(data=st.data())
def test_fuzz_fields_of_a_valid_record(decode_record, valid_record, data):
    """Fields of a valid record deleted or replaced by lists of any type and length."""
    proto = tf.train.Example.FromString(valid_record)
    features = proto.features.feature
    for key in data.draw(st.lists(st.sampled_from(sorted(features)), min_size=1, max_size=4,
                                  unique=True)):
        if data.draw(st.booleans()):
            del features[key]
        else:
            features[key].CopyFrom(data.draw(_VALUES))
    _assert_decodes_or_fails_naming_the_record(decode_record, proto.SerializeToString())
