"""Training-step benchmark (issue 4): what the Li et al. 2018 head and loss cost over the bare
backbone.

    python -m benchmarks.train_step [--image_sizes 512,256] [--batch_size 4] [--quick]

In one run, per image size and with and without XLA (`jit_compile`), it times two training
steps built by the trainer itself (`Trainer._make_train_step`: GradientTape, the per-example
loss averaged over the global batch, the model's L2 penalties, Adam) on the same random batch:

* **li**: the Li et al. 2018 model of `configs/li2018.py` (ResNet-v2-50 -> patch slicing to
  P x P (Sec. 3.1) -> conv3x3-512, BN, ReLU, conv1x1-K, sigmoid -> Eq. 2) with its MIL loss
  (Eq. 1, 2, 4) from `chestxray_tf.tasks`;
* **bare**: the same backbone -> global average pool -> dense K sigmoid, with the binary
  cross-entropy summed over the K classes; the same L2 factor on its kernels.

Both steps alternate window by window (so a change of load on a shared machine hits both), after
`--warmup_steps` untimed steps; each rate is the median over `--windows` windows of at least
`--window_seconds` each. Ratio = li img/s / bare img/s (target >= 0.9). The process CPU time
per step (user + system, all threads) is reported too: on a machine shared with other jobs the
wall-clock rates follow their load, the CPU time much less.

A breakdown times forward + backward of the parts the two models do not share, on random
backbone features: patch slicing, the recognition head, the MIL loss, and the bare model's
pool + dense + BCE.

Peak memory: one subprocess per model and XLA setting trains `--memory_steps` steps at
`--memory_batch_size` x `--memory_image_size` px and reports its peak RSS (VmHWM), after
building the model and optimizer and at the end.

Prints Markdown tables; the load average is printed at the start and at the end.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
import keras
import tensorflow as tf

from chestxray_tf import tasks
from chestxray_tf.training import defaults, optimizers, trainer

_IMAGE_SIZES = flags.DEFINE_list("image_sizes", ["512", "256"], "Image sides to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4, "Batch size of the timed steps.")
_BACKBONE = flags.DEFINE_string("backbone", "resnet_v2_50", "Backbone name (models.backbones).")
_GRID = flags.DEFINE_integer("grid", 16, "P of the patch grid.")
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 1, "Untimed calls per model (or part) "
                                     "and setting (the first traces and compiles).")
_WINDOWS = flags.DEFINE_integer("windows", 3, "Timed windows per model (or part) and setting.")
_WINDOW_SECONDS = flags.DEFINE_float("window_seconds", 5.0, "Minimum length of a step window.")
_PART_WINDOW_SECONDS = flags.DEFINE_float("part_window_seconds", 1.5,
                                          "Minimum length of a window of the breakdown.")
_MEMORY_IMAGE_SIZE = flags.DEFINE_integer("memory_image_size", 512, "Image side of the RSS runs.")
_MEMORY_BATCH_SIZE = flags.DEFINE_integer("memory_batch_size", 5, "Batch size of the RSS runs.")
_MEMORY_STEPS = flags.DEFINE_integer("memory_steps", 2, "Training steps of each RSS run.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: 128 px, resnet_v2_tiny, short windows.")
_MEMORY_CHILD = flags.DEFINE_enum("memory_child", None, ["li", "bare"],
                                  "Internal: be the RSS subprocess for this model.")
_JIT = flags.DEFINE_bool("jit", False, "Internal: XLA setting of the RSS subprocess.")

MODELS = ("li", "bare")
JIT_SETTINGS = (False, True)
_START = time.perf_counter()


def progress(message):
    """Prints `message` with the time since start and the 1-minute load average."""
    print(f"[{time.perf_counter() - _START:5.0f} s, load {os.getloadavg()[0]:.1f}] {message}",
          flush=True)


def make_config(image_size, batch_size, jit_compile):
    """`configs/li2018.py` without pretrained weights, at the benchmark's sizes."""
    config = defaults.base_config()
    config.model.weights = None
    config.model.backbone = _BACKBONE.value
    config.model.grid = _GRID.value
    config.data.image_size = image_size
    config.train.batch_size = batch_size
    config.train.jit_compile = jit_compile
    return config


