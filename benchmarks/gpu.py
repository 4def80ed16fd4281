"""GPU benchmark (issue 19): training images/s and peak device memory of every task, per
precision policy and XLA setting, beside its bare backbone; and the input pipeline's rate.

    python -m benchmarks.gpu --workdir /tmp/bench_gpu        # one GPU, under 8 minutes
    python -m benchmarks.gpu --quick                         # any CPU: tiny sizes (CI runs it)

Nothing is downloaded: a synthetic NIH-layout set is generated and built on the fly
(`synthetic.generate`, `build.build`, PNG) at the largest image size of the tasks' paper configs,
and every backbone starts from random weights.

Per task (its paper config, `configs/<task>.py`, or its `:tiny` mode with `--quick`), precision
(`train.precision`), XLA setting (`train.jit_compile`) and steps per call
(`train.steps_per_loop`), the benchmark drives the task's first gradient stage with the trainer
itself (`trainer.Run` and `StageTrainer`: the model, the optimizer and loss scaling,
`make_train_loop`, the uint8 grey input normalised on the device). Its input is the training
pipeline's first batches, cached, so the figure is the step's, not the decoder's. One call
traces (and compiles); then `--steps` steps are timed. Beside it, the same measurement of the task's bare backbone: its backbone -> global
average pool -> dense -> sigmoid cross-entropy (the `baseline` task with the task's backbone),
at the same size, batch and settings; the ratio task / bare is the cost of the paper's head
and loss. Peak device memory is TensorFlow's allocator peak on the first GPU
(`tf.config.experimental.get_memory_info`) from building the model to the last step (n/a on a
CPU). A setting that fails (e.g. an op without an XLA kernel) is reported with its error.

The input pipeline: images/s of `pipeline.make_dataset` (training, uint8 grey, box masks on
16 x 16 patches) on the same set, against its decode-only bound.

Settings are measured in the order float32 for every task, then each further setting for every
task; no measurement starts after `--budget_minutes` (7 by default, so the whole run stays
under 8 minutes plus the data build), and the ones left out are listed. Prints one Markdown
table and writes WORKDIR/gpu.json.
"""

import gc
import importlib.util
import json
import os
import platform
import tempfile
import time

from absl import app, flags
import keras
import tensorflow as tf

