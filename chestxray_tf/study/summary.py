"""study.json and study.md: the runs' own report.json values gathered into one comparison.

Nothing is recomputed here: every value of a table is the "mean" (or a class's value) of a
TABLE of a run's report.json (`protocols.COLUMNS` says which report and which entry); over
several folds, the mean ± sample std of those values (`evaluation.report.fold_statistics`).

study.json:

    {"name", "manifest", "split": {protocol, folds, split_seed, annotated, unannotated},
     "protocols": {name: config.eval overrides}, "selections": [...],
     "columns": [{"key", "label", "higher_is_better"}],
     "runs": [{"id", "task", "fold", "annotated", "unannotated", "workdir" (relative to S),
               "reports": {protocol: {variant: report.json path, relative to the run}}}],
     "missing": [run id],        # planned runs not (yet) evaluated
     "tables": {selection: [ROW]}, # the comparison's point, one ROW per method
     "sweeps": {"annotated" | "unannotated": {"fixed_at": F, "fractions": [...],
                selection: {column: {method: [[fraction, mean, std, n], ...]}}}},
     "per_class": {selection: {column: {method: {class: mean}}}},
     "notes": {task: "..."}}
    ROW = {"method", "task", "variant", "n": folds, "values": {column: mean},
           "std": {column: std | null}, "chance": {column: mean}}
"""

import collections
import os

from chestxray_tf import fileio, tasks as tasks_lib, workdir as workdir_lib
from chestxray_tf.data import manifest as manifest_lib, selection
from chestxray_tf.evaluation import report as report_lib
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES
from chestxray_tf.study import figures, markdown, plan as plan_lib, protocols as protocols_lib
from chestxray_tf.study import runner

SWEEPS = ("annotated", "unannotated")


def method_name(task, variant, first):
    """"li2018" for a task's main map, "hermoza2020/sal" for another map variant."""
    return task if first else f"{task}/{variant}"


def gather(study, study_dir):
    """([(run, {protocol: {variant: report dict}})] of the evaluated runs of the plan, [run]
    of the others)."""
    protocols = protocols_lib.protocols(study)
    done, missing = [], []
    for run in plan_lib.plan(study):
        run_dir = run.workdir(study_dir)
        marker = runner.read_marker(run_dir)
        if marker is None or not runner.is_finished(run_dir, protocols):
            missing.append(run)
            continue
        done.append((run, {name: {variant: workdir_lib.read_json(os.path.join(run_dir, path))
                                  for variant, path in variants.items()}
                           for name, variants in marker["reports"].items()}))
    return done, missing


def _methods(done):
    """{method: (task, variant)} in plan order (a task's main map first)."""
    out = {}
    for run, reports in done:
        variants = list(next(iter(reports.values())))
        for i, variant in enumerate(variants):
            out.setdefault(method_name(run.task, variant, i == 0), (run.task, variant))
    return out


def _table(reports, column, selection, variant, path=None):
    protocol = reports.get(column.protocol(selection), {})
    if variant not in protocol:
        return None
    return protocols_lib.lookup(protocol[variant]["results"], path or column.path)


def _mean(table):
    return None if table is None else table.get("mean")


def _runs_at(done, task, annotated, unannotated):
    return [reports for run, reports in done if run.task == task
            and run.annotated == annotated and run.unannotated == unannotated]


def comparison_rows(study, done, selection):
    """The ROWs of the comparison's point under `selection` (see the module docstring)."""
    main = (float(study.annotated_fraction), float(study.unannotated_fraction))
    rows = []
    for method, (task, variant) in _methods(done).items():
        runs = _runs_at(done, task, *main)
        if not runs:
            continue
        row = {"method": method, "task": task, "variant": variant, "n": len(runs),
               "values": {}, "std": {}, "chance": {}}
        for column in protocols_lib.columns(study):
            mean, std, _ = report_lib.fold_statistics([_mean(_table(r, column, selection, variant))
                                        for r in runs])
            row["values"][column.key], row["std"][column.key] = mean, std
            if column.chance:
                row["chance"][column.key] = report_lib.fold_statistics(
                    [_mean(_table(r, column, selection, variant, column.chance))
                     for r in runs])[0]
        rows.append(row)
    return rows


def _sweep_points(study, sweep):
    if sweep == "annotated":
        return float(study.annotated_sweep_unannotated), sorted(map(float, study.annotated_sweep))
    return float(study.unannotated_sweep_annotated), sorted(map(float, study.unannotated_sweep))


