"""Optimiser and learning-rate schedule from `config.train` (SPEC §1-§5)."""

import keras

OPTIMIZERS = ("adam", "adamw", "sgd")


def learning_rate_schedule(train_config, steps_per_epoch):
    """Step decay: lr x `lr_decay_factor` every `lr_decay_epochs` epochs (Li et al.: x0.1 every
    10 epochs), or a constant lr when `lr_decay_epochs` is 0. Epochs count `steps_per_epoch`."""
    if not train_config.lr_decay_epochs:
        return train_config.learning_rate
    return keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=train_config.learning_rate,
        decay_steps=int(train_config.lr_decay_epochs * steps_per_epoch),
        decay_rate=train_config.lr_decay_factor,
        staircase=True)


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
