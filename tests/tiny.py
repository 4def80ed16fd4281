"""The tiny Li et al. config of the training, evaluation and export tests: the smoke mode of
`configs/li2018.py` (`:tiny`) on a given set."""

from chestxray_tf.training import defaults


def tiny_config(manifest, task="li2018", **train):
    """`configs/li2018.py:tiny` (or another task's smoke mode) on `manifest`: 64 px, global
    batch 4, 10 steps, default strategy; `train` overrides config.train fields."""
    config = defaults.smoke(defaults.base_config(task))
    config.name = "tiny"
    config.data.update(manifest=str(manifest), annotated_fraction=0.8, unannotated_fraction=0.4)
    config.train.update(strategy="default")
    config.train.update(**train)
    return config
