"""The papers' evaluation metrics, pure NumPy/SciPy (no model, no TensorFlow).

* `auc`: per-class ROC AUC, exact and at 200 thresholds (Li et al. 2018).
* `regions`: maps of any resolution -> regions -> boxes (threshold, connected components).
* `localization`: IoU / IoR of a region, accuracy at T(IoU) / T(IoR), box IoU, average IoU,
  continuous Dice, average false positives, and per-class tables of per-image records.
"""
