"""Train a model: `python -m chestxray_tf.cli.train --config=configs/li2018_table2.py
--workdir=W --config.data.manifest=R/manifest.json --config.data.test_fold=0`.

Every config field can be set by a flag (`--config.train.batch_size=10`; a None-able field
with `--config.model.weights=None`); `--print_config` prints the resolved config and exits
(docs/configs.md lists every field). Re-running the same command resumes from the last
checkpoint in `--workdir`. Before training it prints its plan (task, strategy and devices,
images per split, stages and steps), and at the end where the checkpoints and logs are.
"""

import sys

from absl import app, flags

from chestxray_tf import cli, workdir as workdir_lib
from chestxray_tf.training import trainer

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and reports.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.print_only:
        print(_CONFIG.value.to_json_best_effort(indent=2))
        return 0
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    cli.quiet_tensorflow()
    try:
        trainer.train(_CONFIG.value, cli.local_path(_WORKDIR.value))
    except trainer.Interrupted as e:
        print(f"training {e}", file=sys.stderr)
        return 128 + e.signum
    except (workdir_lib.WorkdirLocked, trainer.TrainingDivergedError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2 if isinstance(e, workdir_lib.WorkdirLocked) else 1
    return 0


if __name__ == "__main__":
    cli.run(main)
