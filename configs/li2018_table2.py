"""Li et al. 2018, Table 2: localization, 80% annotated + 50% unannotated images (SPEC §1).

`--config=configs/li2018_table2.py:grid=12` picks another patch grid P (12, 16 or 20).
"""

from chestxray_tf.training import defaults


def get_config(arg=None):
    config = defaults.base_config()
    config.name = "li2018_table2"
    config.data.annotated_fraction = 0.8
    config.data.unannotated_fraction = 0.5
    config.model.grid = int(arg.split("=")[-1]) if arg else 16
    return config
