"""Evaluation: from a model's predictions to the papers' tables, files and figures (SPEC §6).

* `evaluate`: predictions of a checkpoint (scores, and maps only where a class has a box), then
  the results and report of every map variant of the Task.
* `protocol`: `Protocol`, the localization protocol of `config.eval` (regions | boxes, IoU
  thresholds, AFP, average IoU, cDice, fixed | test-tuned | cross-tuned thresholds).
* `localize`: threshold selection and the localization metrics of a protocol, with the chance
  level of each.
* `results`: the dict of every metric of a run, per class and mean, and its builders.
* `paper_tables`: the papers' published numbers (`published/<paper>.json`).
* `report`: `write_report` -> report.json and report.md, the paper's tables with our row and
  the difference beside the published ones.
* `figures`: ROC curves and heat-map galleries (matplotlib, Agg).
* `cv_report`: mean ± std over the folds of a cross-validation -> cv_report.json / .md.
"""
