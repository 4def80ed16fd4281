"""The comparison study (`python -m chestxray_tf.cli.study`): every task from its own paper
config on Li et al.'s split (fold 0, 80% annotated + 50% unannotated), the limited-supervision
sweeps of Figs. 5 and 6 for the tasks that train on boxes, one evaluation protocol for all.

Arguments (`--config=configs/study.py:ARG`): `tiny` (every paper config's smoke mode, two
sweep points each side, 3 steps per stage: tests and `make study-demo`).
"""

from chestxray_tf.study import config as study_config
from chestxray_tf.training import defaults


def get_config(arg=None):
    args = defaults.parse_arg(arg)
    config = study_config.study_config()
    if args["tiny"]:
        config.name = "study_tiny"
        config.study.update(config_arg="tiny", max_steps=3, annotated_sweep=(0.0, 0.8),
                            unannotated_sweep=(0.0, 0.5))
    return config