def build(name, config):
    """(model, loss_fn) of `name`: "li" (the li2018 task) or "bare" (the baseline task:
    backbone -> global average pool -> dense K sigmoid, BCE)."""
    keras.utils.set_random_seed(config.seed)
    task = tasks.get_task("li2018" if name == "li" else "baseline")(config)
    return task.build_model(pretrained=False), task.loss


def make_train_step(model, loss_fn, config):
    """The trainer's own step function for `model` and `loss_fn` (default strategy, Adam with
    the config's schedule, slots built before the first step)."""
    optimizer = optimizers.make_optimizer(config.train, steps_per_epoch=1000)
    optimizer.build(model.trainable_variables)
    return trainer.make_train_step(model, optimizer, loss_fn, tf.distribute.get_strategy(),
                                   config.train.batch_size,
                                   jit_compile=config.train.jit_compile)


def random_batch(config):
    """A batch of the input pipeline's keys, random, made once (the same for every model)."""
    b, s = config.train.batch_size, config.data.image_size
    p, k = config.model.grid, config.model.num_classes
    rng = tf.random.Generator.from_seed(config.seed)
    labels = tf.cast(rng.uniform([b, k]) < 0.3, tf.float32)
    has_box = labels * tf.cast(rng.uniform([b, k]) < 0.5, tf.float32)
    box_mask = tf.cast(rng.uniform([b, p, p, k]) < 0.2, tf.float32) * has_box[:, None, None, :]
    return {"image": rng.uniform([b, s, s, 3], -1.0, 1.0), "labels": labels,
            "has_box": has_box, "box_mask": box_mask, "image_id": tf.fill([b], "random"),
            "skipped_records": tf.zeros([b], tf.int64)}


def batch_iterator(batch):
    """The same batch forever, as the trainer's distributed iterator."""
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    return iter(tf.distribute.get_strategy().distribute_datasets_from_function(
        lambda _: dataset))


def train_steps(step, iterator, n):
    """Runs `n` steps, reading the logs back as the trainer does; returns the last logs."""
    for _ in range(n):
        logs = {k: float(v) for k, v in step(iterator)[0].items()}
    return logs


def window_per_call(fn, seconds):
    """Calls `fn` until `seconds` of wall time have passed: {"wall", "cpu"} seconds per call,
    "cpu" being this process's user + system time summed over its threads."""
    calls, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        fn()
        calls += 1
    return {"wall": (time.perf_counter() - wall) / calls,
            "cpu": (time.process_time() - cpu) / calls}


def median_per_call(fns, seconds):
    """{name: {"wall", "cpu"}}: median seconds per call of zero-argument callables, timed in
    turn in windows of at least `seconds` (after `--warmup_steps` untimed calls each)."""
    for fn in fns.values():
        for _ in range(_WARMUP_STEPS.value):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(_WINDOWS.value):
        for name, fn in fns.items():
            samples[name].append(window_per_call(fn, seconds))
    return {name: {clock: statistics.median(w[clock] for w in windows) for clock in ("wall", "cpu")}
            for name, windows in samples.items()}


def time_steps(image_size):
    """{jit: {model: {"wall", "cpu"} seconds per step}} at `image_size`, the models and the
    batch."""
    built = {}
    for name in MODELS:
        built[name] = build(name, make_config(image_size, _BATCH_SIZE.value, False))
    batch = random_batch(make_config(image_size, _BATCH_SIZE.value, False))
    results = {}
    for jit in JIT_SETTINGS:
        config = make_config(image_size, _BATCH_SIZE.value, jit)
        fns = {}
        for name, (model, loss_fn) in built.items():
            step, iterator = make_train_step(model, loss_fn, config), batch_iterator(batch)
            fns[name] = lambda step=step, iterator=iterator: train_steps(step, iterator, 1)
        results[jit] = median_per_call(fns, _WINDOW_SECONDS.value)
        progress(f"{image_size} px, XLA {jit}: " + ", ".join(
            f"{n} {s['wall']:.2f} s/step ({s['cpu']:.2f} CPU s)"
            for n, s in results[jit].items()))
    return results, built, batch


