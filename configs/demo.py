"""The demo: Li et al. 2018 with a tiny ResNet-v2 on small synthetic images (minutes on a CPU).

Same model, loss, protocol and evaluation as `li2018_table2.py`; only the sizes shrink: 128 px
images, a 4-stage ResNet-v2 of width 8-64, P = 8, no ImageNet weights (nothing is downloaded).
"""

from chestxray_tf.training import defaults


def get_config():
    config = defaults.base_config()
    config.name = "demo"
    config.model.backbone = "resnet_v2_tiny"
    config.model.weights = None
    config.model.grid = 8
    config.model.head_width = 64
    config.data.image_size = 128
    config.data.annotated_fraction = 0.8
    config.data.unannotated_fraction = 0.5
    config.data.shuffle_buffer = 256
    config.train.batch_size = 16
    config.train.num_steps = 2000
    config.train.lr_decay_epochs = 0            # constant lr over so few steps
    config.train.checkpoint_every_steps = 250
    config.train.eval_every_steps = 500
    config.train.log_every_steps = 20
    config.train.num_val_images = 128
    config.eval.batch_size = 32
    return config
