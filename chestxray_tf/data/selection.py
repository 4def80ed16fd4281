"""The papers' split protocols in one place, and a config's view of the input pipeline.

`PROTOCOLS` maps a protocol name to the function that splits a built set's metadata (no shard
is read); `select(data_config)` gives the train / val / test ids of the config's protocol,
`dataset(data_config, ids, ...)` the `tf.data` pipeline (`chestxray_tf.data.pipeline`) with the
config's settings. Training, evaluation and the study all select through here.
"""

import dataclasses

from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import nih
from chestxray_tf.data import pipeline


@dataclasses.dataclass(frozen=True)
class Split:
    """Sorted image ids of the three parts of a protocol's split."""
    train: list
    val: list
    test: list


def _li2018(meta, folds, manifest_path, *, test_fold=0, annotated_fraction=0.8,
            unannotated_fraction=0.5, seed=0):
    """Li et al. (SPEC §1): `nih.li2018_split`; test = fold `test_fold`. The paper has no
    validation set; the images that the fractions leave out of training serve as one (empty at
    80% + 100%)."""
    train, test = nih.li2018_split(meta, folds, test_fold, annotated_fraction,
                                   unannotated_fraction, seed=seed)
    rest = set(meta.images["image_id"]) - set(train) - set(test)
    return Split(train, sorted(rest), test)


def _official(meta, folds, manifest_path, *, val_fraction=0.1, seed=0):
    """NIH's train_val / test lists, val carved from train_val by patient."""
    split = meta.images["split"]
    if (split == example.SPLIT_UNKNOWN).any():
        raise ValueError(f"{manifest_lib.manifest_file(manifest_path)}: the set was built "
                         "without train_val_list.txt / test_list.txt, so it has no official "
                         "split")
    ids = meta.images["image_id"]
    return Split(*nih.official_split(meta, list(ids[split == "train_val"]),
                                     list(ids[split == "test"]), val_fraction=val_fraction,
                                     seed=seed))


def _sedai2018(meta, folds, manifest_path, *, seed=0):
    """Sedai et al.: patient-wise 70/10/20 with every boxed image in test."""
    return Split(*nih.sedai2018_split(meta, seed=seed))


PROTOCOLS = {"li2018": _li2018, "official": _official, "sedai2018": _sedai2018}


def _protocol_kwargs(data_config, protocol):
    if protocol == "li2018":
        return {"test_fold": data_config.test_fold,
                "annotated_fraction": data_config.annotated_fraction,
                "unannotated_fraction": data_config.unannotated_fraction,
                "seed": data_config.split_seed}
    if protocol == "official":
        return {"val_fraction": data_config.val_fraction, "seed": data_config.split_seed}
    return {"seed": data_config.split_seed}


def select_ids(manifest_path, protocol, **kwargs):
    """The `Split` of protocol `protocol` (a key of `PROTOCOLS`, with its keyword arguments)
    of the built set at `manifest_path` (its folder or manifest.json)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    meta, folds = manifest_lib.nih_tables(manifest_path)
    return PROTOCOLS[protocol](meta, folds, manifest_path, **kwargs)


def select(data_config, protocol=None):
    """The train / val / test ids of `data_config.protocol` (or `protocol`)."""
    protocol = protocol or data_config.protocol
    if not data_config.manifest:
        raise ValueError("config.data.manifest is empty: pass "
                         "--config.data.manifest=R/manifest.json (a set built by "
                         "tfrecords_tools.build_nih)")
    return select_ids(data_config.manifest, protocol, **_protocol_kwargs(data_config, protocol))


def dataset(data_config, image_ids, *, training, batch_size, seed=0, input_context=None,
            skip_batches=0, ship_grey=False, **targets):
    """`pipeline.make_dataset` with the settings of `data_config`; `targets` are a task's
    (`Task.targets()`, e.g. grid=P for the box masks).

    Training datasets repeat forever in an order fixed by `seed`; `skip_batches` drops the
    first batches of that order before they are decoded (resuming mid-epoch). `ship_grey`
    ships grey pixels for the consumer to normalise (`pipeline.make_dataset`).
    """
    return pipeline.make_dataset(
        data_config.manifest, image_ids, image_size=data_config.image_size,
        batch_size=batch_size, training=training,
        normalization=data_config.normalization, max_boxes=data_config.max_boxes,
        augment=data_config.augment or None, seed=seed,
        shuffle_buffer=data_config.shuffle_buffer,
        num_parallel_calls=data_config.num_parallel_calls,
        interleave_cycle=data_config.cycle_length, input_context=input_context,
        skip_corrupt=data_config.skip_corrupt, repeat=training, skip_batches=skip_batches,
        ship_grey=ship_grey, **targets)
