"""Cross-validation: `python -m chestxray_tf.cli.cv --config=configs/li2018_table2.py
--workdir W [--folds 0,1,2,3,4] [--print_commands]`.

Trains and evaluates each fold in W/fold_k (finished folds are skipped, interrupted ones
resume), then writes W/cv_report.md and W/cv_report.json (mean ± std over the folds).
`--print_commands` only prints one command per fold, to run them elsewhere; `--print_config`
prints the resolved config.
"""

import sys

from absl import app, flags

from chestxray_tf import cli
from chestxray_tf import cross_validation

_CONFIG = cli.define_config()
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the folds' runs and the report.")
_FOLDS = flags.DEFINE_list("folds", ["0", "1", "2", "3", "4"], "Folds to hold out, in turn.")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one command per fold and exit.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.print_only:
        print(_CONFIG.value.to_json_best_effort(indent=2))
        return 0
    cli.quiet_tensorflow()
    folds = [int(f) for f in _FOLDS.value]
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    cross_validation.check_overrides(overrides)
    if _PRINT.value:
        print("\n".join(cross_validation.fold_commands(_CONFIG.path, overrides,
                                                       _WORKDIR.value, folds)))
        return 0
    paths = cross_validation.run(_CONFIG.value, _WORKDIR.value, folds)
    print(f"cross-validation report: {paths['markdown']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
