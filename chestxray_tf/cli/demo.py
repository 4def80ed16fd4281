"""`make demo`: the main job end to end on the built-in synthetic data set.

synthetic NIH-layout folder -> TFRecords -> train `configs/demo.py` -> evaluate -> SavedModel,
all under `--workdir` (default `demo_workdir/`), from any current folder. A second run reuses
what the first made (the training resumes; evaluation is redone; the SavedModel of a checkpoint
already exported is kept).
"""

import json
import os
import time

from absl import app, flags

import chestxray_tf
from chestxray_tf import cli, export
from chestxray_tf.data import build, synthetic
from chestxray_tf.evaluation import evaluate
from chestxray_tf import workdir as workdir_lib
from chestxray_tf.training import trainer

DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    chestxray_tf.__file__))), "configs", "demo.py")
_CONFIG = cli.define_config(DEMO_CONFIG, "The demo's config.")
_WORKDIR = flags.DEFINE_string("workdir", "demo_workdir", "Where everything is written.")
_PATIENTS = flags.DEFINE_integer("num_patients", 1000, "Synthetic patients (~3 images each).")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 256, "Size of the synthetic PNGs.")


def _step(title):
    print(f"\n== {title}", flush=True)
    return time.time()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)  # the config first
    if _CONFIG.print_only:
        print(config.to_json_best_effort(indent=2))
        return 0
    cli.quiet_tensorflow()
    nih_dir, records = os.path.join(workdir, "nih"), os.path.join(workdir, "tfrecords")
    run_dir = os.path.join(workdir, "run")
    start = time.time()

    t = _step(f"1/5 synthetic NIH-layout data set ({_PATIENTS.value} patients) -> {nih_dir}")
    if not os.path.exists(os.path.join(nih_dir, synthetic.TEST_LIST)):
        summary = synthetic.generate(nih_dir, num_patients=_PATIENTS.value,
                                     image_size=_SOURCE_SIZE.value, seed=0)
        print(f"{summary['num_images']} images, {summary['num_boxes']} boxes "
              f"({time.time() - t:.0f} s)")
    else:
        print("exists, reused")

    t = _step(f"2/5 TFRecords at {config.data.image_size} px -> {records}")
    if not os.path.exists(os.path.join(records, "manifest.json")):
        build.build(nih_dir, records, image_size=config.data.image_size, num_shards=4,
                    command="chestxray_tf.cli.demo")
        print(f"built ({time.time() - t:.0f} s)")
    else:
        print("exists, reused")

    t = _step(f"3/5 train {config.name}: {config.train.num_steps} steps -> {run_dir}")
    with config.unlocked():
        config.data.manifest = os.path.join(records, "manifest.json")
    trainer.train(config, run_dir)
    print(f"trained ({time.time() - t:.0f} s)")

    t = _step("4/5 evaluate on the held-out fold")
    paths = evaluate.evaluate(run_dir, "latest", "test_fold")
    with open(paths["json"]) as f:
        results = json.load(f)["results"]
    print(f"evaluated ({time.time() - t:.0f} s)")

    t = _step("5/5 export the SavedModel")
    restored_config, model, checkpoint = workdir_lib.restore_model(run_dir)
    saved_model = os.path.join(run_dir, "export", os.path.basename(checkpoint))
    if os.path.exists(saved_model):
        print(f"{saved_model} exists (this checkpoint's), reused")
    else:
        export.export_saved_model(model, restored_config, saved_model)
        print(f"exported ({time.time() - t:.0f} s)")

    print(f"\nDone in {time.time() - start:.0f} s.")
    print(f"  mean AUC (200 thresholds) {results['auc']['mean']:.3f}")
    for metric, threshold in (("IoU", "0.1"), ("IoU", "0.3"), ("IoR", "0.1")):
        model_acc, chance_acc = (results[key][metric.lower()][threshold]["mean"]
                                 for key in ("localization", "localization_chance"))
        print(f"  localization accuracy T({metric})={threshold}: {model_acc:.3f} "
              f"(chance, the same regions at random places: {chance_acc:.3f})")
    print(f"  report:      {paths['markdown']}")
    print(f"  figures:     {paths['out_dir']}/*.png")
    print(f"  SavedModel:  {saved_model}")
    print(f"  TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'stages')}")


if __name__ == "__main__":
    cli.run(main)
