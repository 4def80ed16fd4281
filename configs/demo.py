"""The demo (`make demo`): Li et al. 2018's experiment (`li2018_table2.py`) at a laptop's size:
128 px images, the tiny ResNet-v2 of the smoke mode, P = 8, 2,000 steps on synthetic data, no
ImageNet weights (nothing is downloaded). `:tiny` shortens it to the smoke mode's steps."""

from chestxray_tf.training import defaults


def get_config(arg=None):
    args = defaults.parse_arg(arg)
    config = defaults.smoke(defaults.base_config("li2018"))
    config.name = "demo"
    config.data.update(annotated_fraction=0.8, unannotated_fraction=0.5)  # Table 2's data
    config.model.update(grid=8, head_width=64)
    config.data.update(image_size=128, shuffle_buffer=256, num_parallel_calls=4,
                       cycle_length=4)
    config.train.update(batch_size=16, num_steps=2000, checkpoint_every_steps=250,
                        eval_every_steps=500, log_every_steps=20, num_val_images=128,
                        num_summary_images=4, progress_bar=True)
    config.eval.update(batch_size=32, gallery_images=8)
    if args["tiny"]:
        config.train.update(num_steps=10, checkpoint_every_steps=5, eval_every_steps=5)
    return config
