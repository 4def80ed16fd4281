"""Train a model: `python -m chestxray_tf.cli.train --config=configs/li2018_table2.py
--workdir=W --config.data.manifest=R/manifest.json --config.data.test_fold=0`.

Every config field can be set by a flag (`--config.train.batch_size=10`). Re-running the same
command resumes from the last checkpoint in `--workdir`.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from chestxray_tf import cli, workdir as workdir_lib
from chestxray_tf.training import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path of a config file in configs/.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_tensorflow()
    logging.info("config:\n%s", _CONFIG.value)
    try:
        trainer.train(_CONFIG.value, _WORKDIR.value)
    except trainer.Interrupted as e:
        print(f"training {e}", file=sys.stderr)
        return 128 + e.signum
    except (workdir_lib.WorkdirLocked, ValueError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    app.run(main)
