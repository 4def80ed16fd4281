"""The Task: what the shared stack needs to know of one paper (in the spirit of TF Model
Garden's `official/core/base_task.py`).

A Task owns its config section (`default_config()`: `model`, `loss`, `stages`), builds its
model, says which training targets the input pipeline must add, lists its training stages and
gives the ONE inference rule that evaluation, export and predict all use (`scores`, `maps`,
`region_rule`). The trainer, evaluation, export and predict never name a paper: they call a
Task.

Stages (`Stage`): a sequence run in order by the stage runner (`chestxray_tf.training.stages`)
under WORKDIR/stages/<i>_<name>/. A "gradient" stage trains the variables of the layers its
`trainable` globs select (the others are frozen: bit-identical, batch norm in inference mode)
with its own optimizer settings (`train`: `config.train` with the stage's overrides from
`config.stages.<name>`); a "compute" stage runs `compute(context)` over a data split with the
weights fixed and writes variables (checkpointed) or workdir artifacts.
"""

import dataclasses
import fnmatch
from typing import Callable, Optional

import ml_collections
import numpy as np

from chestxray_tf.labels import CLASS_NAMES

STAGE_KINDS = ("gradient", "compute")
REGION_KEEP = ("all", "largest", "each")


@dataclasses.dataclass(frozen=True)
class DataStats:
    """Counts of the training selection, for the losses that weight by them (Sedai's beta_c,
    Hermoza's beta_P / beta_N, Rozenberg's gamma).

    positives, negatives: int [K] images with / without the label of class k.
    """
    num_images: int
    num_boxed: int
    positives: np.ndarray
    negatives: np.ndarray

    @classmethod
    def from_table(cls, table):
        """From rows of metadata.csv (one 0/1 column per class, `has_box`)."""
        positives = table[list(CLASS_NAMES)].to_numpy(np.int64).sum(axis=0)
        return cls(num_images=len(table), num_boxed=int(table["has_box"].astype(bool).sum()),
                   positives=positives, negatives=len(table) - positives)

    def as_dict(self):
        return {"num_images": self.num_images, "num_boxed": self.num_boxed,
                "positives": dict(zip(CLASS_NAMES, self.positives.tolist())),
                "negatives": dict(zip(CLASS_NAMES, self.negatives.tolist()))}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a task's training (see the module docstring).

    name: the stage's name (its folder is stages/<i>_<name>).
    kind: "gradient" or "compute".
    trainable: fnmatch globs over layer names (at any depth of the model): the layers trained
        in a gradient stage; "*" trains everything.
    loss: loss_fn(batch, outputs) -> (per-example loss [B], {term: [B]}) (gradient stages).
    train: the stage's training settings (a `config.train` with its overrides).
    hooks: callables hook(model, step) run in-graph before every step of a gradient stage
        (e.g. temperature annealing from the stage's step counter).
    compute: compute stages: fn(`StageContext`) -> dict summary (written to the stage's
        done.json).
    """
    name: str
    kind: str = "gradient"
    trainable: tuple = ("*",)
    loss: Optional[Callable] = None
    train: Optional[ml_collections.ConfigDict] = None
    hooks: tuple = ()
    compute: Optional[Callable] = None

    def __post_init__(self):
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name!r}: kind must be one of {STAGE_KINDS}, "
                             f"got {self.kind!r}")
        if self.kind == "gradient" and (self.loss is None or self.train is None):
            raise ValueError(f"gradient stage {self.name!r} needs a loss and train settings")
        if self.kind == "compute" and self.compute is None:
            raise ValueError(f"compute stage {self.name!r} needs a compute function")


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a compute stage may use: the task, its model (weights restored), the run's split
    and config, the stage's folder, and `dataset(ids, training=False)` of the run's data
    settings and the task's targets."""
    task: "Task"
    model: object
    config: ml_collections.ConfigDict
    split: object
    stage_dir: str
    dataset: Callable


@dataclasses.dataclass(frozen=True)
class RegionRule:
    """How a task turns one class's map into regions (`chestxray_tf.inference`).

    threshold: map threshold T_s; cells with value > T_s (>= with `inclusive`) are in.
    keep: "all" (every passing cell, all components together as one region: Li et al.
        Sec. 3.3), "largest" (the largest 8-connected component: Hermoza et al.), "each"
        (every 8-connected component its own region, at most `max_regions` by peak value:
        Sedai et al.'s box per blob).
    """
    threshold: float
    inclusive: bool = False
    keep: str = "all"
    max_regions: int = 1

    def __post_init__(self):
        if self.keep not in REGION_KEEP:
            raise ValueError(f"region keep must be one of {REGION_KEEP}, got {self.keep!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"region threshold must be in [0, 1], got {self.threshold}")
        if self.max_regions < 1 or (self.keep != "each" and self.max_regions != 1):
            raise ValueError(f"max_regions must be 1 with keep={self.keep!r} and >= 1 with "
                             f"'each', got {self.max_regions}")

    @property
    def num_regions(self):
        return self.max_regions


def select_trainable(model, globs):
    """Freezes every layer of `model` that no glob of `globs` selects.

    A layer named by a glob (at any depth) is trainable with all its sub-layers; a container
    stays trainable only for the selected layers inside it; every other layer gets
    `trainable = False` (its variables leave `model.trainable_variables`, and a frozen batch
    norm normalises with its moving statistics, Keras' inference mode). Returns the names of
    the layers selected.

    Raises:
        ValueError: a glob selects no layer (a typo would silently freeze everything).
    """
    _unfreeze(model)
    globs = tuple(globs)
    if globs == ("*",):
        return [model.name]
    selected, used = [], set()

    def visit(layer):
        hits = [g for g in globs if fnmatch.fnmatchcase(layer.name, g)]
        if hits:
            used.update(hits)
            selected.append(layer.name)
            return True
        children = list(getattr(layer, "_layers", []))
        keep = [visit(child) for child in children]
        if not any(keep):
            layer.trainable = False
            return False
        return True

    for child in model._layers:  # pylint: disable=protected-access
        visit(child)
    unused = [g for g in globs if g not in used]
    if unused:
        raise ValueError(f"trainable globs {unused} select no layer of {model.name}")
    return selected


def _unfreeze(layer):
    """Makes `layer` and every layer inside it trainable (a Functional model's `trainable =
    True` does not reach sub-layers an earlier stage froze)."""
    layer.trainable = True
    for child in getattr(layer, "_layers", []):
        _unfreeze(child)


def stage_train_config(config, name):
    """`config.train` with the overrides of `config.stages.<name>` (fields of train only)."""
    train = ml_collections.ConfigDict(config.train.to_dict())
    overrides = config.stages.get(name, ml_collections.ConfigDict()) if "stages" in config else {}
    for key, value in overrides.items():
        if key not in train:
            raise ValueError(f"config.stages.{name}.{key} is not a field of config.train "
                             f"(fields: {', '.join(sorted(train))})")
        train[key] = value
    return train


class Task:
    """Base class; a paper subclasses it (see the module docstring).

    Class attributes:
        name: the registry key (`config.task`).
        published: the file of `chestxray_tf/evaluation/published/` the report compares with
            ("" = `name`), and `published_row`: the role of the published rows this task
            reproduces ("paper" = the paper's method, "baseline" = its reference).
        score_key, map_key: the outputs holding the image scores [B, K] and the maps
            [B, h, w, K] in [0, 1].
        uses_boxes: whether training reads boxes (a study names the boxes a method never sees).
        input_stride: the backbone's total stride; an image size that is not a multiple of it
            loses its last rows and columns (training warns). 0: no such constraint.
        jit_compile_on_gpu: whether `train.jit_compile=None` XLA-compiles the training step on
            GPUs (each task's choice and its grounds: docs/benchmarks.md, "XLA").
    """
    name = ""
    published = ""
    published_row = "paper"
    score_key = "image_probs"
    map_key = ""
    uses_boxes = False
    input_stride = 32
    jit_compile_on_gpu = False

    @classmethod
    def default_config(cls):
        """The task's own config section: `model`, `loss`, `stages` (name -> overrides of
        `config.train`)."""
        raise NotImplementedError

    @classmethod
    def smoke(cls, config):
        """Shrinks the task's own sections to test sizes in place (the `:tiny` mode)."""

    def __init__(self, config, stats=None):
        self.config = config
        self.stats = stats

    # -------------------------------------------------------------- model and data
    def build_model(self, pretrained=True):
        """The task's keras.Model (dict of outputs); `pretrained=False` skips loading
        backbone weights (a checkpoint will be restored)."""
        raise NotImplementedError

    def targets(self):
        """Keyword arguments of `data.pipeline.make_dataset` for the targets the task's losses
        read (e.g. {"grid": P} for the P x P box masks)."""
        return {}

    def stages(self):
        """The task's `Stage`s, in order."""
        raise NotImplementedError

    def gradient_stage(self, name, loss, trainable=("*",), hooks=()):
        """A gradient `Stage` with the run's train settings for it."""
        return Stage(name=name, loss=loss, trainable=tuple(trainable), hooks=tuple(hooks),
                     train=stage_train_config(self.config, name))

    # -------------------------------------------------------------- inference rule
    def scores(self, outputs):
        """Image-level probabilities [B, K] (AUC, predict's findings)."""
        return outputs[self.score_key]

    def maps(self, outputs, variant=""):
        """Localization maps [B, h, w, K] in [0, 1] of map variant `variant` ("" = the
        task's main map, the one export and predict serve)."""
        del variant
        return outputs[self.map_key]

    def map_variants(self):
        """The map variants evaluation measures, the main one first (`("",)`: one map;
        Hermoza et al.'s Sal / Det / Mix are three)."""
        return ("",)

    def region_rule(self, threshold=None):
        """The `RegionRule` of the task's maps from `config.eval` (threshold: default
        `region_threshold`; `region_inclusive`, `region_keep`, `max_regions`)."""
        e = self.config.eval
        return RegionRule(threshold=e.region_threshold if threshold is None else float(threshold),
                          inclusive=bool(e.get("region_inclusive", False)),
                          keep=e.get("region_keep", "all"),
                          max_regions=int(e.get("max_regions", 1)))

    def comparison_row(self, stage, variant=""):
        """The published row our row is compared with: a role ("paper", "baseline") or the
        "method" of a row of the paper's published file, for a checkpoint of stage `stage`
        and map variant `variant`."""
        del stage, variant
        return self.published_row

    def report_details(self, model):
        """Extra tables of the evaluation report: {title: {"columns": [str], "rows":
        [[label, value, ...]]}} (e.g. learned weights per class, the options a run used)."""
        del model
        return {}