def _gradient_call(part, inputs, variables, jit):
    """A callable running forward + backward of `part(inputs)` (gradients w.r.t. the inputs
    and `variables`), compiled with XLA when `jit`."""
    @tf.function(jit_compile=jit)
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = tf.reduce_sum(part(inputs))
        return tape.gradient(out, [inputs] + variables)

    return lambda: forward_backward()[0].numpy()


def time_parts(built, batch):
    """{jit: {part: {"wall", "cpu"} seconds}} of forward + backward of the parts the two models
    do not share, on random backbone features of the timed batch."""
    li, li_loss = built["li"]
    bare, bare_loss = built["bare"]
    backbone = li.get_layer(_BACKBONE.value)
    features = tf.random.uniform((batch["image"].shape[0],) + tuple(backbone.output.shape[1:]))
    slicing = li.get_layer("patch_slicing")
    head_layers = [li.get_layer(n) for n in ("head_conv", "head_bn", "head_relu",
                                             "patch_logits", "patch_probs")]
    sliced = slicing(features)
    patch_probs = tf.random.uniform(tuple(batch["box_mask"].shape))

    def head(x):
        for layer in head_layers:
            x = layer(x, training=True)
        return x

    def mil_loss(p):
        return li_loss(batch, {"patch_probs": p})[0]

    def bare_head(x):
        x = bare.get_layer("image_probs")(bare.get_layer("classifier")(
            bare.get_layer("global_pool")(x)))
        return bare_loss(batch, {"image_probs": x})[0]

    parts = {
        "patch slicing": (slicing, features, []),
        "head (conv3x3-512, BN, ReLU, conv1x1-K, sigmoid)":
            (head, sliced, [v for layer in head_layers for v in layer.trainable_variables]),
        "MIL loss (Eq. 1, 2, 4)": (mil_loss, patch_probs, []),
        "bare: pool + dense + BCE": (bare_head, features,
                                     bare.get_layer("image_probs").trainable_variables),
    }
    results = {}
    for jit in JIT_SETTINGS:
        results[jit] = median_per_call({
            name: _gradient_call(fn, x, variables, jit) for name, (fn, x, variables) in
            parts.items()}, _PART_WINDOW_SECONDS.value)
        progress(f"parts, XLA {jit}: " + ", ".join(
            f"{1000 * s['wall']:.1f} ms ({1000 * s['cpu']:.1f} CPU ms)"
            for s in results[jit].values()))
    return results


def peak_rss_mb():
    """Peak resident set size of this process so far, MB: VmHWM of /proc/self/status (Linux).

    Not ru_maxrss: Linux carries it over `execve`, so a subprocess forked from this (large)
    benchmark process would report the parent's peak.
    """
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(name):
    """The RSS subprocess: trains `--memory_steps` steps of `name`; prints one JSON line."""
    config = make_config(_MEMORY_IMAGE_SIZE.value, _MEMORY_BATCH_SIZE.value, _JIT.value)
    model, loss_fn = build(name, config)
    step = make_train_step(model, loss_fn, config)
    iterator = batch_iterator(random_batch(config))
    built = peak_rss_mb()
    train_steps(step, iterator, _MEMORY_STEPS.value)
    print(json.dumps({"build_mb": built, "peak_mb": peak_rss_mb()}))


