"""Kim et al. (paper 002) on synthetic data (issue #17's evidence): do the disease masks raise
localization accuracy over +Alignment alone and over the 10-epoch control, and do the
pseudo-disease masks do worse than the learned masks?

    nice python -m benchmarks.validation_kim [--workdir /tmp/kim_validation] [--seeds 0]

The machinery of `benchmarks.validation` (the same synthetic set builder, `make_data`, and
process runner, `_call`): `tfrecords_tools.make_synthetic` + `build_nih` (128 px; the
synthetic lesions have location priors), then per seed one `chestxray_tf.cli.train` of
`configs/kim.py:tiny` with the model at 64 px (s0 -> anchor -> s1 -> s2 -> s3 -> s4, tiny
ResNets, a 4 x 4 CAM, `STEPS` steps of batch 16: the machine's 2 shared cores give about 1 s
per step, so one seed fits the 8-minute budget); the pseudo-mask run and the control start from that run's s2 (its stage folders copied
into their own workdirs, as Table 2's caption and brief erratum 10 say: "a ResNet-50 pretrained
on aligned X-ray images as a base model") and run s3 (masks=pseudo, resp. masks=none) and s4.
`chestxray_tf.cli.evaluate` then measures the s0, s2 and s4 checkpoints on the official test
split: accuracy of the best box IoU > T at T = 0.3 / 0.5 / 0.7 (180/255 binarisation), the
chance level (random placements of the same boxes, `evaluation.localize`), and the mean AUC.
Writes OUTPUT_DIR/results.json and results.md.
"""

import json
import pathlib
import shutil
import sys

from absl import app, flags
import numpy as np

from benchmarks import validation

REPO = validation.REPO
STEPS = {"s0": 60, "s1": 40, "s2": 60, "s4": 60}
ROWS = (("base (s0)", "disease", "0_s0"), ("+Alignment (s2)", "disease", "3_s2"),
        ("+Alignment+DM (s4)", "disease", "5_s4"), ("+PDM (s4)", "pseudo", "5_s4"),
        ("control: +Alignment, 5 more epochs (s4, psi = 0)", "none", "5_s4"))
THRESHOLDS = ("0.3", "0.5", "0.7")

flags.FLAGS.set_default("workdir", "/tmp/kim_validation")
flags.FLAGS.set_default("output_dir", str(REPO / "docs" / "validation" / "kim"))
flags.FLAGS.set_default("num_patients", 200)
flags.FLAGS.set_default("seeds", ["0"])


def _flags(manifest, seed, masks):
    out = [f"--config={REPO / 'configs' / 'kim.py'}:tiny,masks={masks}",
           f"--config.data.manifest={manifest}", "--config.data.image_size=64",
           "--config.model.cam_size=64", "--config.model.mask_min_images=10",
           f"--config.seed={seed}", "--config.train.num_val_images=64",
           "--config.train.checkpoint_every_steps=100", "--config.eval.batch_size=32"]
    for name, steps in STEPS.items():
        out += [f"--config.stages.{name}.num_steps={steps}",
                f"--config.stages.{name}.batch_size=16"]
    return out


def run(manifest, workdir, seed, masks):
    """Trains one run (reusing s0..s2 of the seed's "disease" run); returns its workdir."""
    run_dir = workdir / "runs" / f"{masks}_seed{seed}"
    if masks != "disease" and not (run_dir / "stages").exists():
        source = workdir / "runs" / f"disease_seed{seed}" / "stages"
        for folder in ("0_s0", "1_anchor", "2_s1", "3_s2"):
            shutil.copytree(source / folder, run_dir / "stages" / folder)
    run_dir.mkdir(parents=True, exist_ok=True)
    code, seconds = validation._call(  # pylint: disable=protected-access
        [sys.executable, "-m", "chestxray_tf.cli.train", f"--workdir={run_dir}",
         *_flags(manifest, seed, masks)], run_dir / "train.log")
    if code:
        raise RuntimeError(f"training failed, see {run_dir / 'train.log'}")
    print(f"{run_dir.name}: trained in {seconds:.0f} s", flush=True)
    return run_dir


def evaluate(run_dir, folder):
    """cli.evaluate of the final checkpoint of stage `folder`; its metrics."""
    checkpoints = run_dir / "stages" / folder / "checkpoints"
    state = (checkpoints / "checkpoint").read_text()
    name = state.split('"')[1]
    code, _ = validation._call(  # pylint: disable=protected-access
        [sys.executable, "-m", "chestxray_tf.cli.evaluate", f"--workdir={run_dir}",
         f"--checkpoint={checkpoints / name}"], run_dir / f"evaluate_{folder}.log")
    if code:
        raise RuntimeError(f"evaluation failed, see {run_dir / f'evaluate_{folder}.log'}")
    report = json.loads((run_dir / "eval" / f"test_fold-{name}" / "report.json").read_text())
    results = report["results"]
    out = {"auc_mean": results["auc"]["mean"]}
    for t in THRESHOLDS:
        out[f"iou_{t}"] = results["localization"]["iou"][t]["mean"]
        out[f"iou_{t}_per_class"] = results["localization"]["iou"][t]["per_class"]
        out[f"chance_iou_{t}"] = results["localization_chance"]["iou"][t]["mean"]
    return out


def _pm(values):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    return (f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1
            else f"{values[0]:.3f}")


def markdown(records, seeds, meta):
    lines = [f"# Kim et al. on synthetic data ({meta['num_patients']} patients, 64 px, seeds "
             f"{', '.join(map(str, seeds))})", "",
             f"Steps per stage (batch 16): {STEPS}. Mean ± sample std over seeds; the chance "
             "level is the accuracy of the same boxes placed at random.", "",
             "| model | " + " | ".join(f"acc IoU>{t}" for t in THRESHOLDS)
             + " | chance IoU>0.3 | mean AUC |", "|---" * (len(THRESHOLDS) + 2) + "|---|"]
    for label, *_ in ROWS:
        rows = records[label]
        lines.append(f"| {label} | " + " | ".join(_pm([r[f"iou_{t}"] for r in rows])
                                                  for t in THRESHOLDS)
                     + f" | {_pm([r['chance_iou_0.3'] for r in rows])} | "
                     f"{_pm([r['auc_mean'] for r in rows])} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    workdir = pathlib.Path(flags.FLAGS.workdir)
    output = pathlib.Path(flags.FLAGS.output_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    output.mkdir(parents=True, exist_ok=True)
    manifest, timings = validation.make_data(workdir, flags.FLAGS.num_patients)
    seeds = [int(s) for s in flags.FLAGS.seeds]
    records = {label: [] for label, *_ in ROWS}
    for seed in seeds:
        dirs = {m: run(manifest, workdir, seed, m) for m in ("disease", "pseudo", "none")}
        for label, masks, folder in ROWS:
            metrics = evaluate(dirs[masks], folder)
            records[label].append({"seed": seed, **metrics})
            print(label, seed, {k: v for k, v in metrics.items() if "per_class" not in k},
                  flush=True)
    meta = {"num_patients": flags.FLAGS.num_patients, "steps": STEPS, "seeds": seeds,
            "data_seconds": timings}
    (output / "results.json").write_text(json.dumps({"meta": meta, "records": records},
                                                    indent=1))
    (output / "results.md").write_text(markdown(records, seeds, meta))
    print((output / "results.md").read_text())


if __name__ == "__main__":
    app.run(main)
