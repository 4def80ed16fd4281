"""Tests of chestxray_tf/metrics/auc.py against a pairwise-loop reference and keras.metrics.AUC."""

import numpy as np
import pytest

from chestxray_tf.metrics import auc


def pairwise_auc_reference(labels, scores):
    """AUC of one class by counting every (positive, negative) pair; a tie counts one half."""
    positives = [s for y, s in zip(labels, scores) if y == 1]
    negatives = [s for y, s in zip(labels, scores) if y == 0]
    if not positives or not negatives:
        return float("nan")
    total = 0.0
    for p in positives:
        for n in negatives:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(positives) * len(negatives))


def keras_auc(labels, scores, num_thresholds):
    import keras
    metric = keras.metrics.AUC(num_thresholds=num_thresholds, curve="ROC",
                               summation_method="interpolation")
    metric.update_state(np.asarray(labels, np.float32), np.asarray(scores, np.float32))
    return float(metric.result())


def random_table(rng, n=60, k=4, grid=None):
    labels = (rng.random((n, k)) < 0.35).astype(np.float64)
    scores = rng.random((n, k))
    if grid is not None:  # many ties, and values exactly on thresholds
        scores = np.round(scores * grid) / grid
    return labels, scores


def test_exact_hand_case():
    result = auc.roc_auc_exact([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    # pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes -> 3/4.
    assert result.per_class.shape == (1,)
    assert result.per_class[0] == pytest.approx(0.75)
    assert result.mean == pytest.approx(0.75)


def test_exact_perfect_reversed_and_tied():
    labels = [[0, 0, 1], [0, 0, 1], [1, 1, 1], [1, 1, 0]]
    scores = [[0.1, 0.9, 0.5], [0.2, 0.8, 0.5], [0.7, 0.2, 0.5], [0.8, 0.1, 0.5]]
    result = auc.roc_auc_exact(labels, scores)
    np.testing.assert_allclose(result.per_class, [1.0, 0.0, 0.5])


@pytest.mark.parametrize("seed,grid", [(0, None), (1, 10), (2, 3), (3, 199)])
def test_exact_matches_pairwise_reference(seed, grid):
    labels, scores = random_table(np.random.default_rng(seed), grid=grid)
    result = auc.roc_auc_exact(labels, scores)
    expected = [pairwise_auc_reference(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
    np.testing.assert_allclose(result.per_class, expected, rtol=0, atol=1e-12)
    assert result.mean == pytest.approx(np.mean(expected))


def test_undefined_class_is_nan_and_left_out_of_the_mean():
    rng = np.random.default_rng(4)
    labels, scores = random_table(rng, k=3)
    labels[:, 0] = 0  # no positives
    labels[:, 2] = 1  # no negatives
    for fn in (auc.roc_auc_exact, auc.roc_auc_thresholded):
        result = fn(labels, scores)
        np.testing.assert_array_equal(result.defined, [False, True, False])
        assert np.isnan(result.per_class[0]) and np.isnan(result.per_class[2])
        assert result.mean == pytest.approx(result.per_class[1])
        assert 0 <= result.per_class[1] <= 1


def test_no_defined_class_gives_nan_mean():
    result = auc.roc_auc_exact(np.zeros((5, 2)), np.random.default_rng(5).random((5, 2)))
    assert not result.defined.any()
    assert np.isnan(result.mean)


@pytest.mark.parametrize("seed,grid,num_thresholds", [
    (10, None, 200), (11, 199, 200), (12, 10, 200), (13, 4, 200), (14, None, 7), (15, 6, 7)])
def test_thresholded_matches_keras_auc(seed, grid, num_thresholds):
    labels, scores = random_table(np.random.default_rng(seed), n=80, grid=grid)
    scores[:3] = [[0.0] * 4, [1.0] * 4, [0.5] * 4]
    result = auc.roc_auc_thresholded(labels, scores, num_thresholds)
    expected = [keras_auc(labels[:, k], scores[:, k], num_thresholds)
                for k in range(labels.shape[1])]
    np.testing.assert_allclose(result.per_class, expected, rtol=0, atol=1e-6)
    assert result.defined.all()


def test_thresholded_curve_ends_and_thresholds():
    labels, scores = random_table(np.random.default_rng(16), k=2)
    thresholds, fpr, tpr = auc.roc_curve_thresholded(labels, scores, 200)
    assert thresholds.shape == (200,) and fpr.shape == tpr.shape == (2, 200)
    assert thresholds[0] == -auc.KERAS_EPSILON and thresholds[-1] == 1 + auc.KERAS_EPSILON
    np.testing.assert_allclose(thresholds[1:-1], np.arange(1, 199) / 199)
    np.testing.assert_array_equal(fpr[:, 0], 1.0)
    np.testing.assert_array_equal(tpr[:, -1], 0.0)
    assert np.all(np.diff(fpr, axis=1) <= 0) and np.all(np.diff(tpr, axis=1) <= 0)


def test_thresholded_curve_points_against_a_loop():
    labels, scores = random_table(np.random.default_rng(17), n=30, k=1, grid=8)
    thresholds, fpr, tpr = auc.roc_curve_thresholded(labels[:, 0], scores[:, 0], 9)
    for i, t in enumerate(thresholds):
        tp = sum(1 for y, s in zip(labels[:, 0], scores[:, 0]) if y == 1 and s > t)
        fp = sum(1 for y, s in zip(labels[:, 0], scores[:, 0]) if y == 0 and s > t)
        assert tpr[0, i] == pytest.approx(tp / labels[:, 0].sum())
        assert fpr[0, i] == pytest.approx(fp / (1 - labels[:, 0]).sum())


def test_thresholded_close_to_exact_for_distinct_scores():
    labels, scores = random_table(np.random.default_rng(18), n=400, k=3)
    exact = auc.roc_auc_exact(labels, scores).per_class
    np.testing.assert_allclose(auc.roc_auc_thresholded(labels, scores).per_class, exact,
                               atol=5e-3)


@pytest.mark.parametrize("fn", [auc.roc_auc_exact, auc.roc_auc_thresholded])
def test_bad_input_is_a_clear_error(fn):
    with pytest.raises(ValueError, match=r"y_true\[1, 0\] = 0.5 is not 0 or 1"):
        fn([[0], [0.5], [1]], [[0.1], [0.2], [0.3]])
    with pytest.raises(ValueError, match=r"y_score\[2, 0\] = nan is not finite"):
        fn([[0], [1], [1]], [[0.1], [0.2], [np.nan]])
    with pytest.raises(ValueError, match="same shape"):
        fn([[0, 1], [1, 0]], [0.1, 0.2])


def test_thresholded_rejects_scores_outside_unit_interval():
    with pytest.raises(ValueError, match=r"y_score\[1, 0\] = 1.5 is not a probability"):
        auc.roc_auc_thresholded([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="num_thresholds"):
        auc.roc_auc_thresholded([0, 1], [0.2, 0.5], num_thresholds=1)