def measure_memory(name, jit):
    """{"build_mb", "peak_mb"} of a fresh training process of `name`."""
    command = [sys.executable, "-m", "benchmarks.train_step", f"--memory_child={name}",
               f"--jit={jit}", f"--backbone={_BACKBONE.value}", f"--grid={_GRID.value}",
               f"--memory_image_size={_MEMORY_IMAGE_SIZE.value}",
               f"--memory_batch_size={_MEMORY_BATCH_SIZE.value}",
               f"--memory_steps={_MEMORY_STEPS.value}"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"RSS run {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    progress(f"RSS {name}, XLA {jit}: peak {result['peak_mb']:.0f} MB")
    return result


def _load():
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _xla(jit):
    return "yes" if jit else "no"


def print_steps(steps):
    b = _BATCH_SIZE.value
    print(f"\nTraining steps, batch {b} (wall: images/s; CPU: process CPU seconds per step):\n")
    print("| image px | XLA | li img/s | bare img/s | ratio li/bare | li CPU s/step | "
          "bare CPU s/step | CPU ratio bare/li |")
    print("|---|---|---|---|---|---|---|---|")
    for size, by_jit in steps.items():
        for jit, s in by_jit.items():
            li, bare = s["li"], s["bare"]
            print(f"| {size} | {_xla(jit)} | {b / li['wall']:.2f} | {b / bare['wall']:.2f} | "
                  f"{bare['wall'] / li['wall']:.3f} | {li['cpu']:.2f} | {bare['cpu']:.2f} | "
                  f"{bare['cpu'] / li['cpu']:.3f} |")


def print_parts(parts, steps):
    print("\nForward + backward of the parts that differ, CPU ms per batch of "
          f"{_BATCH_SIZE.value} (li - bare: the difference of the steps' CPU times):\n")
    names = list(next(iter(next(iter(parts.values())).values())))
    print("| image px | XLA | " + " | ".join(names) + " | li - bare step |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for size, by_jit in parts.items():
        for jit, p in by_jit.items():
            s = steps[size][jit]
            print(f"| {size} | {_xla(jit)} | "
                  + " | ".join(f"{1000 * p[n]['cpu']:.1f}" for n in names)
                  + f" | {1000 * (s['li']['cpu'] - s['bare']['cpu']):.0f} |")


def print_memory(memory):
    print(f"\nPeak RSS of a training process, batch {_MEMORY_BATCH_SIZE.value}, "
          f"{_MEMORY_IMAGE_SIZE.value} px, {_MEMORY_STEPS.value} steps:\n")
    print("| model | XLA | after build, MB | peak, MB |")
    print("|---|---|---|---|")
    for (name, jit), m in memory.items():
        print(f"| {name} | {_xla(jit)} | {m['build_mb']:.0f} | {m['peak_mb']:.0f} |")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MEMORY_CHILD.value:
        memory_child(_MEMORY_CHILD.value)
        return
    if _QUICK.value:
        # Batch 4 for the RSS runs too: on this CPU (oneDNN, TF 2.21) the backward pass of the
        # tiny backbone's 1x1 stride-2 shortcut (8 input channels) corrupts the heap at odd
        # batch sizes (cf. uxlfoundation/oneDNN#6035); ResNet-v2-50 has no such convolution.
        for flag, value in (("image_sizes", ["128"]), ("backbone", "resnet_v2_tiny"),
                            ("window_seconds", 0.5), ("part_window_seconds", 0.2),
                            ("windows", 2),
                            ("memory_image_size", 128), ("memory_batch_size", 4),
                            ("memory_steps", 2)):
            setattr(flags.FLAGS, flag, value)
    print(f"{os.cpu_count()} cores, load average at start {_load()}; {_BACKBONE.value}, "
          f"P = {_GRID.value}, batch {_BATCH_SIZE.value}", flush=True)
    steps, parts = {}, {}
    for size in map(int, _IMAGE_SIZES.value):
        steps[size], built, batch = time_steps(size)
        parts[size] = time_parts(built, batch)
        del built, batch
        keras.backend.clear_session()
    memory = {(name, jit): measure_memory(name, jit) for name in MODELS for jit in JIT_SETTINGS}
    print_steps(steps)
    print_parts(parts, steps)
    print_memory(memory)
    print(f"\nload average at end {_load()}; total {time.perf_counter() - _START:.0f} s")


if __name__ == "__main__":
    app.run(main)
