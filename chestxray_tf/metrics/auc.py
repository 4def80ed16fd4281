"""Per-class ROC AUC (Li et al. 2018, Sec. 4.1 and footnote 4; SPEC §1, §5, §6).

Two values of the area under the ROC curve, per class of an [N, K] label/score table:

* `roc_auc_exact`: the area under the empirical ROC curve, from ranks (the Mann-Whitney U
  statistic; a tied positive/negative pair counts one half), equal to scikit-learn's
  `roc_auc_score`.
* `roc_auc_thresholded`: the area under the ROC curve sampled at `num_thresholds` thresholds,
  "200 thresholds in this work" (Li et al., footnote 4), with the semantics of
  `keras.metrics.AUC(num_thresholds=200, curve='ROC', summation_method='interpolation')`.

A class whose column has no positive or no negative gives NaN and `defined = False`; the mean
is taken over the defined classes only.
"""

from typing import NamedTuple

import numpy as np
from scipy import stats

# keras.config.epsilon(): Keras puts the end thresholds at -epsilon and 1 + epsilon.
KERAS_EPSILON = 1e-7


class AUCResult(NamedTuple):
    """Per-class AUC.

    per_class: float64 [K], NaN for a class without both positives and negatives.
    defined: bool [K], whether the class has both positives and negatives.
    mean: mean of `per_class` over the defined classes (NaN when none is defined).
    """
    per_class: np.ndarray
    defined: np.ndarray
    mean: float


def _check_labels_and_scores(y_true, y_score):
    """Returns float64 [N, K] labels (0/1) and scores; a 1-D input is one class."""
    labels = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(y_score, dtype=np.float64)
    if labels.ndim == 1:
        labels = labels[:, None]
    if scores.ndim == 1:
        scores = scores[:, None]
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"y_true {np.shape(y_true)} and y_score {np.shape(y_score)} must have "
                         "the same shape [N] or [N, K]")
    bad = ~((labels == 0) | (labels == 1))
    if np.any(bad):
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"y_true[{row}, {col}] = {labels[row, col]} is not 0 or 1")
    bad = ~np.isfinite(scores)
    if np.any(bad):
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"y_score[{row}, {col}] = {scores[row, col]} is not finite")
    return labels, scores


def _result(per_class, labels):
    positives = labels.sum(axis=0)
    defined = (positives > 0) & (positives < labels.shape[0])
    per_class = np.where(defined, per_class, np.nan)
    mean = float(per_class[defined].mean()) if np.any(defined) else float("nan")
    return AUCResult(per_class=per_class, defined=defined, mean=mean)


def roc_auc_exact(y_true, y_score):
    """Exact per-class ROC AUC from average ranks (Mann-Whitney U, ties count one half).

    AUC_k = (sum of the ranks of the positives - P (P + 1) / 2) / (P N), ranks of all scores of
    class k in ascending order with ties given their average rank.

    Args:
        y_true: [N] or [N, K] labels in {0, 1}.
        y_score: scores of the same shape (any finite values).

    Returns:
        AUCResult.
    """
    labels, scores = _check_labels_and_scores(y_true, y_score)
    ranks = stats.rankdata(scores, axis=0)
    positives = labels.sum(axis=0)
    negatives = labels.shape[0] - positives
    u = (ranks * labels).sum(axis=0) - positives * (positives + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return _result(u / (positives * negatives), labels)


def _check_num_thresholds(num_thresholds):
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an integer >= 2, got {num_thresholds}")


def keras_thresholds(num_thresholds=200):
    """The thresholds of keras.metrics.AUC(num_thresholds): i / (T - 1) for 0 < i < T - 1,
    and -epsilon, 1 + epsilon at the ends. float64 [T]."""
    _check_num_thresholds(num_thresholds)
    inner = np.arange(1, num_thresholds - 1) / (num_thresholds - 1)
    return np.concatenate([[-KERAS_EPSILON], inner, [1.0 + KERAS_EPSILON]])


def _check_probabilities(y_true, y_score):
    labels, scores = _check_labels_and_scores(y_true, y_score)
    outside = (scores < 0) | (scores > 1)
    if np.any(outside):
        row, col = np.argwhere(outside)[0]
        raise ValueError(f"y_score[{row}, {col}] = {scores[row, col]} is not a probability "
                         "in [0, 1]")
    return labels, scores


def _roc_points(labels, scores, num_thresholds):
    """fpr, tpr [K, T] of checked labels and probabilities (see `roc_curve_thresholded`)."""
    _check_num_thresholds(num_thresholds)
    buckets = np.ceil(scores.astype(np.float32) * np.float32(num_thresholds - 1)) - 1
    buckets = np.maximum(buckets, 0).astype(np.int64)
    num_classes = labels.shape[1]
    flat = (buckets + num_thresholds * np.arange(num_classes)[None, :]).ravel()

    def count_above(weights):
        counts = np.bincount(flat, weights=weights.ravel(), minlength=num_classes * num_thresholds)
        counts = counts.reshape(num_classes, num_thresholds)
        return np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]

    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = count_above(labels) / labels.sum(axis=0)[:, None]
        fpr = count_above(1 - labels) / (1 - labels).sum(axis=0)[:, None]
    return fpr, tpr


def roc_curve_thresholded(y_true, y_score, num_thresholds=200):
    """Per-class ROC points at the Keras thresholds (see `keras_thresholds`).

    A score counts as positive at threshold t when score > t. As Keras does for evenly spaced
    thresholds, the comparison is made by bucketing the float32 score: score p lies above
    threshold i exactly when ceil(p * (T - 1)) - 1 >= i (bucket -1, i.e. p = 0, joins bucket 0,
    which is above -epsilon).

    Args:
        y_true: [N] or [N, K] labels in {0, 1}.
        y_score: probabilities in [0, 1] of the same shape.
        num_thresholds: T.

    Returns:
        (thresholds [T], fpr [K, T], tpr [K, T]); fpr/tpr are NaN for a class without
        negatives/positives. Both fall from 1 at the first threshold to 0 at the last.
    """
    thresholds = keras_thresholds(num_thresholds)
    fpr, tpr = _roc_points(*_check_probabilities(y_true, y_score), num_thresholds)
    return thresholds, fpr, tpr


def roc_auc_thresholded(y_true, y_score, num_thresholds=200):
    """Per-class ROC AUC at `num_thresholds` thresholds, as keras.metrics.AUC computes it
    (curve='ROC', summation_method='interpolation': the trapezoidal rule over the points of
    `roc_curve_thresholded`).

    Args:
        y_true: [N] or [N, K] labels in {0, 1}.
        y_score: probabilities in [0, 1] of the same shape.
        num_thresholds: T (Li et al.: 200).

    Returns:
        AUCResult.
    """
    labels, scores = _check_probabilities(y_true, y_score)
    fpr, tpr = _roc_points(labels, scores, num_thresholds)
    areas = np.sum((fpr[:, :-1] - fpr[:, 1:]) * (tpr[:, :-1] + tpr[:, 1:]) / 2, axis=1)
    return _result(areas, labels)
