"""Li et al. 2018, Table 1: classification AUC, 70% annotated + 70% unannotated (SPEC §1).

`--config=configs/li2018_table1.py:grid=12` picks another patch grid P (12, 16 or 20); `:tiny`
is the smoke mode (alone or with others, e.g. `:tiny,grid=12`).
"""

from chestxray_tf.training import defaults


def get_config(arg=None):
    args = defaults.parse_arg(arg, grid=int)
    config = defaults.base_config("li2018")
    config.name = "li2018_table1"
    config.data.annotated_fraction = 0.7
    config.data.unannotated_fraction = 0.7
    config.eval.experiment = "A"
    config.model.grid = args.get("grid", 16)
    return defaults.smoke(config) if args["tiny"] else config
