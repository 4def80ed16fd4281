"""The comparison study (issue #20) on a tiny synthetic set: two tasks (li2018 trains on boxes,
baseline does not), two annotated fractions, each run 2 steps. The study is killed after its
first run and resumed; its tables have a row per task and a column per metric whose values are
those of each run's own report.json; --print_commands / --evaluate_run / --report_only."""

import importlib.util
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from chestxray_tf import config_reference
from chestxray_tf.study import config as study_config, plan as plan_lib
from chestxray_tf.study import protocols as protocols_lib, runner, summary
from chestxray_tf.training import trainer

REPO = pathlib.Path(__file__).resolve().parents[2]
TASKS = ("li2018", "baseline")
# CLI flags giving the same study as `_config()` (configs/study.py:tiny narrowed).
FLAGS = ["--config=" + str(REPO / "configs" / "study.py") + ":tiny", "--tasks=li2018,baseline",
         "--config.study.annotated_sweep=(0.4,0.8)",
         "--config.study.annotated_sweep_unannotated=0.5",
         "--config.study.unannotated_sweep=(0.5,)", "--config.study.max_steps=2"]


def _config():
    spec = importlib.util.spec_from_file_location("study_config", REPO / "configs" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.study.update(tasks=TASKS, annotated_sweep=(0.4, 0.8), annotated_sweep_unannotated=0.5,
                        unannotated_sweep=(0.5,), max_steps=2)
    return config


class Killed(Exception):
    """Stands for the study's process dying after its first run."""


def _checkpoint_times(run_dir):
    return {str(p): p.stat().st_mtime_ns for p in pathlib.Path(run_dir, "stages").rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def study(built_set, tmp_path_factory):
    config, manifest = _config(), str(built_set / "manifest.json")
    study_dir = str(tmp_path_factory.mktemp("study") / "S")
    runs = plan_lib.plan(config.study)

    def die(run):
        raise Killed(run.id)

    with pytest.raises(Killed):
        runner.run_study(config, study_dir, manifest, progress=False, after_run=die)
    first = runs[0].workdir(study_dir)
    before = _checkpoint_times(first), pathlib.Path(runner.marker_path(first)).read_text()
    trained = []
    real_train = trainer.train
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "train", lambda c, w: trained.append(w) or real_train(c, w))
        runner.run_study(config, study_dir, manifest, progress=False)
    after = _checkpoint_times(first), pathlib.Path(runner.marker_path(first)).read_text()
    paths = summary.write(config, study_dir, manifest)
    return {"config": config, "dir": study_dir, "manifest": manifest, "runs": runs,
            "trained": trained, "before": before, "after": after,
            "data": json.loads(pathlib.Path(paths["json"]).read_text()),
            "markdown": pathlib.Path(paths["markdown"]).read_text()}


def test_the_plan_sweeps_only_the_tasks_that_train_on_boxes():
    study = _config().study
    assert [r.id for r in plan_lib.plan(study)] == [
        "li2018/f0_a0.4_u0.5", "li2018/f0_a0.8_u0.5", "baseline/f0_a0.8_u0.5"]
    default = plan_lib.plan(study_config.study_config().study)
    points = {t: [(r.annotated, r.unannotated) for r in default if r.task == t]
              for t in ("li2018", "rozenberg2019", "baseline", "kim")}
    assert points["li2018"] == points["rozenberg2019"] == [
        (0.0, 1.0), (0.2, 1.0), (0.4, 1.0), (0.8, 0.0), (0.8, 0.2), (0.8, 0.5), (0.8, 1.0)]
    assert points["baseline"] == points["kim"] == [(0.8, 0.5)]
    study.tasks = ("nope",)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        plan_lib.plan(study)


def test_bad_study_settings_are_named():
    study = _config().study
    with study.unlocked():
        study.annotated_sweep = (0.4, 1.5)
    with pytest.raises(ValueError, match=r"annotated_sweep: 1.5 is not a fraction"):
        plan_lib.plan(study)
    study = _config().study
    study.eval.selections = ("fixed",)
    with pytest.raises(ValueError, match="selections.*cross-tuned"):
        protocols_lib.protocols(study)
    study = _config().study
    study.sweep_metrics = ("auc", "iou>0.15")
    with pytest.raises(ValueError, match=r"sweep_metrics: \['iou>0.15'\] are not columns"):
        protocols_lib.named_columns(study, "sweep_metrics")


def test_every_study_field_has_a_meaning_in_the_config_reference():
    text = (REPO / "docs" / "configs.md").read_text(encoding="utf-8")
    for path, _, _ in config_reference.flatten(study_config.study_config()):
        line = next(l for l in text.splitlines() if l.startswith(f"| `{path}` |"))
        assert line.rsplit(" | ", 1)[1].strip(" |"), f"{path} has no meaning in docs/configs.md"


def test_a_killed_study_resumes_without_retraining_finished_runs(study):
    first, *rest = study["runs"]
    assert study["trained"] == [r.workdir(study["dir"]) for r in rest]
    assert study["before"] == study["after"]  # checkpoints and evaluation marker untouched


def test_the_table_has_a_row_per_task_and_a_column_per_metric(study):
    data, keys = study["data"], [c.key for c in protocols_lib.columns(study["config"].study)]
    assert data["selections"] == ["fixed", "cross-tuned", "test-tuned"]
    assert data["missing"] == []
    for metric in ("auc", "iou>0.1", "iou>=0.7", "ior>0.3", "ior>=0.3", "box_iou>0.5",
                   "box_iou>=0.5", "afp@0.5", "average_iou", "cdice"):
        assert metric in keys
    for selection in data["selections"]:
        rows = data["tables"][selection]
        assert [r["method"] for r in rows] == list(TASKS)
        assert all(list(r["values"]) == keys for r in rows)
    assert "Extra, optimistic: thresholds test-tuned" in study["markdown"]
    assert "never sees the" in data["notes"]["baseline"]
    assert "trains on the" in data["notes"]["li2018"]


def _report(study, run_id, protocol):
    path = os.path.join(study["dir"], "runs", run_id, "eval", "study", protocol, "report.json")
    return json.loads(pathlib.Path(path).read_text())["results"]


def test_values_equal_each_runs_report_json(study):
    data, columns = study["data"], protocols_lib.columns(study["config"].study)
    checked = 0
    for selection in data["selections"]:
        for row in data["tables"][selection]:
            run_id = f"{row['task']}/f0_a0.8_u0.5"
            for column in columns:
                results = _report(study, run_id, column.protocol(selection))
                table = protocols_lib.lookup(results, column.path)
                assert row["values"][column.key] == (table and table["mean"]), column.key
                if column.chance:
                    chance = protocols_lib.lookup(results, column.chance)
                    assert row["chance"][column.key] == (chance and chance["mean"])
                checked += table is not None and table["mean"] is not None
    assert checked > 100
    auc = _report(study, "li2018/f0_a0.8_u0.5", "regions-strict-fixed")["auc"]["mean"]
    assert f"| li2018 | 1 | {auc:.3f} |" in study["markdown"]
    inclusive = _report(study, "li2018/f0_a0.8_u0.5", "regions-inclusive-fixed")
    assert inclusive["localization"]["inclusive"] is True


def test_the_sweep_reads_the_sweep_runs(study):
    entry = study["data"]["sweeps"]["annotated"]
    assert entry["fractions"] == [0.4, 0.8] and entry["fixed_at"] == 0.5
    lines = entry["cross-tuned"]["iou>0.1"]
    assert list(lines) == ["li2018"]  # baseline trains on no box: no sweep
    for fraction, mean, std, n in lines["li2018"]:
        report = _report(study, f"li2018/f0_a{fraction:g}_u0.5", "regions-strict-cross-tuned")
        assert (mean, std, n) == (report["localization"]["iou"]["0.1"]["mean"], None, 1)
    figures = study["data"]["figures"]
    assert any("annotated fraction" in caption for caption in figures)
    assert all(os.path.getsize(os.path.join(study["dir"], p)) > 1000 for p in figures.values())


def test_another_studys_settings_are_refused_in_the_same_folder(study):
    config = _config()
    config.study.max_steps = 3
    with pytest.raises(ValueError, match=r"holds another study \(study.max_steps: 2 there, 3"):
        runner.check_study(study["dir"], config, study["manifest"])


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow  # four binaries in subprocesses (~45 s on 2 cores)
def test_print_commands_evaluate_run_and_report_only(study, tmp_path):
    copy = str(tmp_path / "S")
    shutil.copytree(study["dir"], copy)
    flags = FLAGS + [f"--manifest={study['manifest']}", f"--workdir={copy}"]
    lines = _cli("chestxray_tf.cli.study", *flags, "--print_commands", cwd=tmp_path).splitlines()
    assert len(lines) == len(study["runs"]) + 1 and lines[-1].split("  #")[0].endswith(
        "--report_only")
    train, evaluate = lines[-2].split(" && ")
    run = study["runs"][-1]
    assert f"--workdir={run.workdir(copy)}" in shlex.split(train)
    # The printed train command holds the run's config (as the run's config.json stores it).
    printed = json.loads(_cli(*shlex.split(train)[2:], "--print_config", cwd=tmp_path))
    stored = json.loads(pathlib.Path(run.workdir(copy), "config.json").read_text())
    assert printed == stored
    # A run whose evaluation is gone is named missing, and its printed command restores it.
    os.remove(runner.marker_path(run.workdir(copy)))
    out = _cli("chestxray_tf.cli.study", *flags, "--report_only", cwd=tmp_path)
    assert f"missing runs (not evaluated yet): {run.id}" in out
    assert json.loads(pathlib.Path(copy, "study.json").read_text())["missing"] == [run.id]
    _cli(*shlex.split(evaluate)[2:], cwd=tmp_path)
    gathered = json.loads(pathlib.Path(summary.write(study["config"], copy, study["manifest"])[
        "json"]).read_text())
    assert gathered["missing"] == [] and gathered["tables"] == study["data"]["tables"]


def test_the_shared_protocol_equals_the_ordinary_evaluation_where_they_agree(study):
    """Li et al.'s own protocol is the study's regions-strict-fixed one: `cli.evaluate`'s
    report of the run (its paper config.eval) holds the same AUC and accuracies."""
    from chestxray_tf.evaluation import evaluate  # pylint: disable=import-outside-toplevel
    run_dir = os.path.join(study["dir"], "runs", "li2018", "f0_a0.8_u0.5")
    own = json.loads(pathlib.Path(evaluate.evaluate(run_dir, progress=False)["json"])
                     .read_text())["results"]
    shared = _report(study, "li2018/f0_a0.8_u0.5", "regions-strict-fixed")
    for key in ("auc", "auc_exact", "localization", "localization_chance", "thresholds"):
        assert shared[key] == own[key], key


def _fake_reports(study, value):
    """{protocol: {"": report}} whose every TABLE has mean `value` (folds without a model)."""
    table = {"per_class": {"Atelectasis": value}, "mean": value}
    results = {"auc": table, "average_iou": table, "cdice": table,
               "localization": {k: {key: table for key in ("0.1", "0.2", "0.3", "0.4", "0.5",
                                                           "0.6", "0.7")} for k in ("iou", "ior")},
               "afp": {key: table for key in ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")}}
    results["localization_chance"] = results["localization"]
    return {name: {"": {"results": results}} for name in protocols_lib.protocols(study)}


def test_several_folds_give_mean_and_sample_std():
    study = _config().study
    done = [(plan_lib.StudyRun("li2018", fold, 0.8, 0.5), _fake_reports(study, value))
            for fold, value in ((0, 0.2), (1, 0.4), (2, 0.9))]
    (row,) = summary.comparison_rows(study, done, "cross-tuned")
    assert row["n"] == 3 and row["values"]["iou>=0.3"] == pytest.approx(0.5)
    assert row["std"]["afp@0.7"] == pytest.approx(0.3605551, rel=1e-6)  # ddof = 1
    assert row["chance"]["box_iou>0.1"] == pytest.approx(0.5)
    lines = summary.sweeps(study, done, ["fixed"])["annotated"]["fixed"]["auc"]["li2018"]
    assert lines == [[0.8, pytest.approx(0.5), pytest.approx(0.3605551, rel=1e-6), 3]]
