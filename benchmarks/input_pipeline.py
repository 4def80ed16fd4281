"""Input pipeline benchmark (issue 3 §4): images/s of the training pipeline vs decode-only.

    python -m benchmarks.input_pipeline --workdir /tmp/bench_input [--num_patients 100] \
        [--source_size 1024] [--image_size 512] [--batch_size 8] [--num_parallel_calls 4]

In one run, on the same synthetic shards:
1. generates a synthetic NIH-layout folder at `source_size` px (reused when present);
2. builds it with `build.build` at `image_size`, PNG and raw, timed in one process and on all
   cores: wall time per image (all cores: including the start-up of the spawned workers, which
   import TensorFlow; that start-up is timed on its own), the speed-up, and the core use = CPU
   time of all processes / (wall time x cores);
3. per encoding, measures images/s of decode-only (read + parse + decode to uint8: the upper
   bound) and of the full training pipeline (`pipeline.make_dataset`, training=True, box masks
   on a `grid` x `grid` patch grid), the ratio pipeline / decode-only and images/s per core,
   for float32 [S, S, 3] images and for the trainer's uint8 grey images (`ship_grey`).
   Each rate is the best of `--repeats` timed windows of `--seconds` after a warm-up (the
   machine may be shared with other jobs).

Prints a Markdown table and writes results.json to the workdir.
"""

from concurrent import futures
import importlib
import json
import multiprocessing
import os
import resource
import time

from absl import app, flags

from chestxray_tf.data import build
from chestxray_tf.data import example
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import synthetic
from benchmarks import rates

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/chestxray_tf_bench_input", "Scratch folder.")
_NUM_PATIENTS = flags.DEFINE_integer("num_patients", 100, "Synthetic patients (~3 images each).")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 1024, "Side of the synthetic source PNGs.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Stored and model input size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_GRID = flags.DEFINE_integer("grid", 16, "P of the box masks.")
_NUM_PARALLEL_CALLS = flags.DEFINE_integer("num_parallel_calls", 4,
                                           "Map and interleave parallelism.")
_SECONDS = flags.DEFINE_float("seconds", 8.0, "Length of one timed window.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed windows per rate (the best is kept).")


def _timed_build(source, output_dir, encoding, num_workers):
    """Builds -> (manifest, wall seconds, CPU seconds of this process and its workers)."""
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                  resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    manifest = build.build(source, output_dir, image_size=_IMAGE_SIZE.value, encoding=encoding,
                           num_workers=num_workers, overwrite=True, progress=False,
                           command="benchmarks.input_pipeline")
    wall = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return manifest, wall, cpu


def _import_builder(_):
    importlib.import_module("chestxray_tf.data.build")


def worker_startup_seconds(cores):
    """Wall time to spawn `cores` processes that import the builder, as `build.build` does."""
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(cores, mp_context=context) as pool:
        list(pool.map(_import_builder, range(cores)))
    return time.perf_counter() - start


def measure(source, encoding, cores):
    """Build timings and input rates of one encoding."""
    out = os.path.join(_WORKDIR.value, f"tfrecords_{_IMAGE_SIZE.value}_{encoding}")
    _, one_wall, _ = _timed_build(source, out, encoding, num_workers=1)
    manifest, wall, cpu = _timed_build(source, out, encoding, num_workers=cores)
    n = manifest["num_images"]
    batch, parallel = _BATCH_SIZE.value, _NUM_PARALLEL_CALLS.value
    window = dict(seconds=_SECONDS.value, repeats=_REPEATS.value)
    decode = rates.images_per_second(rates.decode_only(out, batch, parallel), batch, **window)
    full, grey = (rates.images_per_second(rates.training_pipeline(
        out, batch, parallel, image_size=_IMAGE_SIZE.value, grid=_GRID.value,
        ship_grey=ship_grey), batch, **window) for ship_grey in (False, True))
    return {
        "images": n, "build_ms_per_image_1_process": 1000 * one_wall / n,
        "build_ms_per_image": 1000 * wall / n, "build_speedup": one_wall / wall,
        "build_core_use": cpu / (wall * cores),
        "shard_mb": sum(os.path.getsize(p) for p in manifest_lib.read_manifest(out)[
            "shard_paths"]) / 2**20,
        "decode_only_images_per_s": decode, "pipeline_images_per_s": full,
        "ratio": full / decode, "pipeline_images_per_s_per_core": full / cores,
        "grey_pipeline_images_per_s": grey, "grey_ratio": grey / decode}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cores = os.cpu_count()
    source = os.path.join(_WORKDIR.value, f"nih_{_SOURCE_SIZE.value}px")
    if not os.path.exists(os.path.join(source, synthetic.DATA_ENTRY_CSV)):
        start = time.perf_counter()
        synthetic.generate(source, num_patients=_NUM_PATIENTS.value,
                           image_size=_SOURCE_SIZE.value, seed=0)
        print(f"generated {source} in {time.perf_counter() - start:.0f} s")
    startup = worker_startup_seconds(cores)
    results = {"cores": cores, "image_size": _IMAGE_SIZE.value,
               "source_size": _SOURCE_SIZE.value, "batch_size": _BATCH_SIZE.value,
               "num_parallel_calls": _NUM_PARALLEL_CALLS.value,
               "worker_startup_seconds": startup,
               "encodings": {e: measure(source, e, cores) for e in example.ENCODINGS}}
    print(f"\n{cores} cores; {_SOURCE_SIZE.value} px synthetic PNGs -> {_IMAGE_SIZE.value} px "
          f"shards; batch {_BATCH_SIZE.value}, num_parallel_calls {_NUM_PARALLEL_CALLS.value}, "
          f"grid {_GRID.value}; spawning {cores} build workers takes {startup:.1f} s\n")
    print(f"| encoding | images | build ms/img, 1 process | build ms/img, {cores} processes | "
          "speed-up | core use | shards MB | decode-only img/s | pipeline img/s | ratio | "
          "pipeline img/s/core | uint8 grey pipeline img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for encoding, r in results["encodings"].items():
        print(f"| {encoding} | {r['images']} | {r['build_ms_per_image_1_process']:.1f} | "
              f"{r['build_ms_per_image']:.1f} | {r['build_speedup']:.2f} | "
              f"{r['build_core_use']:.0%} | "
              f"{r['shard_mb']:.0f} | {r['decode_only_images_per_s']:.0f} | "
              f"{r['pipeline_images_per_s']:.0f} | {r['ratio']:.2f} | "
              f"{r['pipeline_images_per_s_per_core']:.0f} | "
              f"{r['grey_pipeline_images_per_s']:.0f} | {r['grey_ratio']:.2f} |")
    with open(os.path.join(_WORKDIR.value, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
