"""Optimiser from a stage's train settings (SPEC §1-§5); its schedule from `schedules`."""

import keras

from chestxray_tf.training.schedules import learning_rate_schedule

OPTIMIZERS = ("adam", "adam_l2", "adamw", "sgd")


class CoupledDecayAdam(keras.optimizers.Adam):
    """Adam with coupled weight decay: every gradient gets `+ l2_decay * w` before the Adam
    moments (PyTorch's `torch.optim.Adam(weight_decay=...)`, i.e. an L2 term
    l2_decay/2 * Σ w² over every trained variable, biases and batch norm included)."""

    def __init__(self, l2_decay, **kwargs):
        super().__init__(**kwargs)
        if not l2_decay >= 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {l2_decay!r}")
        self.l2_decay = float(l2_decay)

    def update_step(self, gradient, variable, learning_rate):
        gradient = gradient + keras.ops.cast(self.l2_decay, variable.dtype) * variable
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2_decay": self.l2_decay}


def make_optimizer(train_config, steps_per_epoch):
    """The optimiser named by `train_config.optimizer` with its schedule.

    `adam` (Li et al., Sedai et al.), `adam_l2`: Adam with coupled `weight_decay` (gradient +=
    weight_decay * w; Rozenberg et al.'s "ADAM optimizer with a weight decay regularization
    coefficient equal to 0.01" as PyTorch's Adam did it), `adamw` with decoupled
    `weight_decay` (Hermoza et al.: 1e-3), `sgd` with `momentum` (Kim et al.).
    """
    name = train_config.optimizer
    lr = learning_rate_schedule(train_config, steps_per_epoch)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "adam_l2":
        return CoupledDecayAdam(train_config.weight_decay, learning_rate=lr)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=train_config.weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=train_config.momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
