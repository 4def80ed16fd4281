"""Li et al. 2018 with the paper's defaults: P = 16, Table 2's data (80% annotated + 50%
unannotated); `configs/li2018_table1.py` and `li2018_table2.py` are the two experiments."""

from chestxray_tf.training import defaults


def get_config():
    return defaults.base_config()
