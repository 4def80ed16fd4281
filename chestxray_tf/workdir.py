"""A training run's folder, read by training, evaluation, export and predict alike.

Layout (`--workdir` W):

    W/config.json                     the resolved config (written by the trainer)
    W/stages/<i>_<name>/checkpoints/  the stage's checkpoints (ckpt-<step>); best/ holds the
                                      stage's best checkpoint and best.json
    W/stages/<i>_<name>/logs/         the stage's TensorBoard events
    W/stages/<i>_<name>/done.json     written when the stage finished (it is then skipped)
    W/eval/...                        reports (`chestxray_tf.evaluation`)

`resolve(W, "latest")` is the newest checkpoint of the last stage that has one (the task's
final weights once every stage is done); "best" is the best checkpoint of that stage.
"""

import json
import os
import re

from absl import logging
import ml_collections
import tensorflow as tf

from chestxray_tf import fileio, tasks as tasks_lib

STAGES_DIR = "stages"
CHECKPOINTS = "checkpoints"
BEST = "best"
BEST_FILE = "best.json"
DONE_FILE = "done.json"
_STAGE_FOLDER = re.compile(r"^(\d+)_(.+)$")


def stage_dir(workdir, index, name):
    """W/stages/<index>_<name>."""
    return os.path.join(workdir, STAGES_DIR, f"{index}_{name}")


def stage_dirs(workdir):
    """The stage folders of `workdir` in stage order."""
    root = os.path.join(workdir, STAGES_DIR)
    if not tf.io.gfile.isdir(root):
        return []
    found = []
    for name in tf.io.gfile.listdir(root):
        match = _STAGE_FOLDER.match(name.rstrip("/"))
        if match:
            found.append((int(match.group(1)), os.path.join(root, name.rstrip("/"))))
    return [path for _, path in sorted(found)]


def load_config(workdir):
    """The resolved config a run saved as WORKDIR/config.json."""
    path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a training run?")
    with tf.io.gfile.GFile(path) as f:
        try:
            return ml_collections.ConfigDict(json.load(f))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): the file is damaged") from e


def latest_checkpoint(folder):
    """The checkpoint to resume from in `folder`, or None when it holds none.

    Raises:
        FileNotFoundError: `folder`/checkpoint names a checkpoint whose files are missing
            (TensorFlow would only log it, and the run would start again from step 0).
    """
    path = tf.train.latest_checkpoint(folder)
    state = os.path.join(folder, "checkpoint")
    if path is None and tf.io.gfile.exists(state):
        named = tf.train.get_checkpoint_state(folder).model_checkpoint_path
        raise FileNotFoundError(
            f"{state} names the checkpoint {named}, whose files are missing: restore them, "
            "point model_checkpoint_path in that file at a whole checkpoint of the folder, or "
            "remove the folder to start again from step 0")
    return path


def read_json(path):
    """A JSON file the project wrote; a damaged one is an error naming it."""
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the file is damaged; remove it "
                         "(it is rewritten by the next run)") from e


def final_stage_dir(workdir):
    """The last stage folder holding a checkpoint, or None."""
    for folder in reversed(stage_dirs(workdir)):
        if latest_checkpoint(os.path.join(folder, CHECKPOINTS)):
            return folder
    return None


def resolve(workdir, which="latest"):
    """Checkpoint prefix for `which` = 'latest', 'best' or a checkpoint path.

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: a checkpoint path outside the workdir's stages (another run's).
    """
    if which not in ("latest", "best"):
        if not tf.io.gfile.glob(which + ".index"):
            raise FileNotFoundError(f"checkpoint {which} not found (expected {which}.index and "
                                    "its data files)")
        if "://" not in which and not os.path.realpath(which).startswith(
                os.path.realpath(os.path.join(workdir, STAGES_DIR)) + os.sep):
            raise ValueError(f"checkpoint {which} is not one of {workdir}'s stages: it belongs "
                             "to another run (its config and split are not this workdir's); "
                             "pass that run's --workdir")
        return which
    folder = final_stage_dir(workdir)
    if folder is None:
        if tf.io.gfile.isdir(os.path.join(workdir, CHECKPOINTS)):
            raise FileNotFoundError(
                f"{workdir} has checkpoints/ but no stages/: it was trained by an older "
                "version of chestxray_tf (one folder for one stage); pass --checkpoint "
                f"{os.path.join(workdir, CHECKPOINTS)}/ckpt-N, or train it again")
        raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, STAGES_DIR)}")
    checkpoints = os.path.join(folder, CHECKPOINTS)
    if which == "latest":
        return latest_checkpoint(checkpoints)
    best = os.path.join(checkpoints, BEST, BEST_FILE)
    if not tf.io.gfile.exists(best):
        raise FileNotFoundError(f"no best checkpoint in {os.path.dirname(best)} (the stage "
                                "has no validation images, or never validated)")
    return os.path.join(os.path.dirname(best), read_json(best)["checkpoint"])


def restore_model(workdir, which="latest", config=None):
    """Builds the run's model and restores its weights.

    Returns:
        (config, model, checkpoint_path).

    Raises:
        FileNotFoundError: no such checkpoint.
        ValueError: the checkpoint cannot be read or does not fit the model.
    """
    config = config or load_config(workdir)
    path = resolve(workdir, which)
    task = tasks_lib.get_task(config.task)(config)
    model = task.build_model(pretrained=False)  # the checkpoint holds the weights
    try:
        status = tf.train.Checkpoint(model=model).restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError) as e:
        raise ValueError(f"checkpoint {path} cannot be restored into the "
                         f"{config.task} model: {e}") from e
    return config, model, path


LOCK_FILE = ".lock"


class WorkdirLocked(RuntimeError):
    """Another live process trains in the workdir."""


class lock:  # pylint: disable=invalid-name  (used as a context manager: `with lock(W):`)
    """An exclusive lock on a local workdir for one training process: WORKDIR/.lock holds the
    owner's host and pid, created with O_EXCL; released on exit. A lock whose process is gone
    (same host) is stale: taken over, with a warning. Remote workdirs (gs://) are not locked."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.owned = False

    def __enter__(self):
        if "://" in self.path:
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"host": os.uname().nodename, "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    with open(self.path, encoding="utf-8") as f:
                        owner = json.load(f)
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == me["host"] and not fileio.process_alive(int(owner.get("pid", -1))):
                    logging.warning("removing the stale lock %s of process %s (gone)", self.path,
                                    owner.get("pid"))
                    os.remove(self.path)
                    continue
                raise WorkdirLocked(
                    f"{self.path}: process {owner.get('pid', '?')} on {owner.get('host', '?')} "
                    "trains in this workdir; wait for it, or remove the file if that process "
                    "is gone") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.owned = True
            return self
        raise WorkdirLocked(f"{self.path}: could not take the lock")

    def __exit__(self, *exc):
        if self.owned and os.path.exists(self.path):
            os.remove(self.path)
        self.owned = False
        return False
