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


def get_config(arg="li2018"):
    """`arg`: a variant, optionally with `tiny` (the smoke mode's steps), e.g. "baseline,tiny"."""
    words = [w.strip() for w in (arg or "li2018").split(",") if w.strip()]
    variants = [w for w in words if w != "tiny"] or ["li2018"]
    variant = variants[0]
    if variant not in VARIANTS or len(variants) > 1:
        raise ValueError(f"unknown validation variant {arg!r}; expected one of "
                         f"{', '.join(VARIANTS)} (and optionally tiny)")
    task = "baseline" if variant == "baseline" else "li2018"
    # The smoke mode's tiny ResNet-v2, at 128 px and 900 steps.
    config = defaults.smoke(defaults.base_config(task))
    config.name = f"validation_{variant}"
    if task == "li2018":
        config.model.grid = 20 if variant.startswith("li2018_p20") else 8
        config.model.head_width = 64
        if variant == "li2018_p20_unsmoothed":
            config.model.smoothing = None
    config.data.update(image_size=128, annotated_fraction=0.8, unannotated_fraction=0.8,
                       shuffle_buffer=256)
    config.train.update(batch_size=16, num_steps=900, checkpoint_every_steps=500,
                        log_every_steps=50, num_val_images=128)
    config.eval.update(batch_size=32, gallery_images=4)
    if "tiny" in words:
        config.train.update(num_steps=10, checkpoint_every_steps=5)
    return config
