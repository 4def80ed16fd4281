"""Finding and restoring a run's checkpoints: `latest`, `best`, or a path."""

import json
import os

import ml_collections
import tensorflow as tf

from chestxray_tf.models import registry
from chestxray_tf.training import trainer


def load_config(workdir):
    """The resolved config a run saved as WORKDIR/config.json."""
    path = os.path.join(workdir, "config.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a training run?")
    with tf.io.gfile.GFile(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def resolve(workdir, which="latest"):
    """Checkpoint prefix for `which` = 'latest', 'best' or a checkpoint path.

    Raises:
        FileNotFoundError: no such checkpoint.
    """
    if which in ("latest", "best"):
        folder = os.path.join(workdir, trainer.CHECKPOINT_DIR if which == "latest"
                              else trainer.BEST_DIR)
        if which == "best":
            best = os.path.join(folder, "best.json")
            if not tf.io.gfile.exists(best):
                raise FileNotFoundError(f"no best checkpoint in {folder} (the run has no "
                                        "validation images, or never validated)")
            with tf.io.gfile.GFile(best) as f:
                return os.path.join(folder, json.load(f)["checkpoint"])
        path = trainer.latest_checkpoint(folder)
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {folder}")
        return path
    if not tf.io.gfile.glob(which + ".index"):
        raise FileNotFoundError(f"checkpoint {which} not found (expected {which}.index and "
                                "its data files)")
    return which


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
    model = registry.build_model(config, pretrained=False)  # the checkpoint holds the weights
    try:
        status = tf.train.Checkpoint(model=model).restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError) as e:
        raise ValueError(f"checkpoint {path} cannot be restored into the "
                         f"{config.model.name} model: {e}") from e
    return config, model, path
