"""A paper's localization protocol, read from `config.eval` (SPEC §6; the briefs' §6).

The five papers measure localization in two ways (`localization`):

* "regions" (Li et al. 2018 Sec. 4.2, Rozenberg et al. 2019): the task's region of class k
  (`Task.region_rule`) against the union of the image's true boxes of class k, IoU and IoR in
  pixels of the model's input frame.
* "boxes" (Sedai et al. 2018, Hermoza et al. 2020, Kim et al.): a box around each kept region;
  per (image, class with a true box) the best IoU of any predicted box with any true box of
  the class (`metrics.localization.best_box_iou`), optionally the false positives at each T
  (`afp`, Sedai's Table 1) and the mean best IoU (`average_iou`, Hermoza's Table 2).

A hit is overlap > T, or >= T with `inclusive` (Rozenberg, Hermoza). The map thresholds are
`threshold_selection`:

* "fixed": `region_threshold` for every class;
* "test-tuned": per class the value of `tune_grid` that maximises `tune_metric` on the boxed
  test images themselves (Hermoza's protocol; labelled "test-tuned" in every report);
* "cross-tuned": the boxed images split by patient into two halves; each half is scored with
  the thresholds tuned on the other, and the two halves pooled (an honest estimate: NIH has
  no boxed image outside its test list).

`tune_metric` "accuracy" is the mean accuracy at T(IoU) over `iou_thresholds` (one threshold
per class) or, with `tune_per_threshold`, the accuracy at each T (one threshold per class and
T: Sedai's option, brief D-13); "average_iou" the mean best-box IoU.
"""

import dataclasses

import numpy as np

LOCALIZATIONS = ("regions", "boxes")
SELECTIONS = ("fixed", "test-tuned", "cross-tuned")
TUNE_METRICS = ("accuracy", "average_iou")
# The candidate map thresholds of the tuned selections, unless the config gives its own.
DEFAULT_TUNE_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The localization protocol of an evaluation (see the module docstring)."""
    localization: str = "regions"
    iou_thresholds: tuple = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    inclusive: bool = False
    afp: bool = False
    average_iou: bool = False
    cdice: bool = False
    region_threshold: float = 0.5
    threshold_selection: str = "fixed"
    tune_grid: tuple = DEFAULT_TUNE_GRID
    tune_metric: str = "accuracy"
    tune_per_threshold: bool = False

    def __post_init__(self):
        def check(value, allowed, field):
            if value not in allowed:
                raise ValueError(f"config.eval.{field}={value!r}: expected one of "
                                 f"{', '.join(allowed)}")
        check(self.localization, LOCALIZATIONS, "localization")
        check(self.threshold_selection, SELECTIONS, "threshold_selection")
        check(self.tune_metric, TUNE_METRICS, "tune_metric")
        if self.localization == "regions" and (self.afp or self.average_iou):
            raise ValueError("config.eval.afp and average_iou need localization='boxes' "
                             "(they count predicted boxes)")
        if self.tune_metric == "average_iou" and self.localization != "boxes":
            raise ValueError("config.eval.tune_metric='average_iou' needs localization='boxes'")
        if not self.iou_thresholds:
            raise ValueError("config.eval.iou_thresholds is empty")
        grid = np.asarray(self.tune_grid, dtype=np.float64)
        if self.tuned and (grid.size == 0 or np.any((grid < 0) | (grid > 1))):
            raise ValueError(f"config.eval.tune_grid={self.tune_grid!r}: expected map "
                             "thresholds in [0, 1]")

    @property
    def tuned(self):
        return self.threshold_selection != "fixed"

    @property
    def candidates(self):
        """The map thresholds the evaluation tries."""
        return tuple(float(t) for t in self.tune_grid) if self.tuned else (
            float(self.region_threshold),)

    @property
    def evaluated(self):
        """The map thresholds whose outcomes are computed: the candidates, and the region
        threshold a tuned class falls back to where it has no pair to tune on (a patient half
        of cross-tuning without the class)."""
        fallback = float(self.region_threshold)
        return self.candidates + (() if fallback in self.candidates else (fallback,))

    @classmethod
    def from_config(cls, eval_config):
        """The protocol of `config.eval` (a run saved before a field existed gets its
        default: Li et al.'s protocol)."""
        fields = {f.name: eval_config[f.name] for f in dataclasses.fields(cls)
                  if f.name in eval_config}
        for name in ("iou_thresholds", "tune_grid"):
            if name in fields:
                fields[name] = tuple(float(t) for t in fields[name])
        return cls(**fields)
