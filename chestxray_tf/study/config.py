"""The study's config schema (`configs/study.py` sets it; docs/configs.md lists every field).

The `study` section names which runs exist (tasks, folds, the comparison's split and the two
sweeps of Li et al. Figs. 5 and 6) and how every run is evaluated (`study.eval`: the ONE
protocol set of all methods, `chestxray_tf.study.protocols`).
"""

import ml_collections

from chestxray_tf.evaluation import protocol

SWEEP_METRICS = ("auc", "iou>0.1", "iou>0.5", "ior>0.1", "box_iou>0.3", "average_iou")


def study_config():
    """The study's fields with their defaults: Li et al.'s protocol, fold 0, 80% annotated +
    50% unannotated, both sweeps, fixed + cross-tuned thresholds (test-tuned as an extra)."""
    config = ml_collections.ConfigDict()
    config.name = "study"                        # the study's name (study.md's title)
    config.study = ml_collections.ConfigDict()
    config.study.tasks = ()                      # tasks compared (() = every task of the
                                                 # registry); --tasks sets it
    config.study.config_arg = ""                 # argument of every paper config,
                                                 # configs/<task>.py:ARG ("tiny": smoke mode)
    config.study.folds = (0,)                    # li2018 protocol: held-out folds (several:
                                                 # mean ± std over them); --folds sets it
    config.study.split_seed = 0                  # the patient-wise folds and fractions
    config.study.annotated_fraction = 0.8        # the comparison's split: fraction of ALL
                                                 # boxed images trained on
    config.study.unannotated_fraction = 0.5      # the comparison's split: fraction of ALL
                                                 # image-labelled images trained on
    config.study.annotated_sweep = (0.0, 0.2, 0.4, 0.8)  # Li Fig. 5: annotated fractions
                                                 # (tasks that train on boxes only)
    config.study.annotated_sweep_unannotated = 1.0  # Fig. 5: unannotated fraction of that sweep
    config.study.unannotated_sweep = (0.0, 0.2, 0.5, 1.0)  # Li Fig. 6: unannotated fractions
                                                 # (tasks that train on boxes only)
    config.study.unannotated_sweep_annotated = 0.8  # Fig. 6: annotated fraction of that sweep
    config.study.max_steps = 0                   # > 0: caps train.num_steps and every stage's
                                                 # num_steps (a quick study); 0: the papers'
    config.study.sweep_metrics = SWEEP_METRICS   # one sweep plot each (study.json's columns)
    config.study.heatmap_metrics = ("auc", "iou>0.1")  # one per-class heat-map table each
    config.study.eval = ml_collections.ConfigDict()
    config.study.eval.iou_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # the T of every
                                                 # accuracy, reported with > and with >=
    config.study.eval.region_threshold = 0.5     # the fixed rule: map > 0.5
    config.study.eval.selections = ("fixed", "cross-tuned", "test-tuned")  # threshold rules;
                                                 # test-tuned is reported as a labelled extra
    config.study.eval.tune_grid = protocol.DEFAULT_TUNE_GRID  # thresholds tried by the tuned rules
    config.study.eval.max_regions = 10           # boxes protocol: a box per 8-connected region,
                                                 # at most this many by peak
    config.study.eval.batch_size = 8             # evaluation batch
    return config
