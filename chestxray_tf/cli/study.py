"""The comparison study (issue #20): `python -m chestxray_tf.cli.study --manifest
R/manifest.json --workdir S [--tasks li2018,kim] [--folds 0,1,2] [--config.study.X=...]`.

Trains every task (or those of `--tasks`) from its own paper config on Li et al.'s split and
evaluates all of them under the same protocols, plus the limited-supervision sweeps of the
tasks that train on boxes; each run is an ordinary training workdir under S/runs/. Writes
S/study.md, S/study.json and S/figures/. A killed study continues where it stopped (finished
runs are skipped, an interrupted one resumes). docs/study.md says what every number means.

* `--print_commands`: print one train + evaluate command per run (to spread the runs over a
  cluster's scheduler) and the gathering command, and exit;
* `--report_only`: gather the finished runs into the report, naming the missing ones;
* `--evaluate_run=ID`: evaluate one trained run (an id printed by `--print_commands`).

`--config` defaults to the repository's configs/study.py (`:tiny`: every paper config's smoke
mode, the demo's sizes); `--print_config` prints the resolved config.
"""

import os
import shlex
import sys

from absl import app, flags

from chestxray_tf import cli, config_reference
from chestxray_tf.study import plan as plan_lib, runner, summary

STUDY_CONFIG = os.path.join(config_reference.CONFIGS_DIR, "study.py")
_CONFIG = cli.define_config(STUDY_CONFIG, "The study's config (configs/study.py[:tiny]).")
_MANIFEST = flags.DEFINE_string("manifest", None, "manifest.json of the data set (or its "
                                "folder); --report_only: default, the study's own.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The study's folder S (runs under S/runs/).")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks to compare (default: every task).")
_FOLDS = flags.DEFINE_list("folds", None, "Held-out folds of Li et al.'s protocol (default: "
                           "config.study.folds, fold 0); several give mean ± std.")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one command per run and exit.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Gather the finished runs only.")
_EVALUATE_RUN = flags.DEFINE_string("evaluate_run", None, "Evaluate this trained run only.")
flags.mark_flags_as_required(["workdir"])


def _config():
    config = _CONFIG.value
    with config.unlocked():
        if _TASKS.value is not None:
            config.study.tasks = tuple(_TASKS.value)
        if _FOLDS.value is not None:
            try:
                config.study.folds = tuple(int(f) for f in _FOLDS.value)
            except ValueError:
                raise cli.UserError(f"--folds={','.join(_FOLDS.value)}: expected fold "
                                    "numbers") from None
    return config


def _manifest(study_dir):
    if _MANIFEST.value:
        return cli.local_path(_MANIFEST.value)
    recorded = os.path.join(study_dir, runner.STUDY_CONFIG)
    if not _REPORT_ONLY.value or not os.path.exists(recorded):
        raise cli.UserError("--manifest is required (the data set every run trains on)")
    return runner.read_identity(study_dir)["manifest"]


def _study_command(study_dir, manifest, extra):
    """The `cli.study` command of this study with `extra` flags."""
    flags_ = [f"--config={os.path.abspath(_CONFIG.path)}", f"--manifest={manifest}",
              f"--workdir={study_dir}"]
    flags_ += [a for a in sys.argv[1:] if a.startswith("--config.")]
    if _TASKS.value is not None:
        flags_.append(f"--tasks={','.join(_TASKS.value)}")
    if _FOLDS.value is not None:
        flags_.append(f"--folds={','.join(_FOLDS.value)}")
    return "python -m chestxray_tf.cli.study " + " ".join(shlex.quote(f) for f in
                                                           flags_ + extra)


def _find_run(study, run_id):
    runs = {run.id: run for run in plan_lib.plan(study)}
    if run_id not in runs:
        raise cli.UserError(f"--evaluate_run={run_id}: not a run of this study (its runs: "
                            f"{', '.join(runs)})")
    return runs[run_id]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _config()
    if _CONFIG.print_only:
        print(config.to_json_best_effort(indent=2))
        return 0
    cli.quiet_tensorflow()
    study_dir = cli.local_path(_WORKDIR.value)
    manifest = _manifest(study_dir)
    if _PRINT.value:
        for run in plan_lib.plan(config.study):
            print(plan_lib.train_command(config.study, run, manifest, study_dir) + " && "
                  + _study_command(study_dir, manifest, [f"--evaluate_run={run.id}"]))
        print(_study_command(study_dir, manifest, ["--report_only"])
              + "  # gathers the finished runs")
        return 0
    if _EVALUATE_RUN.value:
        run = _find_run(config.study, _EVALUATE_RUN.value)
        runner.check_study(study_dir, config, manifest)
        runner.check_trained(config.study, run, study_dir, manifest)
        runner.evaluate_run(config.study, run, study_dir)
        print(f"{run.id}: evaluated ({runner.marker_path(run.workdir(study_dir))})")
        return 0
    if not _REPORT_ONLY.value:
        runner.run_study(config, study_dir, manifest)
    paths = summary.write(config, study_dir, manifest)
    if paths["missing"]:
        print(f"missing runs (not evaluated yet): {', '.join(paths['missing'])}")
    print(f"study: {paths['markdown']}\ndata: {paths['json']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
