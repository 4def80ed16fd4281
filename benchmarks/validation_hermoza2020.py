"""Validation of Hermoza et al. 2020 (issue 16) on the synthetic set of benchmarks/validation.py.

    nice python -m benchmarks.validation_hermoza2020 --workdir /tmp/chestxray_validation_hermoza \
        --num_patients 200 --seeds 0 --hermoza_steps 120,40,80

Question (paper 002, Tables 2 and 3): is the Mix map (saliency refined by the region
proposals) at least as good as the saliency alone (Sal), in average IoU and in accuracy at
T(IoU) >= 0.3? The paper tunes its binarisation thresholds on the boxed test images; this
reports those test-tuned figures and, beside them, the cross-tuned ones (thresholds tuned on one
patient half of the boxed images, scored on the other, then swapped), from the same checkpoint.

Per seed it runs the real binaries: `chestxray_tf.cli.train` with `configs/hermoza2020.py:tiny`
(the paper's three stages, losses, protocol and augmentation at tiny widths) at 128 px with the
given steps per stage, then `chestxray_tf.cli.evaluate` (test-tuned: the config's protocol; the
three map variants); the cross-tuned figures come from the same predictions with
`eval.threshold_selection = "cross-tuned"` (`evaluation.evaluate.compute_results`). Data and
statistics are those of benchmarks/validation.py. Chance: `localization_chance` of each result.
Writes OUTPUT_DIR/results.json and results.md.
"""

import copy
import json
import pathlib
import sys
import time

from absl import app, flags

from benchmarks import validation

OUTPUT = validation.REPO / "docs" / "validation" / "hermoza2020"
VARIANTS = ("mix", "sal", "det")
SELECTIONS = ("test-tuned", "cross-tuned")
IOU = "0.3"

_OUT = flags.DEFINE_string("hermoza_output_dir", str(OUTPUT), "results.json / .md go here.")
_STEPS = flags.DEFINE_list("hermoza_steps", ["120", "40", "80"],
                           "Steps of the classification, detection and joint stages.")


def _train(seed, manifest, run_dir, steps):
    stages = ("classification", "detection", "joint")
    code, seconds = validation._call(  # pylint: disable=protected-access
        [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/hermoza2020.py:tiny",
         f"--workdir={run_dir}", f"--config.data.manifest={manifest}",
         "--config.data.image_size=128", "--config.train.batch_size=8",
         "--config.train.num_val_images=64", "--config.eval.batch_size=16",
         f"--config.seed={seed}", "--config.train.strategy=default",
         *[f"--config.stages.{s}.num_steps={n}" for s, n in zip(stages, steps)]],
        run_dir / "train.log")
    if code:
        raise RuntimeError(f"training seed {seed} failed: {run_dir / 'train.log'}")
    return seconds


def _cross_tuned(run_dir):
    """{variant: results} of the latest checkpoint with cross-tuned thresholds."""
    # pylint: disable=import-outside-toplevel
    from chestxray_tf import workdir as workdir_lib
    from chestxray_tf.evaluation import evaluate
    config, model, _ = workdir_lib.restore_model(str(run_dir))
    pred = evaluate.predict(model, config, evaluate.split_ids(config, "test_fold"),
                            progress=False)
    crossed = copy.deepcopy(config)
    with crossed.unlocked():
        crossed.eval.threshold_selection = "cross-tuned"
    return {v: evaluate.compute_results(pred, crossed, "test_fold", v) for v in VARIANTS}


def run_seed(seed, manifest, workdir, steps):
    """Trains and evaluates one seed (reused when done); {selection: {variant: results}}."""
    run_dir = workdir / "runs" / f"hermoza2020_s{seed}"
    record_path = run_dir / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    train_seconds = _train(seed, manifest, run_dir, steps)
    code, eval_seconds = validation._call(  # pylint: disable=protected-access
        [sys.executable, "-m", "chestxray_tf.cli.evaluate", f"--workdir={run_dir}"],
        run_dir / "evaluate.log")
    if code:
        raise RuntimeError(f"evaluating seed {seed} failed: {run_dir / 'evaluate.log'}")
    out = run_dir / "eval" / "test_fold"
    tuned = {v: json.loads(((out if v == "mix" else out / v) / "report.json").read_text())[
        "results"] for v in VARIANTS}
    record = {"seed": seed, "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(eval_seconds, 1),
              "results": {"test-tuned": tuned, "cross-tuned": _cross_tuned(run_dir)}}
    record_path.write_text(json.dumps(record, default=float))
    return record


