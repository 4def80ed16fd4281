"""Optimiser from a stage's train settings (SPEC §1-§5); its schedule from `schedules`."""

import keras

from chestxray_tf.training.schedules import learning_rate_schedule

OPTIMIZERS = ("adam", "adamw", "sgd")


def make_optimizer(train_config, steps_per_epoch):
    """The optimiser named by `train_config.optimizer` with its schedule.

    `adam` (Li et al., Sedai et al.), `adamw` with decoupled `weight_decay` (Rozenberg et al.:
    Adam with weight decay 0.01; Hermoza et al.: 1e-3), `sgd` with `momentum` (Kim et al.).
    """
    name = train_config.optimizer
    lr = learning_rate_schedule(train_config, steps_per_epoch)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=train_config.weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=train_config.momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
