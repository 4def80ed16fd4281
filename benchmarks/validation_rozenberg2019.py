"""Rozenberg et al. 2019 on synthetic data (issue 15): does the relaxed loss + PAC-CRF beat
Li et al. at T(IoU) = T(IoR) = 0.1 with 80% annotated + 0% / 20% unannotated images, and what
does the CRF add over the base trained with the relaxed loss alone?

    nice python -m benchmarks.validation_rozenberg2019 [--workdir /tmp/rozenberg2019_validation]

The machinery of `benchmarks.validation` (the synthetic set and its TFRecords, `make_data`;
the binaries run one process each, `_call`; the metrics of a report, `metrics_of`; mean +- std
over seeds, `summarize`): per setting (unannotated 0 / 0.2 of the unannotated images, the
li2018 protocol with 80% of the annotated ones) and seed,
* `cli.train --config=configs/validation.py:li2018` (Li et al., P = 8, 128 px), and
* `cli.train --config=configs/rozenberg2019.py:tiny,unannotated=U` at the same size (tiny
  anti-aliased ResNet-v2, P = 8, CRF window 7) with 3 + 2 threshold rounds,
then `cli.evaluate` on fold 0 under the paper's protocol (region map >= 0.5, hit overlap >=
T, both inclusive) for both. The Rozenberg report's "unary" variant is the base model's p
(the base is frozen in stage 2, so p is the stage-1 model: relaxed loss, no CRF); its main
map is z (with the CRF). Chance: the evaluation's `localization_chance` (a uniformly random
region of the same size).
"""

import json
import pathlib
import sys
import time

from absl import app, flags

from benchmarks import validation as v

ROZENBERG_CONFIG = v.REPO / "configs" / "rozenberg2019.py"
SETTINGS = (0, 20)  # percent of the unannotated images (Table 1's halves)
METHODS = ("li2018", "rozenberg2019")
# (label, method, report subfolder): the maps compared.
MAPS = (("Li et al. 2018", "li2018", ""), ("relaxed loss, no CRF (p)", "rozenberg2019", "unary"),
        ("relaxed loss + CRF (z)", "rozenberg2019", ""))
# The paper's protocol for Li's runs too (Rozenberg's config has it).
PROTOCOL = ["--config.eval.inclusive=True", "--config.eval.region_inclusive=True"]
SIZE = ["--config.data.image_size=128", "--config.train.batch_size=16",
        "--config.train.eval_every_steps=1000", "--config.train.num_val_images=32",
        "--config.train.checkpoint_every_steps=1000", "--config.train.log_every_steps=50"]

_OUT = flags.DEFINE_string("rozenberg_output_dir",
                           str(v.REPO / "docs" / "validation" / "rozenberg2019"),
                           "Where results.json and results.md go.")
_BASE_STEPS = flags.DEFINE_integer("base_steps", 240, "Stage-1 steps (Li: the same).")
_CRF_STEPS = flags.DEFINE_integer("crf_steps", 80, "Stage-2 steps.")


def train_command(method, setting, seed, run_dir, manifest):
    common = [f"--workdir={run_dir}", f"--config.data.manifest={manifest}",
              f"--config.seed={seed}", *SIZE]
    if method == "li2018":
        return [f"--config={v.CONFIG}:li2018", *common, "--config.data.annotated_fraction=0.8",
                f"--config.data.unannotated_fraction={setting / 100}",
                f"--config.train.num_steps={_BASE_STEPS.value}", *PROTOCOL]
    return [f"--config={ROZENBERG_CONFIG}:tiny,unannotated={setting}", *common,
            "--config.model.grid=8", "--config.model.head_width=64",
            "--config.model.crf_window=7", "--config.model.crf_feature_resize=4",
            "--config.thresholds.rounds_base=3", "--config.thresholds.rounds_crf=2",
            "--config.train.lr_decay_epochs=10",
            f"--config.stages.base.num_steps={_BASE_STEPS.value}",
            f"--config.stages.crf.num_steps={_CRF_STEPS.value}"]


