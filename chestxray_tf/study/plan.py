"""The runs of a study and how each is configured (issue #20).

A run is one task trained on one point of Li et al.'s protocol: fold `fold` held out, the
fractions (of ALL boxed / ALL image-labelled images) `annotated` and `unannotated`. Every task
has the comparison's point (`study.annotated_fraction`, `study.unannotated_fraction`); a task
that trains on boxes (`Task.uses_boxes`) also has the points of the two sweeps (Li et al.
Fig. 5: `study.annotated_sweep` at `annotated_sweep_unannotated`; Fig. 6:
`study.unannotated_sweep` at `unannotated_sweep_annotated`). A task that never reads boxes gets
no sweep: the fractions change only how many labelled images it trains on.

Each run is an ordinary training workdir, S/runs/<task>/f<fold>_a<annotated>_u<unannotated>/,
trained from `configs/<task>.py[:study.config_arg]` with the overrides of `run_overrides`, the
same ones `train_command` prints.
"""

import dataclasses
import importlib.util
import os
import shlex

from chestxray_tf import config_reference, tasks as tasks_lib

RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True, order=True)
class StudyRun:
    """One run of the study (see the module docstring)."""
    task: str
    fold: int
    annotated: float
    unannotated: float

    @property
    def id(self):
        """"li2018/f0_a0.8_u0.5": the run's folder under S/runs/."""
        return f"{self.task}/f{self.fold}_a{self.annotated:g}_u{self.unannotated:g}"

    def workdir(self, study_dir):
        return os.path.join(study_dir, RUNS_DIR, *self.id.split("/"))


def study_tasks(study):
    """The task names of the study (`study.tasks`, or every task of the package's registry in
    registry order), each checked against the registry."""
    package = set(config_reference.library_tasks())
    names = list(study.tasks) or [name for name in tasks_lib.TASKS if name in package]
    for name in names:
        tasks_lib.get_task(name)  # an unknown name is a ValueError naming the choices
    if len(set(names)) != len(names):
        raise ValueError(f"study.tasks={tuple(names)}: a task is named twice")
    return names


def _check_fraction(value, field):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"config.study.{field}: {value} is not a fraction in [0, 1]")
    return float(value)


def points(study, task):
    """[(annotated, unannotated)] of `task`: the comparison's point, then (tasks that train on
    boxes) the sweeps' points, each once, sorted."""
    main = (_check_fraction(study.annotated_fraction, "annotated_fraction"),
            _check_fraction(study.unannotated_fraction, "unannotated_fraction"))
    out = {main}
    if tasks_lib.get_task(task).uses_boxes:
        at_u = _check_fraction(study.annotated_sweep_unannotated, "annotated_sweep_unannotated")
        at_a = _check_fraction(study.unannotated_sweep_annotated, "unannotated_sweep_annotated")
        out |= {(_check_fraction(a, "annotated_sweep"), at_u) for a in study.annotated_sweep}
        out |= {(at_a, _check_fraction(u, "unannotated_sweep")) for u in study.unannotated_sweep}
    return sorted(out)


def plan(study):
    """Every `StudyRun` of the study, by fold then task (registry order) then point."""
    folds = [int(f) for f in study.folds]
    if not folds or len(set(folds)) != len(folds):
        raise ValueError(f"study.folds={tuple(study.folds)}: expected distinct folds")
    return [StudyRun(task, fold, a, u) for fold in folds for task in study_tasks(study)
            for a, u in points(study, task)]


def config_path(task):
    """The paper config of `task`: configs/<task>.py of the repository."""
    path = os.path.join(config_reference.CONFIGS_DIR, f"{task}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"task {task!r} has no paper config {path}")
    return path


def paper_config(task, arg=""):
    """`get_config(arg)` of configs/<task>.py."""
    spec = importlib.util.spec_from_file_location(f"study_config_{task}", config_path(task))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def run_overrides(study, run, manifest, config):
    """[(field, value)]: what the study sets in the paper config `config` of `run`: the data
    set, Li et al.'s protocol at the run's fold and fractions, and with `study.max_steps` the
    capped steps of training and of every stage."""
    out = [("data.manifest", os.path.abspath(manifest)), ("data.protocol", "li2018"),
           ("data.test_fold", run.fold), ("data.annotated_fraction", run.annotated),
           ("data.unannotated_fraction", run.unannotated),
           ("data.split_seed", int(study.split_seed))]
    cap = int(study.max_steps)
    if cap < 0:
        raise ValueError(f"config.study.max_steps={cap}: expected >= 0 (0: the papers' steps)")
    if cap:
        out.append(("train.num_steps", min(cap, int(config.train.num_steps))))
        out += [(f"stages.{name}.num_steps", min(cap, int(stage.num_steps)))
                for name, stage in config.stages.items() if "num_steps" in stage]
    return out


def run_config(study, run, manifest):
    """The training config of `run`: its paper config with `run_overrides` applied."""
    config = paper_config(run.task, study.config_arg)
    for field, value in run_overrides(study, run, manifest, config):
        *parents, key = field.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[key] = value
    return config


def _config_flag(task, arg):
    return config_path(task) + (f":{arg}" if arg else "")


def train_command(study, run, manifest, study_dir):
    """The `cli.train` command line of `run` (absolute paths, shell-quoted): the same config
    as `run_config`."""
    config = paper_config(run.task, study.config_arg)
    flags = [f"--config={_config_flag(run.task, study.config_arg)}",
             f"--workdir={run.workdir(os.path.abspath(study_dir))}"]
    flags += [f"--config.{field}={value}"
              for field, value in run_overrides(study, run, manifest, config)]
    return "python -m chestxray_tf.cli.train " + " ".join(shlex.quote(f) for f in flags)
