"""Localization of a split's (image, class) pairs under a paper's `Protocol`.

A pair is a test image with a true box of class k and the model's map of class k. For each
candidate map threshold of the protocol (`Protocol.evaluated`: the tuning candidates and the
fallback region threshold) `outcomes` applies the task's
region rule (`Task.region_rule`, through `chestxray_tf.inference`, the code the SavedModel
runs) to every pair: the region masks ("regions") or the boxes around the kept regions
("boxes"). `select_thresholds` picks the threshold of every pair (fixed, test-tuned or
cross-tuned, see `protocol`), `localization_results` turns the pairs' outcomes at those
thresholds into the `results` entries (`evaluation.results`): accuracy at each T, AFP,
average IoU, cDice, the chance level and the thresholds used.
"""

import dataclasses

import numpy as np

from chestxray_tf import geometry, inference
from chestxray_tf.evaluation import results as results_lib
from chestxray_tf.labels import BOXED_CLASSES
from chestxray_tf.metrics import localization

# Random placements of each region (box) for the chance level of localization.
CHANCE_DRAWS = 20
# Maps per call of the TensorFlow region rule.
BATCH = 64
# The seed of the patient halves of "cross-tuned".
HALVES_SEED = 0


@dataclasses.dataclass
class Pairs:
    """The (image, class with a true box) pairs of a split.

    image_ids [N] (str), class_ids int [N] (canonical index, < len(BOXED_CLASSES)), maps
    float32 [N, h, w] (the class's map of the image), true_boxes: N arrays [M, 4] of pixel
    boxes (x, y, w, h) in the model's input frame, patients [N] (str, for the halves of
    "cross-tuned"), image_size S of that frame.
    """
    image_ids: list
    class_ids: np.ndarray
    maps: np.ndarray
    true_boxes: list
    patients: list
    image_size: int

    def __len__(self):
        return len(self.class_ids)


@dataclasses.dataclass
class Outcome:
    """The pairs' localization at one map threshold: "regions": masks bool [N, h, w], iou and
    ior [N]; "boxes": boxes (N arrays [n, 4] of pixel boxes, n >= 0) and best (best box IoU
    [N])."""
    masks: np.ndarray = None
    iou: np.ndarray = None
    ior: np.ndarray = None
    boxes: list = None
    best: np.ndarray = None

    def overlap(self):
        """The overlap a hit is judged by: IoU of the region, or the best box IoU."""
        return self.iou if self.best is None else self.best


def _batches(maps):
    for start in range(0, len(maps), BATCH):
        yield maps[start:start + BATCH, :, :, None]


def region_masks(maps, rule):
    """bool [N, h, w]: the kept regions of `rule` on maps [N, h, w]."""
    if not len(maps):
        return np.zeros(maps.shape, bool)
    return np.concatenate([inference.region_mask(m, rule).numpy()[..., 0]
                           for m in _batches(maps)])


def region_boxes(maps, rule, image_size):
    """N arrays [n, 4]: pixel boxes (x, y, w, h) of the kept regions of `rule` on maps
    [N, h, w], in the frame of side `image_size` the maps cover."""
    out = []
    for m in _batches(maps):
        boxes = inference.region_boxes(m, rule)[0].numpy()[:, 0]  # [b, R, 4]
        for image_boxes in boxes:
            present = (image_boxes[:, 2] > image_boxes[:, 0]) & (
                image_boxes[:, 3] > image_boxes[:, 1])
            out.append(geometry.yxyx_to_xywh(image_boxes[present], image_size)
                       if present.any() else np.zeros((0, 4)))
    return out


def outcome(pairs, rule, localization_kind):
    """The `Outcome` of every pair under `rule` (a `tasks.base.RegionRule`)."""
    if localization_kind == "regions":
        masks = region_masks(pairs.maps, rule)
        overlaps = [localization.iou_and_ior(m, b, pairs.image_size, i)
                    for m, b, i in zip(masks, pairs.true_boxes, pairs.image_ids)]
        iou, ior = (np.array(v, dtype=np.float64).reshape(len(pairs)) for v in
                    zip(*overlaps)) if overlaps else (np.zeros(0), np.zeros(0))
        return Outcome(masks=masks, iou=iou, ior=ior)
    boxes = region_boxes(pairs.maps, rule, pairs.image_size)
    best = np.array([localization.best_box_iou(p, t) for p, t in zip(boxes, pairs.true_boxes)],
                    dtype=np.float64)
    return Outcome(boxes=boxes, best=best)


