"""The ONE evaluation of every method of a study, and the metric columns read from it.

Every run is evaluated under the same protocols (`protocols(study)`), whatever its paper's own
`config.eval`: the shared rule is the map of class k thresholded at `study.eval.
region_threshold` (map > T_s) or at a tuned threshold, for every threshold selection of
`study.eval.selections`:

* "regions": the thresholded cells as one region (Li et al. Sec. 3.3), its IoU and IoR with the
  union of the class's true boxes (Li et al. Sec. 4.2), and the continuous Dice of the map
  (Hermoza et al. Eq. 9);
* "boxes": a box around each 8-connected region (at most `study.eval.max_regions`, by peak), the
  best IoU of any of them with a true box (Sedai et al., Kim et al.), the average false
  positives (Sedai et al. Table 1) and the average best-box IoU (Hermoza et al. Table 2).

Each is counted with a hit at overlap > T ("strict") and at overlap >= T ("inclusive"), so
every accuracy is reported once with `>` and once with `>=`. A protocol is named
"<localization>-<strict|inclusive>-<selection>", e.g. "regions-strict-cross-tuned".

`COLUMNS` names the metric of each column of the study's tables ("iou>0.3": accuracy at
T(IoU) > 0.3 of the regions protocol) and where its value is in a run's report.json.
"""

import dataclasses

from chestxray_tf.evaluation import protocol as protocol_lib
from chestxray_tf.evaluation import results as results_lib

LOCALIZATIONS = ("regions", "boxes")
COUNTING = {False: "strict", True: "inclusive"}
PRIMARY_SELECTIONS = ("fixed", "cross-tuned")  # test-tuned is a labelled extra


def protocol_name(localization, inclusive, selection):
    return f"{localization}-{COUNTING[inclusive]}-{selection}"


def selections(study):
    """`study.eval.selections`, checked: known names, "fixed" and "cross-tuned" among them."""
    chosen = tuple(study.eval.selections)
    unknown = [s for s in chosen if s not in protocol_lib.SELECTIONS]
    if unknown or not set(PRIMARY_SELECTIONS) <= set(chosen):
        raise ValueError(f"config.study.eval.selections={chosen}: expected "
                         f"{' and '.join(PRIMARY_SELECTIONS)} (the rules every method is "
                         f"compared with) and optionally test-tuned")
    return chosen


def protocols(study):
    """{protocol name: overrides of `config.eval`} of every run of the study."""
    e = study.eval
    common = {"iou_thresholds": tuple(float(t) for t in e.iou_thresholds),
              "region_threshold": float(e.region_threshold), "region_inclusive": False,
              "tune_grid": tuple(float(t) for t in e.tune_grid), "tune_metric": "accuracy",
              "tune_per_threshold": False, "batch_size": int(e.batch_size), "experiment": ""}
    kinds = {"regions": {"localization": "regions", "region_keep": "all", "max_regions": 1,
                         "afp": False, "average_iou": False, "cdice": True},
             "boxes": {"localization": "boxes", "region_keep": "each",
                       "max_regions": int(e.max_regions), "afp": True, "average_iou": True,
                       "cdice": False}}
    out = {}
    for selection in selections(study):
        for localization in LOCALIZATIONS:
            for inclusive in (False, True):
                out[protocol_name(localization, inclusive, selection)] = {
                    **common, **kinds[localization], "inclusive": inclusive,
                    "threshold_selection": selection}
    for overrides in out.values():  # a bad value fails here, before any training
        protocol_lib.Protocol(**{k: v for k, v in overrides.items()
                                 if k in protocol_lib.Protocol.__dataclass_fields__})
    return out


@dataclasses.dataclass(frozen=True)
class Column:
    """One metric column: its key ("iou>=0.3"), its label, the protocol (localization,
    inclusive) whose report holds it and the path of its TABLE in `results`; `chance`: the
    path of its chance level (accuracies), `higher_is_better`: False for AFP."""
    key: str
    label: str
    localization: str
    inclusive: bool
    path: tuple
    chance: tuple = ()
    higher_is_better: bool = True

    def protocol(self, selection):
        return protocol_name(self.localization, self.inclusive, selection)


def columns(study):
    """Every metric column of the study's tables, in order: AUC, the accuracies at T(IoU) and
    T(IoR) of the regions (> then >=), the best-box accuracies (> then >=), AFP, average IoU,
    cDice."""
    out = [Column("auc", "AUC", "regions", False, ("auc",))]
    keys = [results_lib.threshold_key(t) for t in study.eval.iou_thresholds]
    for kind, label, localization, name in (("iou", "T(IoU)", "regions", "iou"),
                                            ("ior", "T(IoR)", "regions", "ior"),
                                            ("iou", "box T(IoU)", "boxes", "box_iou")):
        for inclusive, op in ((False, ">"), (True, ">=")):
            out += [Column(f"{name}{op}{k}", f"{label} {op} {k}", localization, inclusive,
                           ("localization", kind, k), ("localization_chance", kind, k))
                    for k in keys]
    out += [Column(f"afp@{k}", f"AFP at box T(IoU) > {k}", "boxes", False, ("afp", k),
                   higher_is_better=False) for k in keys]
    out += [Column("average_iou", "average box IoU", "boxes", False, ("average_iou",)),
            Column("cdice", "cDice", "regions", False, ("cdice",))]
    return out


def named_columns(study, field):
    """{key: Column} of the column keys `study.<field>` names (`sweep_metrics`,
    `heatmap_metrics`).

    Raises:
        ValueError: a key that is no column, named with the choices.
    """
    found = {c.key: c for c in columns(study)}
    unknown = [key for key in study[field] if key not in found]
    if unknown:
        raise ValueError(f"config.study.{field}: {unknown} are not columns; choose among "
                         f"{', '.join(found)}")
    return {key: found[key] for key in study[field]}


def lookup(results, path):
    """The TABLE at `path` of a report's `results`, or None when the report has none (a run
    whose test split has no boxed image)."""
    node = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
