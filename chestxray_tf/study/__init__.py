"""The comparison study (issue #20, `python -m chestxray_tf.cli.study`): every task trained
from its own paper config on ONE split (Li et al.'s protocol) and evaluated under ONE set of
protocols, plus Li et al.'s limited-supervision sweeps (Figs. 5, 6) for the tasks that train on
boxes.

`config` (the study's fields), `plan` (the runs and their configs / commands), `protocols`
(the shared evaluation protocols and the metric columns read from their reports), `runner`
(train + evaluate every run, resumable), `report` (study.json / study.md from the runs'
report.json files), `figures` (sweep curves, per-class heat-map tables). The study sits above
training and evaluation, as `cross_validation` does.
"""
