"""What defines a training run, so a resume never silently mixes two runs (issue 13).

`WORKDIR/run.json` records, when a run starts, every config field that changes what is trained
(the task's model, loss and stages; the data and split; the optimisation), the digest of the
built set's manifest.json and the digest of the selected image ids. A later `train` in the
same workdir must match it (`check`): each differing field is named. Fields that do not change
the run stay free: `FREE_FIELDS` (steps, logging, checkpoints' cadence, validation sampling,
strategy, XLA, the progress bar, every `eval` field, the manifest's path: its content counts).
`evaluate` checks that the set it reads is still the one the run trained on.
"""

import fnmatch
import hashlib
import json
import os

import tensorflow as tf

from chestxray_tf import fileio
from chestxray_tf.data import manifest as manifest_lib

RUN_FILE = "run.json"
FREE_FIELDS = ("name", "eval.*", "data.manifest", "data.num_parallel_calls",
               "data.cycle_length", "data.skip_corrupt", "train.num_steps",
               "train.checkpoint_every_steps", "train.keep_checkpoints",
               "train.log_every_steps", "train.eval_every_steps", "train.num_val_images",
               "train.num_summary_images", "train.progress_bar", "train.jit_compile",
               "train.steps_per_loop", "data.ship_grey",
               "train.strategy", "train.tpu_address", "stages.*.num_steps")


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _digest(data):
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest):
    """sha256 of the set's manifest.json (its shards, counts, checksums and build command)."""
    with tf.io.gfile.GFile(manifest_lib.manifest_file(manifest), "rb") as f:
        return _digest(f.read())


def identity(config, split):
    """The run-defining fields of `config` and the digests of its data."""
    fields = {k: v for k, v in _flatten(json.loads(config.to_json_best_effort())).items()
              if not any(fnmatch.fnmatchcase(k, pattern) for pattern in FREE_FIELDS)}
    ids = "\n".join(["train"] + list(split.train) + ["val"] + list(split.val) + ["test"]
                    + list(split.test))
    return {"fields": fields, "manifest_sha256": manifest_digest(config.data.manifest),
            "split_sha256": _digest(ids.encode())}


# Run-defining fields added to the schema since runs were recorded, with the value every run
# recorded before had (the behaviour before the field existed), so those runs still resume.
ADDED_FIELDS = {"train.precision": "float32"}


def differences(recorded, current):
    """Names and (recorded, current) values of every field that differs (a field of
    `ADDED_FIELDS` absent from the record counts as its value there)."""
    out = {}
    for key in sorted(set(recorded["fields"]) | set(current["fields"])):
        a = recorded["fields"].get(key, ADDED_FIELDS.get(key, "<absent>"))
        b = current["fields"].get(key, "<absent>")
        if a != b:
            out[key] = (a, b)
    for key in ("manifest_sha256", "split_sha256"):
        if recorded.get(key) != current.get(key):
            out[key] = (recorded.get(key), current.get(key))
    return out


def check(workdir, config, split):
    """Records the run's identity in WORKDIR/run.json, or checks a resume against it.

    Raises:
        ValueError: the workdir holds another run (each differing field named).
    """
    path = os.path.join(workdir, RUN_FILE)
    current = identity(config, split)
    if not tf.io.gfile.exists(path):
        fileio.atomic_write_json(path, current)
        return current
    with tf.io.gfile.GFile(path) as f:
        try:
            recorded = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): the file is damaged") from e
    diff = differences(recorded, current)
    if diff:
        lines = "; ".join(f"{k}: {a!r} in the run, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"{workdir} holds another run: {lines}. Resume with the run's own "
                         "settings, or train in a new --workdir")
    return current


def check_manifest(workdir, manifest):
    """Refuses to evaluate a run on a set rebuilt since it trained (its test images may have
    trained)."""
    path = os.path.join(workdir, RUN_FILE)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)["manifest_sha256"]
    if recorded != manifest_digest(manifest):
        raise ValueError(f"{manifest_lib.manifest_file(manifest)} changed since {workdir} "
                         "trained on it (manifest.json digest differs): the split would not be "
                         "the run's; evaluate on the set it trained on")
