"""The thresholds (τ_k, ρ_k, τ̂_k, ρ̂_k) of Rozenberg et al. 2019's loss (Eq. 12): where they
live in the model and how they are refitted between training rounds.

Sec. 4, "Training details": learning the thresholds with the weights "quickly leads to the
degenerate solution, i.e: τ, τ̂ → 0, ρ → 1 and ρ̂ → P²", so the paper alternates: "freezing
the thresholds, and training only the network weights; we then freeze the network weights,
and find the optimal thresholds". Minimising Eq. 12 over the thresholds is exactly that
degenerate solution, so "optimal" is a discrimination criterion here (brief §2.4, §4.2):

* "youden" (default): τ̂_k = ρ̂_k = the count c maximising Youden's J = TPR + TNR - 1 of
  [s ≥ c] between positive and negative unannotated (image, class) pairs, s = Σ_j z_jk; (τ_k,
  ρ_k) = the grid point whose Eq. 4-style indicator [r_in ≥ τ ∧ r_out ≤ ρ] best predicts (J)
  the evaluation hit IoU({z ≥ 0.5}, box) ≥ 0.1 on annotated pairs;
* "quantile": medians of r_in, r_out, s⁺, s⁻;
* "fixed": never refit (thresholds as hyperparameters, allowed by Sec. 3.2).

Initial values (brief §4.1): τ = 0.5, ρ = 0.05, τ̂ = 0.5 m_k, ρ̂ = 0.05 m_k with m_k the median
box size in patches of class k (the all-box median for classes without boxes).

All fit functions are NumPy on per-(image, class) statistics (`threshold_statistics`).
`Thresholds` holds the current values as a non-trainable weight [4, K] (in every checkpoint).
"""

import keras
import numpy as np
from keras import ops

from chestxray_tf.losses.rozenberg2019 import THRESHOLD_NAMES
from chestxray_tf.models.layers import Float32Layer

TAU, RHO, TAU_HAT, RHO_HAT = range(len(THRESHOLD_NAMES))
METHODS = ("youden", "quantile", "fixed")
TAU_GRID = np.round(np.arange(1, 20) * 0.05, 10)  # 0.05, 0.10, ..., 0.95
RHO_GRID = np.round(np.arange(0, 41) * 0.005, 10)  # 0, 0.005, ..., 0.20
MIN_ANNOTATED = 5


@keras.saving.register_keras_serializable(package="chestxray_tf")
class Thresholds(Float32Layer):
    """Holds (τ, ρ, τ̂, ρ̂) per class as a non-trainable weight [4, K]; returns it broadcast
    to [B, 4, K] for a batch-shaped input (any tensor whose first axis is the batch), float32
    (a model output compared with float32 maps).

    Args:
        initial: [4, K] initial values (see `initial_thresholds`).
    """

    def __init__(self, initial, **kwargs):
        super().__init__(**kwargs)
        self.initial = _check_thresholds(initial).tolist()

    def build(self, input_shape):
        self.thresholds = self.add_weight(
            name="thresholds", shape=np.shape(self.initial), trainable=False,
            initializer=keras.initializers.Constant(self.initial))

    def call(self, batch_like):
        batch = ops.shape(batch_like)[0]
        return ops.broadcast_to(self.thresholds[None], (batch,) + tuple(self.thresholds.shape))

    def assign(self, values):
        """Sets the thresholds (a threshold fit); `values` [4, K]."""
        values = _check_thresholds(values)
        if values.shape != tuple(self.thresholds.shape):
            raise ValueError(f"Thresholds.assign expects shape {tuple(self.thresholds.shape)}, "
                             f"got {values.shape}")
        self.thresholds.assign(values)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + np.shape(self.initial)

    def get_config(self):
        return {**super().get_config(), "initial": self.initial}


