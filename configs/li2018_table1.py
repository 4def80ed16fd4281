"""Li et al. 2018, Table 1: classification AUC, 70% annotated + 70% unannotated (SPEC §1).

`--config=configs/li2018_table1.py:grid=12` picks another patch grid P (12, 16 or 20).
"""

from chestxray_tf.training import defaults


def get_config(arg=None):
    config = defaults.base_config()
    config.name = "li2018_table1"
    config.data.annotated_fraction = 0.7
    config.data.unannotated_fraction = 0.7
    config.eval.experiment = "A"
    config.model.grid = int(arg.split("=")[-1]) if arg else 16
    return config