from chestxray_tf.data import build, synthetic
from chestxray_tf.tasks import TASKS
from chestxray_tf.training import trainer
from benchmarks import rates

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/chestxray_tf_bench_gpu", "Scratch folder.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes (the configs' :tiny), for a CPU.")
_TASKS = flags.DEFINE_list("tasks", sorted(TASKS), "Tasks to measure.")
_PRECISIONS = flags.DEFINE_list("precisions", list(PRECISIONS), "train.precision values.")
_XLA = flags.DEFINE_list("xla", ["off", "on"], "train.jit_compile settings: off, on.")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed steps per setting (0: 30, 4 with --quick).")
_STEPS_PER_LOOP = flags.DEFINE_list("steps_per_loop", [],
                                    "train.steps_per_loop values (default: 10, 2 with --quick);"
                                    " e.g. 1,10 measures the host round trips.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Per-replica batch (0: the config's).")
_BUDGET_MINUTES = flags.DEFINE_float("budget_minutes", 7.0,
                                     "Start no measurement after this many minutes (the rest "
                                     "is listed as not run); the pipeline is timed after.")
_PIPELINE_SECONDS = flags.DEFINE_float("pipeline_seconds", 0,
                                       "Pipeline timing window (0: 5 s, 1 s with --quick).")


def _quick(full, quick):
    return quick if _QUICK.value else full


def task_config(task):
    """The paper config of `task` (`:tiny` with --quick), without downloads."""
    path = os.path.join(REPO, "configs", f"{task}.py")
    spec = importlib.util.spec_from_file_location(f"config_{task}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny" if _QUICK.value else "")
    for key in list(config.model.keys()):
        if key.endswith("weights"):
            config.model[key] = None  # random initial weights: nothing to download
    return config


def make_data(workdir, image_size):
    """The synthetic set built at `image_size` (reused when present): its manifest path."""
    source, records = os.path.join(workdir, "nih"), os.path.join(workdir, f"records_{image_size}")
    if not os.path.exists(os.path.join(records, "manifest.json")):
        if not os.path.exists(os.path.join(source, synthetic.DATA_ENTRY_CSV)):
            synthetic.generate(source, num_patients=_quick(40, 16), image_size=image_size,
                               seed=0, progress=False)
        build.build(source, records, image_size=image_size, num_shards=4, encoding="png",
                    num_workers=1, progress=False, command="benchmarks.gpu")
    return os.path.join(records, "manifest.json")


def _first_gradient_stage(run):
    return next(i for i, stage in enumerate(run.stages) if stage.kind == "gradient")


def _device():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name.split("device:")[-1] if gpus else None


def _configure(config, manifest, precision, xla, steps_per_loop):
    config.data.manifest = manifest
    config.train.update(precision=precision, jit_compile=xla, steps_per_loop=steps_per_loop,
                        progress_bar=False, num_val_images=0)
    if _BATCH_SIZE.value:
        config.train.batch_size = _BATCH_SIZE.value
    for stage in config.stages.values():
        if "batch_size" in stage:
            stage.batch_size = _BATCH_SIZE.value or stage.batch_size
        for key in ("precision", "jit_compile", "steps_per_loop"):
            if key in stage:
                stage[key] = config.train[key]
    return config


def measure_step(config, workdir):
    """Trains `config`'s first gradient stage on cached batches: {"images_per_s",
    "peak_memory_mb", "batch", "stage"}; a failure is {"error": its first line}."""
    device, steps_per_loop = _device(), config.train.steps_per_loop
    steps = _STEPS.value or _quick(30, 4)
    keras.backend.clear_session()
    gc.collect()
    if device:
        tf.config.experimental.reset_memory_stats(device)
    try:
        run = trainer.Run(config, workdir)
        index = _first_gradient_stage(run)
        stage = trainer.StageTrainer(run, run.stages[index], run.stage_dir(index))
        dataset_fn = stage._dataset_fn(0, 0)
        iterator = iter(stage.strategy.distribute_datasets_from_function(
            lambda context: dataset_fn(context).take(4).cache().repeat()))

        def loop(n):
            logs, _, done, finite = stage._train_loop(iterator, tf.constant(n, tf.int64))
            if not bool(finite):
                raise FloatingPointError(f"non-finite loss after {int(done)} steps")
            return float(logs["loss"])  # waits for the device

        loop(steps_per_loop)  # trace, compile, warm up
        start = time.perf_counter()
        for _ in range(max(1, steps // steps_per_loop)):
            loop(steps_per_loop)
        seconds = time.perf_counter() - start
        timed = max(1, steps // steps_per_loop) * steps_per_loop
        peak = tf.config.experimental.get_memory_info(device)["peak"] / 2**20 if device else None
        return {"images_per_s": timed * stage.global_batch / seconds, "peak_memory_mb": peak,
                "batch": stage.global_batch, "stage": stage.stage.name}
    except Exception as e:  # pylint: disable=broad-except  (reported in the table)
        return {"error": f"{type(e).__name__}: {_reason(str(e))}"}


def _reason(message):
    """The line of an error message that says why (TensorFlow's start with "Graph execution
    error:" or "in user code:" and a traceback)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        if any(k in line for k in ("No registered", "XLA", "not supported", "unsupported")):
            return line[:200]
    return (lines[-1] if lines else "")[:200]


def bare_config(config):
    """The bare-backbone config of a task's config: the `baseline` task (backbone -> global
    average pool -> dense -> sigmoid cross-entropy) with its backbone, size, batch and
    settings."""
    bare = task_config("baseline")
    bare.data.update(image_size=config.data.image_size, normalization=config.data.normalization)
    bare.model.backbone = config.model.backbone
    bare.train.batch_size = config.train.batch_size
    return bare


def run_all(workdir):
    """Every measurement -> the results dict (also written to WORKDIR/gpu.json)."""
    configs = {task: task_config(task) for task in _TASKS.value}
    sizes = {c.data.image_size for c in configs.values()}
    manifest = make_data(workdir, max(sizes))
    loops = [int(n) for n in _STEPS_PER_LOOP.value] or [_quick(10, 2)]
    rows, not_run, bare_cache = [], [], {}
    deadline = time.perf_counter() + 60 * _BUDGET_MINUTES.value
    # Every task's float32 first, then each further setting for every task: a budget that
    # runs out leaves the least needed settings out.
    for precision in _PRECISIONS.value:
        for xla in _XLA.value:
            for steps_per_loop in loops:
                for task in configs:
                    setting = {"task": task, "precision": precision, "xla": xla,
                               "steps_per_loop": steps_per_loop}
                    if time.perf_counter() > deadline:
                        not_run.append(setting)
                        continue
                    jit = {"off": False, "on": True}[xla]
                    config = _configure(task_config(task), manifest, precision, jit,
                                        steps_per_loop)
                    result = measure_step(config, tempfile.mkdtemp(dir=workdir,
                                                                   prefix=f"{task}_"))
                    bare = bare_config(config)
                    key = (bare.model.backbone, bare.data.image_size, bare.train.batch_size,
                           precision, xla, steps_per_loop)
                    if key not in bare_cache:
                        bare_cache[key] = measure_step(
                            _configure(bare, manifest, precision, jit, steps_per_loop),
                            tempfile.mkdtemp(dir=workdir, prefix="bare_"))
                    rows.append({**setting, "image_size": config.data.image_size,
                                 "backbone": config.model.backbone, **result,
                                 "bare": bare_cache[key]})
                    print(_row(rows[-1]), flush=True)
    batch, parallel = 8, 4
    window = dict(seconds=_PIPELINE_SECONDS.value or _quick(5.0, 1.0), repeats=2)
    decode = rates.images_per_second(rates.decode_only(manifest, batch, parallel), batch,
                                     **window)
    grey = rates.images_per_second(rates.training_pipeline(
        manifest, batch, parallel, image_size=max(sizes), grid=16, ship_grey=True), batch,
        **window)
    return {"device": _device() or "CPU", "gpu": _gpu_name(), "host": platform.node(),
            "cores": os.cpu_count(), "quick": _QUICK.value,
            "tensorflow": tf.__version__, "keras": keras.__version__, "rows": rows,
            "not_run": not_run,
            "pipeline": {"image_size": max(sizes), "batch": batch, "encoding": "png",
                         "decode_only_images_per_s": decode,
                         "pipeline_images_per_s": grey, "ratio": grey / decode}}


def _gpu_name():
    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else ""


HEADER = ("| task | px | backbone | precision | XLA | steps/call | batch | img/s | peak MB | "
          "bare img/s | bare peak MB | ratio task/bare |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _cell(result, key, digits=1):
    if "error" in result:
        return "failed" if key == "images_per_s" else ""
    value = result.get(key)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row(r):
    bare = r["bare"]
    ratio = (f"{r['images_per_s'] / bare['images_per_s']:.3f}"
             if "error" not in r and "error" not in bare else "")
    line = (f"| {r['task']} | {r['image_size']} | {r['backbone']} | {r['precision']} | "
            f"{r['xla']} | {r['steps_per_loop']} | {r.get('batch', '')} | "
            f"{_cell(r, 'images_per_s')} | "
            f"{_cell(r, 'peak_memory_mb', 0)} | {_cell(bare, 'images_per_s')} | "
            f"{_cell(bare, 'peak_memory_mb', 0)} | {ratio} |")
    errors = [f"{name}: {x['error']}" for name, x in (("task", r), ("bare", bare)) if "error" in x]
    return line + ("".join(f"\n|  | {e} |" for e in errors))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_TASKS.value) - set(TASKS)) + sorted(
        set(_PRECISIONS.value) - set(PRECISIONS)) + sorted(set(_XLA.value) - {"off", "on"})
    if unknown:
        raise app.UsageError(f"unknown --tasks / --precisions / --xla values: {unknown}")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    start = time.perf_counter()
    print(HEADER, flush=True)
    results = run_all(_WORKDIR.value)
    results["seconds"] = time.perf_counter() - start
    p = results["pipeline"]
    print(f"\ninput pipeline ({p['encoding']}, {p['image_size']} px, uint8 grey, batch "
          f"{p['batch']}): {p['pipeline_images_per_s']:.0f} img/s, decode-only "
          f"{p['decode_only_images_per_s']:.0f} img/s, ratio {p['ratio']:.2f}")
    if results["not_run"]:
        print(f"not run (--budget_minutes={_BUDGET_MINUTES.value:g} reached): "
              + ", ".join("{task} {precision} XLA {xla} x{steps_per_loop}".format(**s)
                          for s in results["not_run"]))
    print(f"device {results['device']} {results['gpu']}; {results['cores']} cores; "
          f"{results['seconds']:.0f} s in total")
    path = os.path.join(_WORKDIR.value, "gpu.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
