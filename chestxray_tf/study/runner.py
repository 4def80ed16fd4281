"""Runs a study: trains and evaluates every run of its plan, resumably (issue #20).

A run whose study evaluation is done (RUN/eval/study/done.json, written last and atomically,
naming the checkpoint it evaluated, relative to the run, and the protocols) is skipped; any other run goes through
`trainer.train`, which skips its finished stages and resumes an interrupted one, and is then
evaluated under the study's protocols from one pass of its model
(`evaluation.evaluate.evaluate_protocols`). The study's settings that define its runs and
their evaluation are recorded in S/study_config.json: a second study with other settings in
the same folder is refused, naming the fields, so runs of two studies never mix.
"""

import os

from chestxray_tf import fileio, run_identity, workdir as workdir_lib
from chestxray_tf.evaluation import evaluate, report
from chestxray_tf.study import plan as plan_lib, protocols as protocols_lib
from chestxray_tf.training import trainer

EVAL_DIR = os.path.join("eval", "study")
MARKER = "done.json"
STUDY_CONFIG = "study_config.json"
# The fields that define what a run is and how it is measured; the others (tasks, folds,
# fractions, sweeps, plots) only choose which runs the study holds.
IDENTITY_FIELDS = ("config_arg", "split_seed", "max_steps", "eval")


def marker_path(run_dir):
    return os.path.join(run_dir, EVAL_DIR, MARKER)


def read_marker(run_dir):
    """The run's evaluation marker, or None when the run has not been evaluated."""
    path = marker_path(run_dir)
    if not os.path.exists(path):
        return None
    try:
        return workdir_lib.read_json(path)
    except ValueError as e:
        raise ValueError(f"{path} is damaged ({e}): remove it to evaluate the run again") from e


def is_finished(run_dir, protocols):
    """True when the run was evaluated under `protocols` from its final checkpoint."""
    marker = read_marker(run_dir)
    return (marker is not None and marker.get("protocols") == report.jsonable(protocols)
            and marker.get("checkpoint") == os.path.relpath(
                workdir_lib.resolve(run_dir, "latest"), run_dir))


def study_identity(config, manifest):
    return {"fields": report.jsonable({k: config.study[k] for k in IDENTITY_FIELDS}),
            "manifest": os.path.abspath(manifest),
            "manifest_sha256": run_identity.manifest_digest(manifest)}


def read_identity(study_dir):
    """The identity S/study_config.json recorded (`check_study`)."""
    return workdir_lib.read_json(os.path.join(study_dir, STUDY_CONFIG))


def check_study(study_dir, config, manifest):
    """Records the study's identity in S/study_config.json, or checks it against the one
    recorded.

    Raises:
        ValueError: S holds a study of other settings or another data set (each named).
    """
    path = os.path.join(study_dir, STUDY_CONFIG)
    current = study_identity(config, manifest)
    if os.path.exists(path):
        recorded = read_identity(study_dir)
        diff = {k: (recorded["fields"].get(k), v) for k, v in current["fields"].items()
                if recorded["fields"].get(k) != v}
        if recorded.get("manifest_sha256") != current["manifest_sha256"]:
            diff["manifest"] = (recorded.get("manifest"), current["manifest"])
        if diff:
            lines = "; ".join(f"study.{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{study_dir} holds another study ({lines}); continue it with its "
                             "own settings, or use a new --workdir")
    fileio.atomic_write_json(path, {**current, "config": report.jsonable(config.to_dict())})


def evaluate_run(study, run, study_dir, *, progress=True):
    """Evaluates the trained `run` under the study's protocols; writes its marker last."""
    run_dir = run.workdir(study_dir)
    protocols = protocols_lib.protocols(study)
    with workdir_lib.lock(run_dir):
        checkpoint, written = evaluate.evaluate_protocols(
            run_dir, protocols, os.path.join(run_dir, EVAL_DIR), progress=progress)
        reports = {name: {variant: os.path.relpath(paths["json"], run_dir)
                          for variant, paths in variants.items()}
                   for name, variants in written.items()}
        fileio.atomic_write_json(marker_path(run_dir), {
            "run": run.id, "checkpoint": os.path.relpath(checkpoint, run_dir), "protocols": report.jsonable(protocols),
            "reports": reports})


def check_trained(study, run, study_dir, manifest):
    """Refuses to evaluate a run whose training has not finished (every stage done)."""
    run_dir = run.workdir(study_dir)
    stages = trainer.Run(plan_lib.run_config(study, run, manifest), run_dir).stages
    missing = [stage.name for i, stage in enumerate(stages) if not os.path.exists(
        os.path.join(workdir_lib.stage_dir(run_dir, i, stage.name), workdir_lib.DONE_FILE))]
    if missing:
        raise ValueError(f"run {run.id} in {run_dir} has not finished training (stages "
                         f"{', '.join(missing)} not done): run its train command first")


def train_and_evaluate(study, run, study_dir, manifest, *, progress=True):
    """Trains `run` (resuming it) and evaluates it, unless it is finished. Returns True when
    it ran, False when it was skipped."""
    run_dir = run.workdir(study_dir)
    if is_finished(run_dir, protocols_lib.protocols(study)):
        print(f"{run.id}: finished, skipped", flush=True)
        return False
    print(f"{run.id}: training in {run_dir}", flush=True)
    trainer.train(plan_lib.run_config(study, run, manifest), run_dir)
    print(f"{run.id}: evaluating", flush=True)
    evaluate_run(study, run, study_dir, progress=progress)
    return True


def run_study(config, study_dir, manifest, *, progress=True, after_run=None):
    """Trains and evaluates every run of the study's plan (finished ones skipped), calling
    `after_run(run)` after each run that ran. Returns the runs."""
    runs = plan_lib.plan(config.study)
    protocols_lib.protocols(config.study)  # bad settings fail before any training
    for field in ("sweep_metrics", "heatmap_metrics"):
        protocols_lib.named_columns(config.study, field)
    os.makedirs(study_dir, exist_ok=True)
    with workdir_lib.lock(study_dir):
        check_study(study_dir, config, manifest)
        for run in runs:
            if train_and_evaluate(config.study, run, study_dir, manifest,
                                  progress=progress) and after_run is not None:
                after_run(run)
    return runs
