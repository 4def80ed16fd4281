"""Learning-rate rules of the stages (`config.train` / `config.stages.<name>`).

* "step": lr x `lr_decay_factor` every `lr_decay_epochs` epochs (Li et al.: x0.1 every 10
  epochs), staircase or continuous (`lr_staircase`); constant when `lr_decay_epochs` is 0;
  with `lr_decay_min_fraction` > 0 the decay period is at least that fraction of the stage's
  `num_steps` (a schedule sized to the stage: Rozenberg et al.'s "exponentially-decaying"
  lr over short stages).
* "plateau": `Plateau`, lr x `plateau_factor` when the validation loss has not fallen below the
  best by `plateau_min_delta` for `plateau_patience` validations (CheXNet's recipe, which
  Sedai et al. follow), and a stop rule: the stage ends when a plateau is hit at
  lr <= `plateau_min_lr`.
"""

import dataclasses
import math

import keras

LR_SCHEDULES = ("step", "plateau")
FLOAT32_TOLERANCE = 1e-5


def learning_rate_schedule(train_config, steps_per_epoch):
    """The optimizer's learning rate: a float (constant, or driven by `Plateau`) or a Keras
    schedule of the step."""
    if train_config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got "
                         f"{train_config.lr_schedule!r}")
    if train_config.lr_schedule == "plateau" or not train_config.lr_decay_epochs:
        return train_config.learning_rate
    return keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=train_config.learning_rate,
        decay_steps=max(int(train_config.lr_decay_epochs * steps_per_epoch),
                        int(train_config.get("lr_decay_min_fraction", 0.0)
                            * train_config.num_steps), 1),
        decay_rate=train_config.lr_decay_factor,
        staircase=train_config.lr_staircase)


@dataclasses.dataclass(frozen=True)
class PlateauState:
    """best: the lowest validation loss so far; wait: validations since it improved."""
    learning_rate: float
    best: float = math.inf
    wait: int = 0
    stop: bool = False


@dataclasses.dataclass(frozen=True)
class Plateau:
    """Reduce-on-plateau with a stop rule (see the module docstring).

    `update(state, value)` after each validation: an improvement is value < best - min_delta
    (best and wait reset); otherwise wait + 1, and when wait reaches `patience` the lr is
    multiplied by `factor` (wait reset), unless it is already <= `min_lr`: then `stop`.
    Patience 1 reduces after the first validation that does not improve (Keras'
    ReduceLROnPlateau(patience=1) = PyTorch's patience=0).
    """
    patience: int = 1
    factor: float = 0.1
    min_delta: float = 1e-4
    min_lr: float = 0.0

    def __post_init__(self):
        if self.patience < 1 or not 0.0 < self.factor < 1.0 or self.min_delta < 0:
            raise ValueError(f"plateau needs patience >= 1, 0 < factor < 1, min_delta >= 0; "
                             f"got {self}")

    @classmethod
    def from_config(cls, train_config):
        return cls(patience=train_config.plateau_patience, factor=train_config.plateau_factor,
                   min_delta=train_config.plateau_min_delta, min_lr=train_config.plateau_min_lr)

    def update(self, state, value):
        if not math.isfinite(value):
            raise ValueError(f"plateau schedule got a non-finite validation loss {value}")
        if value < state.best - self.min_delta:
            return dataclasses.replace(state, best=value, wait=0)
        wait = state.wait + 1
        if wait < self.patience:
            return dataclasses.replace(state, wait=wait)
        # Relative tolerance of float32: the optimizer holds the lr in a float32 variable
        # (1e-3 x 0.1^3 reads back as 1.0000001e-6, which must still hit min_lr = 1e-6).
        if state.learning_rate <= self.min_lr * (1 + FLOAT32_TOLERANCE):
            return dataclasses.replace(state, wait=0, stop=True)
        return dataclasses.replace(state, wait=0, learning_rate=state.learning_rate * self.factor)