def outcomes(pairs, rule_at, protocol):
    """{threshold: `Outcome`} at every threshold of `protocol.evaluated`; `rule_at(threshold)`
    is the task's region rule."""
    return {t: outcome(pairs, rule_at(t), protocol.localization) for t in protocol.evaluated}


def _hit(overlap, threshold, inclusive):
    return overlap >= threshold if inclusive else overlap > threshold


def _tuning_scores(table, protocol):
    """float [C, G, N]: the score of every pair at every candidate (G = #candidates) for each
    tuning criterion C (one per T with `tune_per_threshold`, else one)."""
    candidates = protocol.candidates
    if protocol.tune_metric == "average_iou":
        return np.stack([table[t].best for t in candidates])[None]
    hits = np.stack([[_hit(table[t].overlap(), T, protocol.inclusive) for t in candidates]
                     for T in protocol.iou_thresholds]).astype(np.float64)  # [T, G, N]
    return hits if protocol.tune_per_threshold else hits.mean(axis=0, keepdims=True)


def _tune(scores, class_ids, chosen_from, protocol):
    """Per criterion and class, the candidate with the best mean score over the pairs of
    `chosen_from` (bool [N]); the first (smallest) candidate wins a tie; a class without such
    pairs gets `protocol.region_threshold`. -> float [C, K]."""
    candidates = np.asarray(protocol.candidates)
    out = np.full((scores.shape[0], len(BOXED_CLASSES)), float(protocol.region_threshold))
    for k in range(len(BOXED_CLASSES)):
        members = chosen_from & (class_ids == k)
        if members.any():
            out[:, k] = candidates[np.argmax(scores[:, :, members].mean(axis=-1), axis=1)]
    return out


