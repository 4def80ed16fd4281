"""Li et al.'s 5-fold cross-validation: train and evaluate each fold, then mean ± std.

Each fold k runs in WORKDIR/fold_k with `config.data.test_fold = k`. A fold whose report
comes from its final checkpoint is finished and skipped; an interrupted one resumes (the
trainer restores its last checkpoint). `fold_commands` prints the same work as one shell
command per fold, to fan the folds out to a cluster.
"""

import json
import os
import shlex

from chestxray_tf import workdir as workdir_lib
from chestxray_tf.evaluation import cv_report, evaluate
from chestxray_tf.training import trainer

FOLD_FIELD = "--config.data.test_fold"


def fold_dir(workdir, fold):
    return os.path.join(workdir, f"fold_{fold}")


def fold_config(config, fold):
    """`config` with fold `fold` held out for testing."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.test_fold = fold
    return config


def is_finished(workdir, config):
    """True when WORKDIR/eval/report.json was made from the checkpoint of the last step."""
    report = os.path.join(evaluate.eval_dir(workdir, "test_fold"), "report.json")
    if not os.path.exists(report) or not os.path.isdir(os.path.join(workdir,
                                                                    workdir_lib.STAGES_DIR)):
        return False
    stages = workdir_lib.stage_dirs(workdir)
    if not stages or not all(os.path.exists(os.path.join(s, workdir_lib.DONE_FILE))
                             for s in stages):
        return False
    with open(report) as f:
        evaluated = json.load(f).get("checkpoint")
    return evaluated == workdir_lib.resolve(workdir, "latest")


def run(config, workdir, folds, progress=True):
    """Trains and evaluates every fold of `folds` (skipping finished ones), then writes
    WORKDIR/cv_report.json and cv_report.md. Returns the report paths."""
    if len(set(folds)) != len(folds):
        raise ValueError(f"folds {folds} are not distinct: each fold is tested once")
    reports = []
    for fold in folds:
        config_k, run_dir = fold_config(config, fold), fold_dir(workdir, fold)
        if is_finished(run_dir, config_k):
            print(f"fold {fold}: finished, skipped")
        else:
            print(f"fold {fold}: training in {run_dir}")
            trainer.train(config_k, run_dir)
            evaluate.evaluate(run_dir, "latest", "test_fold", progress=progress)
        reports.append(os.path.join(evaluate.eval_dir(run_dir, "test_fold"), "report.json"))
    return cv_report.write_cv_report(workdir, reports)


def check_overrides(overrides):
    """Refuses a `--config.data.test_fold` among the overrides: the fold is the one thing
    cross-validation sets (else every fold's command would test the same fold)."""
    clash = [o for o in overrides if o.split("=")[0] == FOLD_FIELD]
    if clash:
        raise ValueError(f"{' '.join(clash)}: cross-validation sets the test fold of each run "
                         "itself; choose the folds with --folds")


def fold_commands(config_path, overrides, workdir, folds):
    """One shell command per fold (train, then evaluate), then the aggregation command."""
    check_overrides(overrides)
    extra = " ".join(shlex.quote(o) for o in overrides)
    commands = []
    for fold in folds:
        run_dir = shlex.quote(fold_dir(workdir, fold))
        commands.append(
            f"python -m chestxray_tf.cli.train --config={shlex.quote(config_path)} "
            f"--workdir={run_dir} --config.data.test_fold={fold}{' ' + extra if extra else ''}"
            f" && python -m chestxray_tf.cli.evaluate --workdir={run_dir}")
    fold_list = ",".join(str(f) for f in folds)
    commands.append(f"python -m chestxray_tf.cli.cv --config={shlex.quote(config_path)} "
                    f"--workdir={shlex.quote(workdir)} --folds={fold_list}"
                    f"{' ' + extra if extra else ''}  # aggregates the finished folds")
    return commands
