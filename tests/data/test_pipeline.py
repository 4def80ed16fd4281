"""Tests of chestxray_tf/data/pipeline.py: synthetic folder -> build -> tf.data elements."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from chestxray_tf import geometry
from chestxray_tf import labels as labels_lib
from chestxray_tf.data import build
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import nih
from chestxray_tf.data import pipeline, selection

SIZE = 64
GRID = 8
K = labels_lib.NUM_CLASSES


@pytest.fixture(scope="module")
def nih_dir(nih_source):
    return nih_source


@pytest.fixture(scope="module")
def built(built_set):
    assert manifest_lib.read_manifest(built_set)["image_size"] == SIZE
    return built_set


def _elements(ds):
    """Unbatches a dataset of dict batches into a list of numpy dicts."""
    return [{k: v.numpy() for k, v in e.items()} for e in ds.unbatch()]


def _eval_dataset(built, **kwargs):
    args = dict(image_size=SIZE, grid=GRID, batch_size=5, training=False)
    return pipeline.make_dataset(built, **dict(args, **kwargs))


def test_round_trip_shapes_ranges_and_counts(built):
    manifest = manifest_lib.read_manifest(built)
    ds = _eval_dataset(built)
    batch = next(iter(ds))
    assert batch["image"].shape == (5, SIZE, SIZE, 3) and batch["image"].dtype == tf.float32
    assert batch["labels"].shape == (5, K) and batch["has_box"].shape == (5, K)
    assert batch["box_mask"].shape == (5, GRID, GRID, K)
    assert batch["boxes"].shape == (5, 8, 4) and batch["box_labels"].dtype == tf.int32
    assert batch["image_id"].shape == (5,)
    elements = _elements(ds)
    assert len(elements) == manifest["num_images"]
    assert len(ds) == -(-manifest["num_images"] // 5)
    assert sorted(e["image_id"].decode() for e in elements) == sorted(
        manifest_lib.read_metadata(built)["image_id"])
    images = np.stack([e["image"] for e in elements])
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.5 and images.max() > 0.5
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    labels = np.stack([e["labels"] for e in elements])
    assert labels.sum(axis=0).tolist() == [manifest["counts"]["class"][c]
                                          for c in labels_lib.CLASS_NAMES]


def test_image_is_the_stored_pixels_scaled_to_minus_one_one(built):
    records = {}
    for path in manifest_lib.read_manifest(built)["shard_paths"]:
        for f in tf.data.TFRecordDataset(path).map(example.parse):
            records[f["image_id"].numpy().decode()] = example.decode_image(f, "png").numpy()
    for e in _elements(_eval_dataset(built))[:6]:
        pixels = records[e["image_id"].decode()][..., 0].astype(np.float64)
        np.testing.assert_allclose(e["image"][..., 1], pixels / 127.5 - 1.0, atol=1e-6)


def test_box_masks_equal_geometry_box_to_patch_mask(built):
    checked = 0
    for e in _elements(_eval_dataset(built)):
        real = e["box_labels"] >= 0
        assert (e["boxes"][~real] == 0).all()
        for k in range(K):
            boxes = e["boxes"][real & (e["box_labels"] == k)]
            if len(boxes) == 0:
                assert not e["box_mask"][..., k].any() and e["has_box"][k] == 0
                continue
            expected = geometry.box_to_patch_mask(
                geometry.yxyx_to_xywh(boxes.astype(np.float64), SIZE), SIZE, GRID)
            np.testing.assert_array_equal(e["box_mask"][..., k], expected.astype(np.float32))
            assert e["has_box"][k] == 1 and e["labels"][k] == 1
            checked += 1
    assert checked >= 5


def test_infiltrate_boxes_arrive_as_infiltration(nih_dir, built):
    boxed = set()
    for line in (nih_dir / "BBox_List_2017.csv").read_text().splitlines()[1:]:
        image_id, label = line.split(",")[:2]
        if label == "Infiltrate":
            boxed.add(image_id)
    assert boxed, "the fixture must spell Infiltrate"
    infiltration = labels_lib.CLASS_NAMES.index("Infiltration")
    for e in _elements(_eval_dataset(built, image_ids=sorted(boxed))):
        assert infiltration in e["box_labels"]
        assert e["has_box"][infiltration] == 1 and e["box_mask"][..., infiltration].any()


def test_resize_to_the_model_size_is_an_area_resize(built):
    full = {e["image_id"]: e["image"] for e in _elements(_eval_dataset(built))}
    half = _elements(_eval_dataset(built, image_size=SIZE // 2, grid=4))
    for e in half[:5]:
        assert e["image"].shape == (SIZE // 2, SIZE // 2, 3)
        pixels = (full[e["image_id"]][..., 0] + 1.0) * 127.5
        reference = pixels.reshape(SIZE // 2, 2, SIZE // 2, 2).mean(axis=(1, 3)) / 127.5 - 1.0
        np.testing.assert_allclose(e["image"][..., 0], reference, atol=1e-5)


def test_imagenet_normalization(built):
    minus_one_one = _elements(_eval_dataset(built).take(1))
    imagenet = _elements(_eval_dataset(built, normalization="imagenet").take(1))
    for a, b in zip(minus_one_one, imagenet):
        grey = (a["image"][..., 0] + 1.0) / 2.0
        for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
            np.testing.assert_allclose(b["image"][..., c], (grey - mean) / std, atol=1e-5)


def test_grid_none_leaves_box_mask_out(built):
    assert "box_mask" not in _eval_dataset(built, grid=None).element_spec


def _train_ids(built, **kwargs):
    args = dict(image_size=SIZE, batch_size=4, training=True, repeat=True, seed=4,
                shuffle_buffer=16)
    ds = pipeline.make_dataset(built, **dict(args, **kwargs))
    return [b["image_id"].numpy().tolist() for b in ds.take(12)]


def test_training_order_is_fixed_by_the_seed(built):
    assert _train_ids(built) == _train_ids(built)
    assert _train_ids(built) != _train_ids(built, seed=5)


def test_skip_batches_resumes_the_same_order(built):
    full = _train_ids(built)
    assert _train_ids(built, skip_batches=5)[:7] == full[5:]


def test_augmentation_is_fixed_by_seed_and_batch_index(built):
    def images(**kwargs):
        ds = pipeline.make_dataset(built, image_size=SIZE, batch_size=4, training=True,
                                   repeat=True, seed=2, augment="hermoza", **kwargs)
        return [b["image"].numpy() for b in ds.take(4)]

    first = images()
    np.testing.assert_array_equal(first[3], images()[3])
    np.testing.assert_array_equal(first[3], images(skip_batches=3)[0])


def test_preprocess_image_matches_the_pipeline(built):
    manifest = manifest_lib.read_manifest(built)
    record = next(iter(tf.data.TFRecordDataset(manifest["shard_paths"][0]).map(example.parse)))
    grey = example.decode_image(record, manifest["encoding"])
    for size in (SIZE, SIZE // 2):
        [element] = [e for e in _elements(_eval_dataset(built, image_size=size, grid=None))
                     if e["image_id"] == record["image_id"].numpy()]
        np.testing.assert_allclose(pipeline.preprocess_image(grey, size).numpy(),
                                   element["image"], atol=1e-6)
    upsampled = pipeline.preprocess_image(grey, 2 * SIZE, "imagenet")
    assert upsampled.shape == (2 * SIZE, 2 * SIZE, 3)
    dynamic = tf.function(lambda g: pipeline.preprocess_image(g, SIZE // 2),
                          input_signature=[tf.TensorSpec([None, None, 1], tf.uint8)])
    np.testing.assert_allclose(dynamic(grey).numpy(),
                               pipeline.preprocess_image(grey, SIZE // 2).numpy(), atol=1e-6)


def test_eval_order_is_deterministic_and_training_shuffles(built):
    first = [e["image_id"] for e in _elements(_eval_dataset(built))]
    assert first == [e["image_id"] for e in _elements(_eval_dataset(built))]
    train = pipeline.make_dataset(built, image_size=SIZE, grid=GRID, batch_size=4, training=True,
                                  seed=1)
    epoch = [e["image_id"] for e in _elements(train)]
    assert len(epoch) == len(first) // 4 * 4  # drop_remainder in training
    assert len(set(epoch)) == len(epoch) and set(epoch) <= set(first)
    assert epoch != first[:len(epoch)]


def test_selection_via_li2018_split(nih_dir, built):
    chosen = selection.select_ids(built, "li2018", test_fold=1, annotated_fraction=0.6,
                                  unannotated_fraction=0.4, seed=2)
    meta = nih.load_metadata(nih_dir / "Data_Entry_2017_v2020.csv", nih_dir / "BBox_List_2017.csv")
    folds = nih.assign_folds(meta, num_folds=5, seed=0)
    train, test = nih.li2018_split(meta, folds, 1, 0.6, 0.4, seed=2)
    assert (chosen.train, chosen.test) == (train, test)
    has_box = meta.images.set_index("image_id")["has_box"]
    annotated, total = int(has_box.sum()), len(has_box)
    assert int(has_box[train].sum()) == round(0.6 * annotated)
    assert int((~has_box[train]).sum()) == round(0.4 * (total - annotated))
    got = {e["image_id"].decode() for e in _elements(_eval_dataset(built, image_ids=train))}
    assert got == set(train)
    assert len(_eval_dataset(built, image_ids=train)) == -(-len(train) // 5)


def test_official_and_sedai2018_selections_partition_the_set(built):
    all_ids = set(manifest_lib.read_metadata(built)["image_id"])
    for protocol in ("official", "sedai2018"):
        parts = selection.select_ids(built, protocol, seed=0)
        values = (parts.train, parts.val, parts.test)
        assert set().union(*values) == all_ids
        assert sum(len(v) for v in values) == len(all_ids)
    official = selection.select_ids(built, "official", val_fraction=0.2, seed=0)
    table = manifest_lib.read_metadata(built).set_index("image_id")
    assert (table.loc[official.test, "split"] == "test").all()
    with pytest.raises(ValueError, match="protocol"):
        selection.select_ids(built, "kim")


def test_unknown_image_id_is_an_error(built):
    with pytest.raises(ValueError, match=r"1 of the 2 selected images are not in .*99999999_000"):
        _eval_dataset(built, image_ids=["99999999_000.png",
                                        manifest_lib.read_metadata(built)["image_id"][0]])


def test_truncated_shard_error_names_the_shard(built, tmp_path):
    copy = shutil.copytree(built, tmp_path / "set")
    shard = manifest_lib.read_manifest(copy)["shard_paths"][2]
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) - 300])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"truncated TFRecord shard {shard}"):
        _elements(_eval_dataset(copy))


def test_corrupt_record_error_names_the_shard(built, tmp_path):
    copy = shutil.copytree(built, tmp_path / "set")
    shard = manifest_lib.read_manifest(copy)["shard_paths"][1]
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(shard, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"corrupt or truncated.*{shard}"):
        _elements(pipeline.make_dataset(copy, image_size=SIZE, batch_size=2, training=True))


def test_skip_corrupt_reads_what_is_left_and_logs_the_skip(built, tmp_path, capfd):
    copy = shutil.copytree(built, tmp_path / "set")
    manifest = manifest_lib.read_manifest(copy)
    shard = manifest["shard_paths"][0]
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) - 300])
    elements = _elements(_eval_dataset(copy, skip_corrupt=True))
    assert len(elements) == manifest["num_images"] - 1
    assert f"truncated TFRecord shard {shard}" in capfd.readouterr().err


def test_missing_shard_is_named(built, tmp_path):
    copy = shutil.copytree(built, tmp_path / "set")
    shard = manifest_lib.read_manifest(copy)["shard_paths"][3]
    (tmp_path / "set" / shard.rsplit("/", 1)[1]).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        _eval_dataset(copy)


def test_newer_manifest_schema_is_an_error(built, tmp_path):
    copy = shutil.copytree(built, tmp_path / "set")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["schema_version"] = example.SCHEMA_VERSION + 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="newer than"):
        _eval_dataset(copy)


def test_more_boxes_than_max_boxes_names_the_image(built):
    table = manifest_lib.read_metadata(built)
    row = table.loc[table["num_boxes"].idxmax()]
    assert row["num_boxes"] >= 2
    ds = _eval_dataset(built, image_ids=[row["image_id"]], max_boxes=row["num_boxes"] - 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"image {row['image_id']} has"):
        _elements(ds)


def test_input_contexts_split_the_shards_and_the_batch(built):
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        ds = _eval_dataset(built, batch_size=6, input_context=context)
        assert next(iter(ds))["image"].shape[0] == 3
        seen.append([e["image_id"] for e in _elements(ds)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(
        e["image_id"] for e in _elements(_eval_dataset(built)))
    with pytest.raises(ValueError, match="5 input pipelines"):
        _eval_dataset(built, input_context=tf.distribute.InputContext(5, 0, 5))


def test_works_under_distribute_datasets_from_function(built):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.make_dataset(built, image_size=SIZE, grid=GRID, batch_size=4,
                                          training=True, input_context=ctx))
    batch = next(iter(dist))
    assert batch["image"].shape == (4, SIZE, SIZE, 3)
    assert batch["box_mask"].shape == (4, GRID, GRID, K)


def test_hermoza_augmentation_keeps_targets_consistent(built):
    ds = pipeline.make_dataset(built, image_size=SIZE, grid=GRID, batch_size=8, training=True,
                               augment="hermoza", seed=3)
    plain = {e["image_id"]: e for e in _elements(_eval_dataset(built))}
    moved = 0
    for e in _elements(ds):
        assert e["image"].min() >= -1.0 and e["image"].max() <= 1.0
        real = e["box_labels"] >= 0
        assert (e["boxes"] >= 0).all() and (e["boxes"] <= 1).all()
        assert (e["boxes"][real][:, 2:] > e["boxes"][real][:, :2]).all()
        for k in range(K):
            boxes = e["boxes"][real & (e["box_labels"] == k)]
            expected = (geometry.box_to_patch_mask(geometry.yxyx_to_xywh(boxes, SIZE), SIZE, GRID)
                        if len(boxes) else np.zeros((GRID, GRID), bool))
            np.testing.assert_array_equal(e["box_mask"][..., k], expected)
            assert e["has_box"][k] == float(len(boxes) > 0)
        before = plain[e["image_id"]]
        moved += not np.allclose(before["image"], e["image"])
        np.testing.assert_array_equal(before["labels"], e["labels"])
    assert moved > 0


def test_unknown_augmentation_and_normalization_are_errors(built):
    with pytest.raises(ValueError, match="augment"):
        _eval_dataset(built, augment="mixup")
    with pytest.raises(ValueError, match="normalization"):
        _eval_dataset(built, normalization="zscore")


def test_official_selection_needs_the_official_lists(nih_dir, tmp_path):
    folder = shutil.copytree(nih_dir, tmp_path / "nih")
    (folder / "train_val_list.txt").unlink()
    (folder / "test_list.txt").unlink()
    build.build(folder, tmp_path / "set", image_size=SIZE, num_shards=1, encoding="raw",
                num_workers=1, progress=False)
    with pytest.raises(ValueError, match="no official split"):
        selection.select_ids(tmp_path / "set", "official")
    assert selection.select_ids(tmp_path / "set", "sedai2018").test


def test_repeat_reads_the_shards_endlessly(built):
    manifest = manifest_lib.read_manifest(built)
    ds = pipeline.make_dataset(built, image_size=SIZE, batch_size=4, training=True, repeat=True,
                               shuffle_buffer=8)
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY
    seen = [e["image_id"] for e in _elements(ds.take(3 * manifest["num_images"] // 4))]
    assert len(seen) > 2 * manifest["num_images"]
    assert set(seen) == set(manifest_lib.read_metadata(built)["image_id"].str.encode("utf-8"))


@pytest.mark.parametrize("normalization", pipeline.NORMALIZATIONS)
def test_grey_uint8_normalised_on_device_equals_the_float_path(built, normalization):
    """`ship_grey`: uint8 [B, S, S, 1] that `normalize` turns into the float path's images,
    at the stored size (to an ulp: XLA fuses the pipeline's scale and shift into one
    multiply-add), within half a grey level after a resize (rounded), and with an augmentation
    (shipped as float32 grey); the other keys are the same."""
    def both(**kwargs):
        args = dict(dict(image_size=SIZE, grid=GRID, batch_size=4, training=True, repeat=True,
                         seed=1, normalization=normalization), **kwargs)
        floats = next(iter(pipeline.make_dataset(built, **args)))
        grey = next(iter(pipeline.make_dataset(built, ship_grey=True, **args)))
        return floats, grey

    floats, grey = both()
    assert grey["image"].dtype == tf.uint8 and grey["image"].shape == (4, SIZE, SIZE, 1)
    np.testing.assert_allclose(pipeline.normalize(grey["image"], normalization),
                               floats["image"], rtol=0, atol=2.5e-7)
    for key in ("labels", "box_mask", "has_box", "boxes", "box_labels", "image_id"):
        np.testing.assert_array_equal(grey[key], floats[key])

    floats, grey = both(image_size=40, grid=5)  # area resize: fractional pixels
    assert grey["image"].dtype == tf.uint8
    half_level = 0.5 / (127.5 if normalization == "minus_one_one" else 255.0 * 0.224)
    error = np.abs(pipeline.normalize(grey["image"], normalization) - floats["image"])
    assert 0 < error.max() <= half_level * 1.0001

    floats, grey = both(augment="hermoza")
    assert grey["image"].dtype == tf.float32 and grey["image"].shape[-1] == 1
    np.testing.assert_allclose(pipeline.normalize(grey["image"], normalization),
                               floats["image"], atol=1e-6)