def _check_thresholds(values):
    values = np.asarray(values, np.float32)
    if values.ndim != 2 or values.shape[0] != len(THRESHOLD_NAMES):
        raise ValueError(f"thresholds must be [4, K] ({', '.join(THRESHOLD_NAMES)}), got shape "
                         f"{values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"thresholds must be finite, got {values.tolist()}")
    return values


def median_box_sizes(box_sizes):
    """m_k [K]: the median box size in patches per class; classes without boxes get the median
    over all boxes. `box_sizes`: K sequences of |b| (patch counts) of the training boxes."""
    everything = np.concatenate([np.asarray(sizes, np.float64).ravel() for sizes in box_sizes])
    if everything.size == 0:
        raise ValueError("median_box_sizes needs at least one box, got none")
    return np.array([np.median(sizes) if len(sizes) else np.median(everything)
                     for sizes in box_sizes], np.float32)


def initial_thresholds(median_sizes, *, tau=0.5, rho=0.05, tau_hat_fraction=0.5,
                       rho_hat_fraction=0.05):
    """[4, K]: τ = `tau`, ρ = `rho`, τ̂ = `tau_hat_fraction` m_k, ρ̂ = `rho_hat_fraction` m_k."""
    m = np.asarray(median_sizes, np.float32)
    if m.ndim != 1 or np.any(m <= 0):
        raise ValueError(f"median_sizes must be [K] positive patch counts, got {m.tolist()}")
    return np.stack([np.full_like(m, tau), np.full_like(m, rho), tau_hat_fraction * m,
                     rho_hat_fraction * m]).astype(np.float32)


def threshold_statistics(z, box_mask, *, region_threshold=0.5, iou_threshold=0.1):
    """Per-(image, class) statistics of a batch for the fit, NumPy [N, K] each.

    Returns a dict: "count" s = Σ_j z, "r_in" = Σ_box z / |b|, "r_out" = Σ_outside z / |b̄|
    (0 for an empty set), "hit" = patch-grid IoU({z ≥ region_threshold}, box) ≥ iou_threshold
    (the evaluation's inclusive rule, Sec. 4 "Evaluation Metrics").
    """
    z = np.asarray(z, np.float64)
    box = np.asarray(box_mask, np.float64) > 0
    if z.ndim != 4 or z.shape != box.shape:
        raise ValueError(f"z and box_mask must be [N, P, P, K] of one shape, got {z.shape} and "
                         f"{box.shape}")
    n_in, n_out = box.sum(axis=(1, 2)), (~box).sum(axis=(1, 2))
    region = z >= region_threshold
    union = (region | box).sum(axis=(1, 2))
    iou = (region & box).sum(axis=(1, 2)) / np.maximum(union, 1)
    return {"count": z.sum(axis=(1, 2)),
            "r_in": (z * box).sum(axis=(1, 2)) / np.maximum(n_in, 1),
            "r_out": (z * ~box).sum(axis=(1, 2)) / np.maximum(n_out, 1),
            "hit": (iou >= iou_threshold) & (union > 0)}


def _youden(predicted, actual):
    """J = TPR + TNR - 1 of boolean predictions against boolean truth (both classes present)."""
    return predicted[actual].mean() + (~predicted[~actual]).mean() - 1.0


def fit_count_threshold(positive_counts, negative_counts):
    """Youden-optimal count c* between positive and negative images, or None (keep the old
    value) without positives, negatives, two distinct counts, or a J* > 0.

    J(c) = mean(s⁺ ≥ c) + mean(s⁻ < c) - 1 is evaluated at the midpoints of consecutive distinct
    sorted counts. A run of consecutive maximising midpoints gives the middle of its interval;
    between disjoint maximising runs the lowest wins.
    """
    positives = np.asarray(positive_counts, np.float64)
    negatives = np.asarray(negative_counts, np.float64)
    values = np.unique(np.concatenate([positives, negatives]))
    if positives.size == 0 or negatives.size == 0 or values.size < 2:
        return None
    midpoints = (values[:-1] + values[1:]) / 2
    j = np.array([(positives >= c).mean() + (negatives < c).mean() - 1.0 for c in midpoints])
    best = j.max()
    if best <= 0:
        return None
    first = int(np.argmax(np.isclose(j, best)))
    last = first
    while last + 1 < j.size and np.isclose(j[last + 1], best):
        last += 1
    return float((values[first] + values[last + 1]) / 2)


def fit_box_thresholds(r_in, r_out, hit, *, taus=TAU_GRID, rhos=RHO_GRID):
    """(τ, ρ) on the grid maximising J of [r_in ≥ τ ∧ r_out ≤ ρ] against `hit`; ties go to
    the larger τ, then the smaller ρ. None (keep the old values) with fewer than MIN_ANNOTATED
    images or without both hits and misses."""
    r_in, r_out = np.asarray(r_in, np.float64), np.asarray(r_out, np.float64)
    hit = np.asarray(hit, bool)
    if hit.size < MIN_ANNOTATED or hit.all() or not hit.any():
        return None
    best = None
    for tau in sorted(taus, reverse=True):
        for rho in sorted(rhos):
            j = _youden((r_in >= tau) & (r_out <= rho), hit)
            if best is None or j > best[0] + 1e-12:
                best = (j, float(tau), float(rho))
    return best[1], best[2]


def fit_thresholds(current, labels, has_box, statistics, *, method="youden"):
    """New thresholds [4, K] from the training selection's statistics (weights frozen).

    Args:
        current: [4, K] thresholds now (kept where a fit is undefined).
        labels: [N, K] y; has_box: [N, K] a.
        statistics: `threshold_statistics` of the same N images (concatenated over batches).
        method: "youden", "quantile" or "fixed".

    Returns:
        (thresholds [4, K] float32, kept): `kept` lists (class, "box" | "image") whose old
        values were kept (to log).
    """
    if method not in METHODS:
        raise ValueError(f"threshold fit method must be one of {', '.join(METHODS)}, "
                         f"got {method!r}")
    new = _check_thresholds(current).copy()
    labels, has_box = np.asarray(labels) > 0, np.asarray(has_box) > 0
    kept = []
    if method == "fixed":
        return new, kept
    for k in range(new.shape[1]):
        annotated, plain = has_box[:, k], ~has_box[:, k]
        positives = statistics["count"][plain & labels[:, k], k]
        negatives = statistics["count"][plain & ~labels[:, k], k]
        r_in, r_out = statistics["r_in"][annotated, k], statistics["r_out"][annotated, k]
        if method == "youden":
            count = fit_count_threshold(positives, negatives)
            box = fit_box_thresholds(r_in, r_out, statistics["hit"][annotated, k])
            image = None if count is None else (count, count)
        else:
            box = (np.median(r_in), np.median(r_out)) if r_in.size else None
            image = ((np.median(positives), np.median(negatives))
                     if positives.size and negatives.size else None)
        for part, fitted, rows in (("box", box, (TAU, RHO)), ("image", image, (TAU_HAT, RHO_HAT))):
            if fitted is None:
                kept.append((k, part))
            else:
                new[list(rows), k] = fitted
    return new, kept


def thresholds_converged(old, new, *, rtol=0.01, atol=1e-3):
    """The round loop's stop rule: every threshold changed by < `rtol` (relative) or < `atol`."""
    old, new = _check_thresholds(old), _check_thresholds(new)
    return bool(np.all(np.abs(new - old) <= np.maximum(rtol * np.abs(old), atol)))
