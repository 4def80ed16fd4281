"""Evidence that the model learns what Li et al. 2018 say it learns (issue 6), on synthetic data.

    python -m benchmarks.validation [--workdir /tmp/chestxray_validation] [--quick]

It runs the real binaries, one process each: `tfrecords_tools.make_synthetic` (a fixed
synthetic NIH-layout set), `tfrecords_tools.build_nih` (TFRecords at 128 px, 5 patient folds),
then per run `chestxray_tf.cli.train` with `configs/validation.py:VARIANT` and
`chestxray_tf.cli.evaluate` on the held-out fold 0. Every run has the same data; the seed of a
run is `config.seed` (initial weights and data order), the split is fixed (`split_seed` 0).

Experiments (paper 000 = Li et al. 2018):
* fractions (Fig. 5 in miniature): unannotated fraction 0.8 (the paper's 100%: with 5 folds
  the other folds hold 80% of the images, the most the li2018 protocol can give) and annotated
  fraction 0, 0.4, 0.8; localization accuracy at T(IoR) = 0.1 and T(IoU) = 0.3.
* reference (Table 1 in miniature): per-class AUC of the patch model (annotated 0.8) against
  the "baseline" model (same backbone, global average pooling, dense sigmoid, plain BCE).
* stability (Sec. 3.4): P = 20 with and without the [0.98, 1] smoothing; a run is stable when
  it trains every step (the trainer stops on a non-finite loss) and its outputs are finite.

Each run is repeated for every seed of `--seeds`; tables give mean +- sample std over seeds.
Writes OUTPUT_DIR/results.json (every number), results.md (the tables) and the figures.
Re-running reuses what WORKDIR already holds (data, finished runs).

The baseline has no published tables, which `chestxray_tf.cli.evaluate` requires for its
report, so baseline runs are evaluated in-process with the same functions
(`evaluation.evaluate.predict` and `compute_results`).
"""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "validation.py"
EXPERIMENTS = ("fractions", "reference", "stability")
ANNOTATED_FRACTIONS = (0.0, 0.4, 0.8)
# The paper's 100% unannotated: all of the 4 training folds of 5 (nih.li2018_split).
UNANNOTATED_FRACTION = 0.8
# Localization metrics reported: (metric, threshold key of report.json).
LOCALIZATION = (("ior", "0.1"), ("iou", "0.3"), ("iou", "0.1"))
METRIC_NAMES = {"ior": "IoR", "iou": "IoU"}
QUICK = {"num_patients": 200, "num_steps": 30, "seeds": [0]}

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/chestxray_validation",
                               "Scratch folder: data, TFRecords and the training runs.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", str(REPO / "docs" / "validation"),
                                  "Where results.json, results.md and the figures go.")