def patient_halves(patients):
    """bool [N]: True for the pairs of the first half of the patients (a fixed random half,
    `HALVES_SEED`); every pair of a patient is on the same side."""
    unique = np.array(sorted(set(patients)))
    first = set(np.random.default_rng(HALVES_SEED).permutation(unique)[:len(unique) // 2])
    return np.array([p in first for p in patients], dtype=bool)


@dataclasses.dataclass
class Selection:
    """The map threshold of every pair: per_pair float [C, N] (C = 1, or one row per T with
    `tune_per_threshold`), and the record for the report (`results["thresholds"]`)."""
    per_pair: np.ndarray
    record: dict

    def at(self, t_index):
        """float [N]: the thresholds of the pairs at the T of index `t_index`."""
        return self.per_pair[min(t_index, len(self.per_pair) - 1)]


def _values(row):
    return {name: float(v) for name, v in zip(BOXED_CLASSES, row)}


def select_thresholds(pairs, table, protocol):
    """The `Selection` of the protocol's `threshold_selection` over the pairs' outcomes."""
    n = len(pairs)
    if not protocol.tuned:
        t = float(protocol.region_threshold)
        return Selection(np.full((1, n), t),
                         {"selection": "fixed", "values": _values([t] * len(BOXED_CLASSES))})
    scores = _tuning_scores(table, protocol)
    per_T = protocol.tune_per_threshold and protocol.tune_metric == "accuracy"

    def record(tuned):
        out = {"values": _values(tuned.mean(axis=0))}
        if per_T:
            out["per_threshold"] = {results_lib.threshold_key(T): _values(row)
                                    for T, row in zip(protocol.iou_thresholds, tuned)}
        return out

    if protocol.threshold_selection == "test-tuned":
        tuned = _tune(scores, pairs.class_ids, np.ones(n, bool), protocol)
        return Selection(tuned[:, pairs.class_ids],
                         {"selection": "test-tuned", **record(tuned)})
    first = patient_halves(pairs.patients)
    on_first = _tune(scores, pairs.class_ids, first, protocol)
    on_second = _tune(scores, pairs.class_ids, ~first, protocol)
    # Each half is scored with the thresholds tuned on the other.
    per_pair = np.where(first[None], on_second[:, pairs.class_ids], on_first[:, pairs.class_ids])
    halves = [record(on_first), record(on_second)]
    return Selection(per_pair, {"selection": "cross-tuned",
                                "values": _values((on_first + on_second).mean(axis=0) / 2),
                                "halves": halves})


def _at(table, selection, t_index, field):
    """The values of `field` of every pair at its threshold for the T of index `t_index`."""
    thresholds = selection.at(t_index)
    return [getattr(table[float(t)], field)[i] for i, t in enumerate(thresholds)]


def _accuracy(pairs, table, selection, protocol, kind, chance_rng=None):
    """{threshold key: TABLE} of accuracy at each T of the overlap `kind` (iou / ior / best)."""
    rows = []
    for ti, T in enumerate(protocol.iou_thresholds):
        if chance_rng is None:
            values = np.asarray(_at(table, selection, ti, kind), dtype=np.float64)
            ids = pairs.class_ids
        else:
            values, ids = _chance_overlaps(pairs, table, selection, ti, kind, chance_rng)
        rows.append(localization.localization_accuracy(ids, values, [T],
                                                         inclusive=protocol.inclusive))
    draws = 1 if chance_rng is None else CHANCE_DRAWS
    return results_lib.accuracy_tables(np.concatenate([r.per_class for r in rows]),
                                       protocol.iou_thresholds,
                                       [float(r.mean[0]) for r in rows],
                                       rows[0].counts // draws)


def _chance_overlaps(pairs, table, selection, t_index, kind, rng):
    """The overlaps of the pairs' regions (boxes) moved to random places, CHANCE_DRAWS times:
    a region mask rolled by a random offset on its grid; a box moved to a uniformly random
    position inside the frame (same size)."""
    values, ids = [], []
    size = pairs.image_size
    for _ in range(CHANCE_DRAWS):
        if kind == "best":
            for boxes, true in zip(_at(table, selection, t_index, "boxes"), pairs.true_boxes):
                moved = boxes.copy()
                moved[:, 0] = rng.uniform(0, 1, len(boxes)) * (size - boxes[:, 2])
                moved[:, 1] = rng.uniform(0, 1, len(boxes)) * (size - boxes[:, 3])
                values.append(localization.best_box_iou(moved, true))
        else:
            for mask, true, image_id in zip(_at(table, selection, t_index, "masks"),
                                            pairs.true_boxes, pairs.image_ids):
                rolled = np.roll(mask, rng.integers(0, mask.shape), axis=(0, 1))
                values.append(localization.iou_and_ior(rolled, true, size, image_id)[
                    0 if kind == "iou" else 1])
        ids.append(pairs.class_ids)
    return np.asarray(values, dtype=np.float64), np.concatenate(ids)


def localization_results(pairs, table, selection, protocol, chance=True):
    """The `results` entries of the pairs at the selected thresholds: "localization" (and
    "localization_chance"), "afp", "average_iou", "cdice", "thresholds"."""
    out = {"thresholds": selection.record}
    if not len(pairs):
        return out
    kinds = ("iou", "ior") if protocol.localization == "regions" else ("best",)
    names = {"iou": "iou", "ior": "ior", "best": "iou"}
    out["localization"] = {"inclusive": protocol.inclusive,
                           **{names[k]: _accuracy(pairs, table, selection, protocol, k)
                              for k in kinds}}
    if chance:
        rng = np.random.default_rng(0)
        out["localization_chance"] = {
            "inclusive": protocol.inclusive,
            **{names[k]: _accuracy(pairs, table, selection, protocol, k, rng) for k in kinds}}
    if protocol.afp:
        rows = []
        for ti, T in enumerate(protocol.iou_thresholds):
            counts = [localization.false_positive_count(b, t, T, protocol.inclusive)
                      for b, t in zip(_at(table, selection, ti, "boxes"), pairs.true_boxes)]
            rows.append(localization.per_class_average(pairs.class_ids, counts))
        out["afp"] = results_lib.accuracy_tables(
            np.stack([r.per_class for r in rows]), protocol.iou_thresholds,
            [float(r.mean) for r in rows], rows[0].counts)
    if protocol.average_iou:
        table_iou = localization.per_class_average(pairs.class_ids,
                                                   _at(table, selection, 0, "best"))
        out["average_iou"] = results_lib.class_table(table_iou.per_class, None,
                                                     table_iou.counts, BOXED_CLASSES)
    if protocol.cdice:
        values = [localization.continuous_dice(m, b, pairs.image_size, i)
                  for m, b, i in zip(pairs.maps, pairs.true_boxes, pairs.image_ids)]
        dice = localization.per_class_average(pairs.class_ids, values)
        out["cdice"] = results_lib.class_table(dice.per_class, None, dice.counts, BOXED_CLASSES)
    return out
