"""The validation experiments (benchmarks/validation.py, docs/validation.md) on synthetic data.

`--config=configs/validation.py:VARIANT`, VARIANT one of `VARIANTS`:
* li2018: the demo's tiny Li et al. 2018 model (128 px, P = 8, smoothing 0.98);
* li2018_p20: the same at P = 20 (Sec. 3.4's faithful smoothing);
* li2018_p20_unsmoothed: P = 20 without the [0.98, 1] mapping (smoothing None);
* baseline: the "reference" of Li et al. Table 1, same backbone + global average pooling +
  dense sigmoid, plain binary cross-entropy (registered as "baseline").
The fractions, seeds and number of steps are set by the script's `--config.*` flags.
"""

from chestxray_tf.training import defaults

VARIANTS = ("li2018", "li2018_p20", "li2018_p20_unsmoothed", "baseline")


def get_config(variant="li2018"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown validation variant {variant!r}; expected one of "
                         f"{', '.join(VARIANTS)}")
    config = defaults.base_config()
    config.name = f"validation_{variant}"
    config.model.backbone = "resnet_v2_tiny"
    config.model.weights = None
    config.model.grid = 20 if variant.startswith("li2018_p20") else 8
    config.model.head_width = 64
    if variant == "li2018_p20_unsmoothed":
        config.model.smoothing = None
    if variant == "baseline":
        config.model.name = "baseline"
    config.data.image_size = 128
    config.data.annotated_fraction = 0.8
    config.data.unannotated_fraction = 0.8
    config.data.shuffle_buffer = 256
    config.data.num_parallel_calls = 2
    config.data.cycle_length = 2
    config.train.batch_size = 16
    config.train.num_steps = 900
    config.train.lr_decay_epochs = 0            # constant lr over so few steps
    config.train.checkpoint_every_steps = 500
    config.train.eval_every_steps = 0
    config.train.log_every_steps = 50
    config.train.num_val_images = 128
    config.train.num_summary_images = 2
    config.train.progress_bar = False
    config.eval.batch_size = 32
    config.eval.gallery_images = 4
    return config