def _metrics(results):
    """(average IoU, accuracy at IoU >= 0.3, its chance level), means over the boxed classes."""
    chance = results.get("localization_chance", {}).get("iou", {}).get(IOU, {}).get("mean")
    return (results.get("average_iou", {}).get("mean"),
            results["localization"]["iou"][IOU]["mean"], chance)


def _difference(mix, sal):
    """Mix - Sal, "clear" only over 2+ seeds when it exceeds the sum of the stds."""
    if mix["mean"] is None or sal["mean"] is None:
        return {"difference": None, "clearly": False}
    found = validation._clearly_above(mix, sal)  # pylint: disable=protected-access
    return {**found, "clearly": found["clearly"] and min(mix["n"], sal["n"]) > 1}


def analyse(records):
    s = validation.summarize
    out = {}
    for selection in SELECTIONS:
        table = {}
        for variant in VARIANTS:
            values = [_metrics(r["results"][selection][variant]) for r in records]
            table[variant] = {"average_iou": s([v[0] for v in values]),
                              "accuracy": s([v[1] for v in values]),
                              "chance": s([v[2] for v in values])}
        table["mix_minus_sal"] = {k: _difference(table["mix"][k], table["sal"][k])
                                  for k in ("average_iou", "accuracy")}
        out[selection] = table
    out["auc_mean"] = s([r["results"]["test-tuned"]["mix"]["auc"]["mean"] for r in records])
    return out


def markdown(analysis, meta):
    pm = validation._pm  # pylint: disable=protected-access
    lines = [f"# Hermoza et al. 2020 on the synthetic set\n\n`{meta['command']}`: "
             f"{meta['num_images']} images ({meta['num_patients']} patients), 128 px, tiny "
             f"widths, stages of {', '.join(meta['steps'])} steps (batch 8), seeds "
             f"{meta['seeds']}; mean +- std over seeds (one seed: no std); mean AUC "
             f"{pm(analysis['auc_mean'])}; {meta['seconds']:.0f} s.\n",
             f"| thresholds | map | average IoU | accuracy IoU >= {IOU} | chance (same boxes "
             "at random places) |", "|---|---|---|---|---|"]
    for selection in SELECTIONS:
        for variant in VARIANTS:
            v = analysis[selection][variant]
            lines.append(f"| {selection} | {variant} | {pm(v['average_iou'])} | "
                         f"{pm(v['accuracy'])} | {pm(v['chance'])} |")
    lines.append("")
    for selection in SELECTIONS:
        d = analysis[selection]["mix_minus_sal"]
        text = {k: "n/a" if d[k]["difference"] is None else f"{d[k]['difference']:+.3f}"
                for k in d}
        lines.append(f"- {selection}: Mix - Sal = {text['average_iou']} average IoU, "
                     f"{text['accuracy']} accuracy "
                     f"({'clear' if d['accuracy']['clearly'] else 'not clear'}; one seed "
                     "is never clear).")
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start = time.time()
    workdir = pathlib.Path(validation._WORKDIR.value).resolve()  # pylint: disable=protected-access
    workdir.mkdir(parents=True, exist_ok=True)
    num_patients = validation._PATIENTS.value  # pylint: disable=protected-access
    manifest, data_seconds = validation.make_data(workdir, num_patients)
    seeds = [int(s) for s in validation._SEEDS.value]  # pylint: disable=protected-access
    steps = [int(n) for n in _STEPS.value]
    records = [run_seed(seed, manifest, workdir, steps) for seed in seeds]
    analysis = analyse(records)
    meta = {"command": " ".join(["python -m benchmarks.validation_hermoza2020", *sys.argv[1:]]),
            "num_patients": num_patients,
            "num_images": json.loads(manifest.read_text())["num_images"],
            "steps": [str(n) for n in steps], "seeds": seeds, "data_seconds": data_seconds,
            "seconds": round(time.time() - start, 1),
            "runs": [{k: r[k] for k in ("seed", "train_seconds", "eval_seconds")}
                     for r in records]}
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "analysis": analysis},
                                                 indent=1, default=float))
    (out / "results.md").write_text(markdown(analysis, meta))
    print(markdown(analysis, meta))


if __name__ == "__main__":
    app.run(main)
