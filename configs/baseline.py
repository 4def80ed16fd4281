"""The "reference" of Li et al. 2018 Table 1 (global average pooling + dense sigmoid + BCE on
the same ResNet-v2-50), on Table 1's data (70% annotated + 70% unannotated); its report
compares with the paper's reference rows. `:tiny` is the smoke mode."""

from chestxray_tf.training import defaults


def get_config(arg=None):
    args = defaults.parse_arg(arg)
    config = defaults.base_config("baseline")
    config.name = "baseline"
    config.data.annotated_fraction = 0.7
    config.data.unannotated_fraction = 0.7
    config.eval.experiment = "A"
    return defaults.smoke(config) if args["tiny"] else config
