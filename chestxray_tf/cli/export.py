"""Export a trained run as a SavedModel: `python -m chestxray_tf.cli.export --workdir W
--output E [--checkpoint latest|best|PATH]`."""

import os

from absl import app, flags, logging

from chestxray_tf import cli, export
from chestxray_tf import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "SavedModel folder (default: WORKDIR/export).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path.")
_THRESHOLD = flags.DEFINE_float("region_threshold", None, "Map threshold of the region_boxes "
                                "output (default: the run's config.eval.region_threshold).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_tensorflow()
    config, model, path = workdir_lib.restore_model(_WORKDIR.value, _CHECKPOINT.value)
    output = _OUTPUT.value or os.path.join(_WORKDIR.value, "export")
    export.export_saved_model(model, config, output, region_threshold=_THRESHOLD.value)
    logging.info("exported %s to %s", path, output)
    print(f"SavedModel of {path} written to {output}")
    return 0


if __name__ == "__main__":
    cli.run(main)