_PATIENTS = flags.DEFINE_integer("num_patients", 1000, "Synthetic patients (~3 images each).")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 256, "Side of the synthetic PNGs.")
_DATA_SEED = flags.DEFINE_integer("data_seed", 0, "Seed of the synthetic set.")
_STEPS = flags.DEFINE_integer("num_steps", 900, "Training steps per run (batch 16).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "config.seed of the repeats.")
_EXPERIMENTS = flags.DEFINE_list("experiments", list(EXPERIMENTS), "Which experiments to run.")
_QUICK = flags.DEFINE_bool(
    "quick", False, f"Plumbing check: {QUICK}; WORKDIR/quick, output to WORKDIR/quick/output.")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a variant of configs/validation.py, its annotated fraction, a seed."""
    variant: str
    annotated_fraction: float
    seed: int

    @property
    def name(self):
        return f"{self.variant}_ann{round(self.annotated_fraction * 100):02d}_seed{self.seed}"


def plan_runs(experiments, seeds):
    """{experiment: [Run]}; the reference's patch runs are the fractions' 0.8 runs."""
    plan = {
        "fractions": [Run("li2018", f, s) for f in ANNOTATED_FRACTIONS for s in seeds],
        "reference": [Run(v, 0.8, s) for v in ("li2018", "baseline") for s in seeds],
        "stability": [Run(v, 0.8, s) for v in ("li2018_p20", "li2018_p20_unsmoothed")
                      for s in seeds],
    }
    return {name: plan[name] for name in experiments}


def _call(command, log_path):
    """Runs `command` from the repository root, output to `log_path`; (returncode, seconds)."""
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return code, time.time() - start


def _tail(path, lines=5):
    with open(path) as f:
        return "".join(f.readlines()[-lines:]).strip()


def make_data(workdir, num_patients):
    """Synthetic set and its TFRecords (reused when present); returns (manifest, timings)."""
    nih, records = workdir / "nih", workdir / "tfrecords"
    steps = (
        (nih / "test_list.txt", "make_synthetic",
         ["tfrecords_tools.make_synthetic", f"--output_dir={nih}",
          f"--num_patients={num_patients}", f"--image_size={_SOURCE_SIZE.value}",
          f"--seed={_DATA_SEED.value}"]),
        (records / "manifest.json", "build_nih",
         ["tfrecords_tools.build_nih", f"--nih_dir={nih}", f"--output_dir={records}",
          "--image_size=128", "--num_shards=4", "--num_folds=5", "--fold_seed=0"]),
    )
    timings_path = workdir / "data_seconds.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for done, name, args in steps:
        if done.exists():
            print(f"{name}: reused {done.parent}", flush=True)
            continue
        code, seconds = _call([sys.executable, "-m", *args], workdir / f"{name}.log")
        if code:
            raise RuntimeError(f"{name} failed ({workdir / f'{name}.log'}):\n"
                               f"{_tail(workdir / f'{name}.log')}")
        timings[name] = round(seconds, 1)
        timings_path.write_text(json.dumps(timings))
        print(f"{name}: {seconds:.0f} s", flush=True)
    return records / "manifest.json", timings


def _evaluate_in_process(run_dir):
    """Evaluation of a run whose model has no published tables (no report.md possible)."""
    from chestxray_tf.evaluation import evaluate  # pylint: disable=import-outside-toplevel
    from chestxray_tf import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
    config, model, path = workdir_lib.restore_model(run_dir)
    pred = evaluate.predict(model, config, evaluate.split_ids(config, "test_fold"),
                            progress=False)
    report = {"results": evaluate.compute_results(pred, config, "test_fold"),
              "checkpoint": str(path), "note": "evaluated by benchmarks/validation.py"}
    os.makedirs(run_dir / "eval" / "test_fold", exist_ok=True)
    with open(run_dir / "eval" / "test_fold" / "report.json", "w") as f:
        json.dump(report, f, indent=1)


def train_and_evaluate(run, manifest, workdir, num_steps):
    """Trains and evaluates `run` (reused when done); its record for results.json."""
    run_dir = workdir / "runs" / run.name
    record_path = run_dir / "record.json"
    if record_path.exists():
        with open(record_path) as f:
            return json.load(f)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {**dataclasses.asdict(run), "unannotated_fraction": UNANNOTATED_FRACTION,
              "num_steps": num_steps, "workdir": str(run_dir)}
    code, seconds = _call(
        [sys.executable, "-m", "chestxray_tf.cli.train", f"--config={CONFIG}:{run.variant}",
         f"--workdir={run_dir}", f"--config.data.manifest={manifest}",
         f"--config.data.annotated_fraction={run.annotated_fraction}",
         f"--config.data.unannotated_fraction={UNANNOTATED_FRACTION}",
         f"--config.seed={run.seed}", f"--config.train.num_steps={num_steps}"],
        run_dir / "train.log")
    record["train_seconds"] = round(seconds, 1)
    if code:
        record.update(status="diverged" if "TrainingDivergedError" in _tail(
            run_dir / "train.log", 40) else "failed", error=_tail(run_dir / "train.log"))
    else:
        with open(run_dir / "config.json") as f:
            model_name = json.load(f)["task"]
        start = time.time()
        if model_name == "li2018":
            code, _ = _call([sys.executable, "-m", "chestxray_tf.cli.evaluate",
                             f"--workdir={run_dir}"], run_dir / "evaluate.log")
        else:
            _evaluate_in_process(run_dir)
        record["eval_seconds"] = round(time.time() - start, 1)
        if code:
            record.update(status="failed", error=_tail(run_dir / "evaluate.log"))
        else:
            with open(run_dir / "eval" / "test_fold" / "report.json") as f:
                record["metrics"] = metrics_of(json.load(f)["results"])
            record["status"] = "ok" if _finite(record["metrics"]) else "non_finite_outputs"
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    return record


def training_losses(run_dir):
    """The logged training losses (`train/loss`, every `log_every_steps`) of a run:
    {"steps", "values", "all_finite"}; a diverged run stops before logging a non-finite one,
    so its last logged loss is the last good one."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow.core.util import event_pb2  # pylint: disable=import-outside-toplevel
    steps, values = [], []
    for path in sorted((run_dir / "stages" / "0_train" / "logs").glob("events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(raw.numpy())
            for value in event.summary.value:
                if value.tag == "train/loss":
                    steps.append(int(event.step))
                    values.append(float(tf.make_ndarray(value.tensor)))
    return {"steps": steps, "values": values,
            "all_finite": bool(values) and all(math.isfinite(v) for v in values)}


def metrics_of(results):
    """The numbers the experiments compare, from a report.json's `results`."""
    out = {"auc_mean": results["auc"]["mean"], "auc": dict(results["auc"]["per_class"])}
    for key in ("localization", "localization_chance"):
        prefix = "" if key == "localization" else "chance_"
        for metric, threshold in LOCALIZATION:
            table = results[key][metric][threshold]
            out[f"{prefix}{metric}_{threshold}"] = table["mean"]
            out[f"{prefix}{metric}_{threshold}_per_class"] = dict(table["per_class"])
    return out


def _finite(metrics):
    """The mean AUC and localization means are defined and finite (NaN outputs break them)."""
    return all(v is not None and math.isfinite(v) for k, v in metrics.items()
               if not isinstance(v, dict))


def summarize(values):
    """{"mean", "std" (sample, ddof 1), "n", "values"} of the defined values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0 if values else None,
            "n": len(values), "values": values}


def _over_seeds(records, key, class_name=None):
    picked = [r["metrics"][key] if class_name is None else r["metrics"][key].get(class_name)
              for r in records if r.get("status") == "ok"]
    return summarize(picked)


def _records(records, variant, fraction):
    return [r for r in records if r["variant"] == variant
            and math.isclose(r["annotated_fraction"], fraction)]


def _clearly_above(high, low):
    """Mean difference and whether it exceeds the sum of the two stds."""
    diff = high["mean"] - low["mean"]
    return {"difference": diff, "clearly": diff > high["std"] + low["std"]}


def analyse_fractions(records):
    out = {"rows": {}}
    for fraction in ANNOTATED_FRACTIONS:
        runs = _records(records, "li2018", fraction)
        out["rows"][str(fraction)] = {key: _over_seeds(runs, key) for key in (
            "auc_mean", *[f"{p}{m}_{t}" for p in ("", "chance_") for m, t in LOCALIZATION])}
    claims = {}
    for metric, threshold in LOCALIZATION[:2]:
        key = f"{metric}_{threshold}"
        means = [out["rows"][str(f)][key]["mean"] for f in ANNOTATED_FRACTIONS]
        top, bottom = (out["rows"][str(f)][key] for f in (0.8, 0.0))
        claims[key] = {"means": means, "rising": bool(np.all(np.diff(means) >= 0)),
                       "80_vs_0": _clearly_above(top, bottom)}
    out["claims"] = claims
    out["holds"] = all(c["rising"] and c["80_vs_0"]["clearly"] for c in claims.values())
    return out


def analyse_reference(records):
    patch, base = _records(records, "li2018", 0.8), _records(records, "baseline", 0.8)
    rows = {name: {"li2018": _over_seeds(patch, "auc", name),
                   "baseline": _over_seeds(base, "auc", name)} for name in CLASS_NAMES}
    rows["mean"] = {"li2018": _over_seeds(patch, "auc_mean"),
                    "baseline": _over_seeds(base, "auc_mean")}
    wins = sum(rows[n]["li2018"]["mean"] >= rows[n]["baseline"]["mean"] for n in CLASS_NAMES
               if rows[n]["li2018"]["mean"] is not None and rows[n]["baseline"]["mean"]
               is not None)
    localization = {f"{m}_{t}": {v: _over_seeds(r, f"{m}_{t}") for v, r in
                                 (("li2018", patch), ("baseline", base))} for m, t in LOCALIZATION}
    mean = rows["mean"]
    diff = mean["li2018"]["mean"] - mean["baseline"]["mean"]
    return {"rows": rows, "localization": localization, "classes_at_least_as_good": int(wins),
            "mean_auc_difference": diff, "holds": bool(diff >= 0)}


def analyse_stability(records):
    out = {}
    for variant in ("li2018_p20", "li2018_p20_unsmoothed"):
        runs = _records(records, variant, 0.8)
        out[variant] = {"statuses": [r["status"] for r in runs],
                        "losses_finite": [r["train_loss"]["all_finite"] for r in runs],
                        "last_loss": summarize([r["train_loss"]["values"][-1] for r in runs
                                                if r["train_loss"]["values"]]),
                        **{key: _over_seeds(runs, key) for key in (
                            "auc_mean", *[f"{m}_{t}" for m, t in LOCALIZATION])}}
    unsmoothed = out["li2018_p20_unsmoothed"]
    out["holds"] = (bool(unsmoothed["statuses"]) and all(s == "ok" for s in unsmoothed["statuses"])
                    and all(unsmoothed["losses_finite"]))
    out["differences"] = {key: unsmoothed[key]["mean"] - out["li2018_p20"][key]["mean"]
                          for key in ("auc_mean", *[f"{m}_{t}" for m, t in LOCALIZATION])
                          if unsmoothed[key]["mean"] is not None
                          and out["li2018_p20"][key]["mean"] is not None}
    return out


ANALYSES = {"fractions": analyse_fractions, "reference": analyse_reference,
            "stability": analyse_stability}


def _pm(stat, digits=3):
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def markdown(analysis, meta):
    """The tables of results.md."""
    lines = [f"Synthetic set: {meta['num_patients']} patients (seed {meta['data_seed']}), "
             f"{meta['num_images']} images, 128 px; {meta['num_steps']} steps of batch 16 per "
             f"run; seeds {meta['seeds']}; mean ± sample std over seeds. Test: fold 0.", ""]
    loc_header = [f"T({METRIC_NAMES[m]})={t}" for m, t in LOCALIZATION]
    if "fractions" in analysis:
        rows = analysis["fractions"]["rows"]
        lines += ["### Localization accuracy vs. annotated fraction (unannotated 0.8)", ""]
        lines += _table(["annotated", "mean AUC", *loc_header,
                         *[f"chance {h}" for h in loc_header]],
                        [[f, _pm(r["auc_mean"]), *[_pm(r[f"{m}_{t}"]) for m, t in LOCALIZATION],
                          *[_pm(r[f"chance_{m}_{t}"]) for m, t in LOCALIZATION]]
                         for f, r in rows.items()]) + [""]
    if "reference" in analysis:
        ref = analysis["reference"]
        lines += ["### Per-class AUC: patch model (li2018) vs. baseline (GAP + dense, BCE)", ""]
        lines += _table(["class", "li2018", "baseline", "difference"],
                        [[n, _pm(r["li2018"]), _pm(r["baseline"]),
                          "n/a" if None in (r["li2018"]["mean"], r["baseline"]["mean"]) else
                          f"{r['li2018']['mean'] - r['baseline']['mean']:+.3f}"]
                         for n, r in ref["rows"].items()]) + [""]
        lines += _table(["model", *loc_header],
                        [[v, *[_pm(ref["localization"][f"{m}_{t}"][v]) for m, t in LOCALIZATION]]
                         for v in ("li2018", "baseline")]) + [""]
    if "stability" in analysis:
        stab = analysis["stability"]
        lines += ["### P = 20: smoothing 0.98 vs. none", ""]
        lines += _table(["variant", "runs", "logged losses finite", "last loss", "mean AUC",
                         *loc_header],
                        [[v, ", ".join(stab[v]["statuses"]),
                          ", ".join(str(f) for f in stab[v]["losses_finite"]),
                          _pm(stab[v]["last_loss"]), _pm(stab[v]["auc_mean"]),
                          *[_pm(stab[v][f"{m}_{t}"]) for m, t in LOCALIZATION]]
                         for v in ("li2018_p20", "li2018_p20_unsmoothed")]) + [""]
    lines += ["### Runs", ""]
    lines += _table(["run", "status", "train s", "eval s"],
                    [[r["name"], r["status"], r["train_seconds"], r.get("eval_seconds", "")]
                     for r in meta["runs"]])
    return "\n".join(lines) + "\n"


def plot(analysis, output_dir):
    """fractions.png (Fig. 5 in miniature) and reference_auc.png; returns their paths."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    paths = []
    if "fractions" in analysis:
        rows = analysis["fractions"]["rows"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (metric, threshold) in zip(axes, LOCALIZATION[:2]):
            for prefix, label, style in (("", "li2018", "o-"), ("chance_", "chance", "x--")):
                stats = [rows[str(f)][f"{prefix}{metric}_{threshold}"] for f in
                         ANNOTATED_FRACTIONS]
                ax.errorbar([100 * f for f in ANNOTATED_FRACTIONS],
                            [s["mean"] for s in stats], yerr=[s["std"] for s in stats],
                            fmt=style, capsize=3, label=label)
            ax.set(xlabel="annotated images (%), unannotated 80%",
                   ylabel=f"accuracy, T({METRIC_NAMES[metric]})={threshold}", ylim=(0, None))
            ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(output_dir, "fractions.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    if "reference" in analysis:
        rows = analysis["reference"]["rows"]
        names = [*CLASS_NAMES, "mean"]
        x = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(11, 3.8))
        for offset, model in ((-0.2, "li2018"), (0.2, "baseline")):
            ax.bar(x + offset, [rows[n][model]["mean"] or 0 for n in names], 0.4,
                   yerr=[rows[n][model]["std"] or 0 for n in names], capsize=2, label=model)
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)   # chance AUC
        ax.set(ylabel="AUC (test fold)", ylim=(0.0, 1.0))
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(output_dir, "reference_auc.png"))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    experiments = list(_EXPERIMENTS.value)
    unknown = set(experiments) - set(EXPERIMENTS)
    if unknown:
        raise app.UsageError(f"unknown experiments {sorted(unknown)}; choose from {EXPERIMENTS}")
    workdir = pathlib.Path(_WORKDIR.value).resolve()
    output_dir = pathlib.Path(_OUTPUT_DIR.value).resolve()
    num_patients, num_steps = _PATIENTS.value, _STEPS.value
    seeds = [int(s) for s in _SEEDS.value]
    if _QUICK.value:
        workdir, output_dir = workdir / "quick", workdir / "quick" / "output"
        num_patients, num_steps, seeds = QUICK["num_patients"], QUICK["num_steps"], QUICK["seeds"]
    workdir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()

    manifest, data_seconds = make_data(workdir, num_patients)
    plan = plan_runs(experiments, seeds)
    runs = list(dict.fromkeys(run for runs in plan.values() for run in runs))
    records = []
    for i, run in enumerate(runs):
        record = train_and_evaluate(run, manifest, workdir, num_steps)
        records.append({"name": run.name, **record,
                        "train_loss": training_losses(workdir / "runs" / run.name)})
        print(f"[{i + 1}/{len(runs)}] {run.name}: {record['status']} "
              f"(train {record['train_seconds']:.0f} s; {time.time() - start:.0f} s total)",
              flush=True)

    with open(manifest) as f:
        num_images = json.load(f)["num_images"]
    analysis = {name: ANALYSES[name](records) for name in experiments}
    meta = {"command": " ".join(["python -m benchmarks.validation", *sys.argv[1:]]),
            "num_patients": num_patients, "data_seed": _DATA_SEED.value,
            "num_images": num_images, "image_size": 128, "num_steps": num_steps,
            "batch_size": 16, "seeds": seeds, "unannotated_fraction": UNANNOTATED_FRACTION,
            "boxed_classes": list(BOXED_CLASSES), "data_seconds": data_seconds,
            "run_seconds": round(sum(r["train_seconds"] + r.get("eval_seconds", 0)
                                     for r in records), 1),
            "seconds_this_invocation": round(time.time() - start, 1), "runs": records}
    with open(output_dir / "results.json", "w") as f:
        json.dump({"meta": meta, "analysis": analysis}, f, indent=1)
    with open(output_dir / "results.md", "w") as f:
        f.write(markdown(analysis, meta))
    figures = plot(analysis, output_dir)
    print(f"\nDone in {time.time() - start:.0f} s: {output_dir / 'results.md'}, "
          f"{output_dir / 'results.json'}, {', '.join(figures)}")
    for name in experiments:
        print(f"  {name}: claim {'holds' if analysis[name]['holds'] else 'does NOT hold'}")


if __name__ == "__main__":
    app.run(main)