def sweeps(study, done, selections):
    """{"annotated" | "unannotated": ...} of the tasks that train on boxes (module docstring)."""
    columns = protocols_lib.named_columns(study, "sweep_metrics")
    methods = {m: tv for m, tv in _methods(done).items()
               if tasks_lib.get_task(tv[0]).uses_boxes}
    out = {}
    for sweep in SWEEPS:
        fixed, fractions = _sweep_points(study, sweep)
        entry = {"fixed_at": fixed, "fractions": fractions}
        for selection in selections:
            entry[selection] = {}
            for key in study.sweep_metrics:
                lines = {}
                for method, (task, variant) in methods.items():
                    points = []
                    for x in fractions:
                        a, u = (x, fixed) if sweep == "annotated" else (fixed, x)
                        runs = _runs_at(done, task, a, u)
                        if runs:
                            mean, std, n = report_lib.fold_statistics(
                                [_mean(_table(r, columns[key], selection, variant))
                                 for r in runs])
                            points.append([x, mean, std, n])
                    lines[method] = points
                entry[selection][key] = lines
        out[sweep] = entry
    return out


def per_class(study, done, selections):
    """{selection: {column: {method: {class: mean over folds}}}} at the comparison's point."""
    columns = protocols_lib.named_columns(study, "heatmap_metrics")
    main = (float(study.annotated_fraction), float(study.unannotated_fraction))
    out = {}
    for selection in selections:
        out[selection] = {}
        for key in study.heatmap_metrics:
            table = {}
            for method, (task, variant) in _methods(done).items():
                runs = _runs_at(done, task, *main)
                if not runs:
                    continue
                tables = [_table(r, columns[key], selection, variant) for r in runs]
                classes = CLASS_NAMES if key == "auc" else BOXED_CLASSES
                table[method] = {k: report_lib.fold_statistics([None if t is None else t["per_class"].get(k)
                                                 for t in tables])[0] for k in classes}
            out[selection][key] = table
    return out


def box_notes(study, manifest, tasks):
    """{task: note}: the boxes of the comparison's training split that each task trains on,
    or never sees (a task that does not read boxes uses those images' labels only)."""
    table = manifest_lib.read_metadata(manifest).set_index("image_id")
    fold = int(study.folds[0])
    out = {}
    for task in tasks:
        run = plan_lib.StudyRun(task, fold, float(study.annotated_fraction),
                                float(study.unannotated_fraction))
        train = selection.select(plan_lib.run_config(study, run, manifest).data).train
        boxed = table.loc[train]
        boxed = boxed[boxed["has_box"].astype(bool)]
        images, boxes = len(boxed), int(boxed["num_boxes"].sum())
        out[task] = (f"trains on the {boxes} boxes of its {images} annotated training images"
                     if tasks_lib.get_task(task).uses_boxes else
                     f"never sees the {boxes} boxes of the {images} annotated images it trains "
                     "on (it uses their image labels only)")
    return out


def build(config, study_dir, manifest):
    """The study.json dict of the evaluated runs under `study_dir`."""
    study = config.study
    done, missing = gather(study, study_dir)
    if not done:
        raise ValueError(f"{study_dir}: no run of the study has been evaluated yet (missing: "
                         f"{', '.join(r.id for r in missing)})")
    selections = list(protocols_lib.selections(study))
    tasks = list(dict.fromkeys(run.task for run, _ in done))
    return {
        "name": config.name, "manifest": os.path.abspath(manifest),
        "split": {"protocol": "li2018", "folds": [int(f) for f in study.folds],
                  "split_seed": int(study.split_seed),
                  "annotated": float(study.annotated_fraction),
                  "unannotated": float(study.unannotated_fraction)},
        "protocols": report_lib.jsonable(protocols_lib.protocols(study)),
        "selections": selections,
        "columns": [{"key": c.key, "label": c.label, "higher_is_better": c.higher_is_better}
                    for c in protocols_lib.columns(study)],
        "runs": [{"id": run.id, "task": run.task, "fold": run.fold, "annotated": run.annotated,
                  "unannotated": run.unannotated,
                  "workdir": os.path.relpath(run.workdir(study_dir), study_dir),
                  "reports": runner.read_marker(run.workdir(study_dir))["reports"]}
                 for run, _ in done],
        "missing": [run.id for run in missing],
        "tables": {s: comparison_rows(study, done, s) for s in selections},
        "sweeps": sweeps(study, done, selections),
        "per_class": per_class(study, done, selections),
        "notes": box_notes(study, manifest, tasks),
    }


def write(config, study_dir, manifest):
    """Writes S/study.json, S/study.md and the figures under S/figures/; returns their paths
    and the ids of the runs still missing."""
    data = build(config, study_dir, manifest)
    figure_paths = figures.write_all(data, os.path.join(study_dir, "figures"))
    data["figures"] = {k: os.path.relpath(v, study_dir) for k, v in figure_paths.items()}
    paths = {"json": os.path.join(study_dir, "study.json"),
             "markdown": os.path.join(study_dir, "study.md")}
    fileio.atomic_write_json(paths["json"], data)
    fileio.atomic_write(paths["markdown"], markdown.render(data))
    return {**paths, "missing": data["missing"]}
