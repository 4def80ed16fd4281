"""Validation of Sedai et al. 2018 (issue 14) on the synthetic set of benchmarks/validation.py.

    nice python -m benchmarks.validation_sedai2018 --workdir /tmp/chestxray_validation_sedai \
        --num_patients 300 --seeds 0,1 --sedai_steps 300

Questions (paper 003, Fig. 2 and Table 1):
* relevance: does the weight of the shallowest tapped block w_1^c of a small lesion (Nodule)
  exceed that of a large one (Cardiomegaly)?
* multiscale: does the multiscale attention map (Eq. 3) localize small lesions (Nodule, Mass)
  better than the last block's CAM alone (the "deepest" map variant of the same model)?

Per seed it runs the real binaries: `chestxray_tf.cli.train` with `configs/sedai2018.py:tiny`
(tiny DenseNet, Sedai's protocol, loss, schedule) at 128 px, then `chestxray_tf.cli.evaluate`
(best-by-validation-loss checkpoint; both map variants). The data (`validation.make_data`,
same flags `--num_patients`, `--source_size`, `--data_seed`) and the statistics
(`validation.summarize`, `_clearly_above`: a difference is clear when it exceeds the sum of the
stds) are those of benchmarks/validation.py. Chance: `localization_chance` of the report.
Writes OUTPUT_DIR/results.json and results.md.
"""

import json
import pathlib
import sys
import time

from absl import app, flags

from benchmarks import validation

OUTPUT = validation.REPO / "docs" / "validation" / "sedai2018"
SMALL, LARGE = ("Nodule", "Mass"), "Cardiomegaly"
IOU = "0.3"

_OUT = flags.DEFINE_string("sedai_output_dir", str(OUTPUT), "results.json / results.md go here.")
_STEPS = flags.DEFINE_integer("sedai_steps", 300, "Training steps per run (batch 16).")


def run_seed(seed, manifest, workdir, num_steps):
    """Trains and evaluates one seed (reused when done); {variant: report results, weights}."""
    run_dir = workdir / "runs" / f"sedai2018_s{seed}"
    record_path = run_dir / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    code, train_seconds = validation._call(  # pylint: disable=protected-access
        [sys.executable, "-m", "chestxray_tf.cli.train", "--config=configs/sedai2018.py:tiny",
         f"--workdir={run_dir}", f"--config.data.manifest={manifest}",
         "--config.data.image_size=128", "--config.train.batch_size=16",
         f"--config.train.num_steps={num_steps}",
         f"--config.train.steps_per_epoch={num_steps // 5}",
         f"--config.train.checkpoint_every_steps={num_steps}", "--config.train.num_val_images=128",
         "--config.eval.batch_size=32", f"--config.seed={seed}"], run_dir / "train.log")
    if code:
        raise RuntimeError(f"training seed {seed} failed: {run_dir / 'train.log'}")
    code, eval_seconds = validation._call(  # pylint: disable=protected-access
        [sys.executable, "-m", "chestxray_tf.cli.evaluate", f"--workdir={run_dir}",
         "--checkpoint=best"], run_dir / "evaluate.log")
    if code:
        raise RuntimeError(f"evaluating seed {seed} failed: {run_dir / 'evaluate.log'}")
    out = run_dir / "eval" / "test_fold-best"
    main = json.loads((out / "report.json").read_text())
    deepest = json.loads((out / "deepest" / "report.json").read_text())
    weights = next(v for k, v in main["details"].items() if k.startswith("Relevance"))
    record = {"seed": seed, "train_seconds": round(train_seconds, 1),
              "eval_seconds": round(eval_seconds, 1),
              "weights": {row[0]: row[1:] for row in weights["rows"]},
              "multiscale": main["results"], "deepest": deepest["results"]}
    record_path.write_text(json.dumps(record))
    return record


def _accuracy(results, name, key="localization"):
    return results[key]["iou"][IOU]["per_class"].get(name)


def analyse(records):
    """The two questions' numbers over seeds."""
    clearly_above = validation._clearly_above  # pylint: disable=protected-access
    s = validation.summarize
    relevance = {name: s([r["weights"][name][0] for r in records]) for name in SMALL + (LARGE,)}
    multiscale = {}
    for name in SMALL + (LARGE,):
        multi = s([_accuracy(r["multiscale"], name) for r in records])
        deep = s([_accuracy(r["deepest"], name) for r in records])
        chance = s([_accuracy(r["multiscale"], name, "localization_chance") for r in records])
        multiscale[name] = {"multiscale": multi, "deepest": deep, "chance": chance,
                            "compare": clearly_above(multi, deep)}
    return {"relevance_w1": relevance,
            "relevance_holds": clearly_above(relevance["Nodule"], relevance[LARGE]),
            "localization_acc_iou0.3": multiscale,
            "auc_mean": s([r["multiscale"]["auc"]["mean"] for r in records])}


def markdown(analysis, meta):
    pm = validation._pm  # pylint: disable=protected-access
    lines = [f"# Sedai et al. 2018 on the synthetic set\n\n`{meta['command']}`: "
             f"{meta['num_images']} images ({meta['num_patients']} patients), 128 px, tiny "
             f"DenseNet, {meta['num_steps']} steps of batch 16, seeds {meta['seeds']}; mean +- "
             f"std over seeds; mean AUC {pm(analysis['auc_mean'])}.\n",
             "## Relevance weight of the shallowest block, w_1^c\n",
             "| class | w_1 |", "|---|---|"]
    lines += [f"| {k} | {pm(v)} |" for k, v in analysis["relevance_w1"].items()]
    rel = analysis["relevance_holds"]
    lines += [f"\nNodule - Cardiomegaly: {rel['difference']:+.3f} "
              f"({'clear' if rel['clearly'] else 'not clear'}).\n",
              f"## Localization accuracy at T(IoU) > {IOU}\n",
              "| class | multiscale (Eq. 3) | deepest block CAM | chance | difference |",
              "|---|---|---|---|---|"]
    for k, v in analysis["localization_acc_iou0.3"].items():
        lines.append(f"| {k} | {pm(v['multiscale'])} | {pm(v['deepest'])} | {pm(v['chance'])} "
                     f"| {v['compare']['difference']:+.3f}"
                     f"{' (clear)' if v['compare']['clearly'] else ''} |")
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
    records = [run_seed(seed, manifest, workdir, _STEPS.value) for seed in seeds]
    analysis = analyse(records)
    meta = {"command": " ".join(["python -m benchmarks.validation_sedai2018", *sys.argv[1:]]),
            "num_patients": num_patients, "num_images": json.loads(manifest.read_text())[
                "num_images"], "num_steps": _STEPS.value, "seeds": seeds,
            "data_seconds": data_seconds, "seconds": round(time.time() - start, 1),
            "runs": [{k: r[k] for k in ("seed", "train_seconds", "eval_seconds", "weights")}
                     for r in records]}
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "analysis": analysis},
                                                 indent=1))
    (out / "results.md").write_text(markdown(analysis, meta))
    print(markdown(analysis, meta))


if __name__ == "__main__":
    app.run(main)
