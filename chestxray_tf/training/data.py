"""The config's view of the input pipeline: which images train, validate and test, and their
`tf.data` datasets (`chestxray_tf.data.pipeline` with `config.data`'s settings)."""

import dataclasses

from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import pipeline


@dataclasses.dataclass(frozen=True)
class Split:
    """Sorted image ids of the three parts of a protocol's split."""
    train: list
    val: list
    test: list


def select(data_config, protocol=None):
    """The train / val / test ids of `data_config.protocol` (or `protocol`).

    * li2018 (SPEC §1): `nih.li2018_split` of the set's folds; test = fold `test_fold`. The
      paper has no validation set; the images of the other folds that the annotated /
      unannotated fractions leave out of training serve as one (empty at 80% + 100%).
    * official: NIH's lists, val carved from train_val by patient (`val_fraction`).
    * sedai2018: patient-wise 70/10/20 with every boxed image in test.
    """
    protocol = protocol or data_config.protocol
    manifest = data_config.manifest
    if not manifest:
        raise ValueError("config.data.manifest is empty: pass "
                         "--config.data.manifest=R/manifest.json (a set built by "
                         "tfrecords_tools.build_nih)")
    if protocol == "li2018":
        ids = pipeline.select_ids(
            manifest, "li2018", test_fold=data_config.test_fold,
            annotated_fraction=data_config.annotated_fraction,
            unannotated_fraction=data_config.unannotated_fraction, seed=data_config.split_seed)
        train, test = set(ids["train"]), set(ids["test"])
        rest = set(manifest_lib.read_metadata(manifest)["image_id"]) - train - test
        return Split(sorted(train), sorted(rest), sorted(test))
    if protocol == "official":
        ids = pipeline.select_ids(manifest, "official", val_fraction=data_config.val_fraction,
                                  seed=data_config.split_seed)
    elif protocol == "sedai2018":
        ids = pipeline.select_ids(manifest, "sedai2018", seed=data_config.split_seed)
    else:
        raise ValueError(f"protocol {protocol!r} is not one of {pipeline.PROTOCOLS}")
    return Split(ids["train"], ids["val"], ids["test"])


def dataset(data_config, image_ids, *, training, batch_size, grid=None, seed=0,
            input_context=None, skip_batches=0):
    """`pipeline.make_dataset` with the settings of `data_config`.

    Training datasets repeat forever in an order fixed by `seed`; `skip_batches` drops the
    first batches of that order before they are decoded (resuming mid-epoch).
    """
    return pipeline.make_dataset(
        data_config.manifest, image_ids, image_size=data_config.image_size,
        batch_size=batch_size, training=training, grid=grid,
        normalization=data_config.normalization, max_boxes=data_config.max_boxes,
        augment=data_config.augment or None, seed=seed,
        shuffle_buffer=data_config.shuffle_buffer,
        num_parallel_calls=data_config.num_parallel_calls,
        interleave_cycle=data_config.cycle_length, input_context=input_context,
        skip_corrupt=data_config.skip_corrupt, repeat=training, skip_batches=skip_batches)