def run_one(method, setting, seed, manifest, workdir):
    """Trains and evaluates one run (reused when done); {variant: metrics} or an error."""
    run_dir = workdir / "runs" / f"{method}_un{setting}_seed{seed}"
    record_path = run_dir / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "unannotated": setting, "seed": seed}
    for binary, args in (("train", train_command(method, setting, seed, run_dir, manifest)),
                         ("evaluate", [f"--workdir={run_dir}"])):
        code, seconds = v._call([sys.executable, "-m", f"chestxray_tf.cli.{binary}", *args],
                                run_dir / f"{binary}.log")
        record[f"{binary}_seconds"] = round(seconds, 1)
        if code:
            record.update(status="failed", error=v._tail(run_dir / f"{binary}.log", 10))
            return record
    eval_dir = run_dir / "eval" / "test_fold"
    record["metrics"] = {
        variant: v.metrics_of(json.loads((eval_dir / variant / "report.json").read_text())
                              ["results"])
        for variant in (("", "unary") if method == "rozenberg2019" else ("",))}
    record["status"] = "ok"
    record_path.write_text(json.dumps(record, indent=1))
    return record


def analyse(records):
    """Per setting and metric: mean +- std over seeds of each map, chance, and the two
    differences the issue asks for (ours - Li, CRF - no CRF)."""
    out = {}
    for setting in SETTINGS:
        for metric in ("iou_0.1", "ior_0.1"):
            row = {}
            for label, method, variant in MAPS:
                picked = [r["metrics"][variant][metric] for r in records
                          if r.get("status") == "ok" and r["method"] == method
                          and r["unannotated"] == setting]
                row[label] = v.summarize(picked)
            row["chance"] = v.summarize([r["metrics"][""][f"chance_{metric}"] for r in records
                                         if r.get("status") == "ok"
                                         and r["method"] == "rozenberg2019"
                                         and r["unannotated"] == setting])
            if all(row[label]["n"] for label, _, _ in MAPS):
                row["ours - Li"] = v._clearly_above(row[MAPS[2][0]], row[MAPS[0][0]])
                row["CRF - no CRF"] = v._clearly_above(row[MAPS[2][0]], row[MAPS[1][0]])
            out[f"un{setting}/{metric}"] = row
    return out


def markdown(analysis, meta):
    lines = ["# Rozenberg et al. 2019 on synthetic data", "",
             f"`{meta['command']}`: {meta['num_patients']} synthetic patients "
             f"({meta['image_size']} px), seeds {meta['seeds']}, {meta['base_steps']} stage-1 "
             f"steps (Li: the same), {meta['crf_steps']} CRF steps, batch 16; test = fold 0's "
             "boxed images; region map >= 0.5 and hit overlap >= T (inclusive). Mean +- std "
             "over seeds; chance = a random region of the same size.", "",
             "| setting | T | " + " | ".join(label for label, _, _ in MAPS)
             + " | chance (z) | ours - Li | CRF - no CRF |", "|---" * (len(MAPS) + 5) + "|"]
    for key, row in analysis.items():
        setting, metric = key.split("/")
        cells = [v._pm(row[label]) for label, _, _ in MAPS] + [v._pm(row["chance"])]
        for diff in ("ours - Li", "CRF - no CRF"):
            d = row.get(diff)
            clear = d is not None and d["clearly"] and row["chance"]["n"] > 1
            cells.append("—" if d is None else f"{d['difference']:+.3f}"
                         + (" (clear)" if clear else ""))
        lines.append(f"| {setting} | {metric.replace('_', ' >= ').upper()} | "
                     + " | ".join(cells) + " |")
    lines += ["", "\"clear\": the difference exceeds the sum of the two stds over >= 2 seeds "
              "(never claimed from one seed). Chance (z): a random region of the size of z's."]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    start = time.time()
    workdir = pathlib.Path(v._WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    manifest, data_seconds = v.make_data(workdir, v._PATIENTS.value)
    seeds = [int(s) for s in v._SEEDS.value]
    records = []
    for seed in seeds:  # seed-major: a cut-short run still has every setting
        for setting in SETTINGS:
            for method in METHODS:
                record = run_one(method, setting, seed, manifest, workdir)
                print(f"{method} un{setting} seed {seed}: {record.get('status')} "
                      f"{record.get('train_seconds')} s", flush=True)
                records.append(record)
    meta = {"command": " ".join(["python -m benchmarks.validation_rozenberg2019", *sys.argv[1:]]),
            "num_patients": v._PATIENTS.value, "image_size": 128, "seeds": seeds,
            "base_steps": _BASE_STEPS.value, "crf_steps": _CRF_STEPS.value,
            "data_seconds": data_seconds, "total_seconds": round(time.time() - start, 1)}
    analysis = analyse(records)
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "analysis": analysis,
                                                  "runs": records}, indent=1))
    (out / "results.md").write_text(markdown(analysis, meta))
    print(markdown(analysis, meta))


if __name__ == "__main__":
    app.run(main)
