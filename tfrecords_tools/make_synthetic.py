"""Writes a synthetic data set in the NIH ChestX-ray14 layout (`chestxray_tf.data.synthetic`).

    python -m tfrecords_tools.make_synthetic --output_dir D --num_patients N --image_size S \
        --seed K [--box_fraction F] [--test_fraction T] [--num_workers W] [--grid_png P]

Prints the summary (counts per class, boxes, splits) and the time taken as JSON.
"""

import json
import math
import time

from absl import app, flags

from chestxray_tf import io as io_lib
from chestxray_tf.data import synthetic

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "New or empty folder to write.")
_NUM_PATIENTS = flags.DEFINE_integer("num_patients", None, "Patients (about 3 images each).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "Side of the square PNGs, in pixels.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed; same seed and flags, same bytes.")
_BOX_FRACTION = flags.DEFINE_float(
    "box_fraction", 0.5, "Fraction of the images with a boxed finding that get boxes.")
_TEST_FRACTION = flags.DEFINE_float(
    "test_fraction", 0.2, "Fraction of the patients in test_list.txt.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Processes (default: all cores).")
_GRID_PNG = flags.DEFINE_string(
    "grid_png", None, "Also draw a grid of examples per class with boxes to this PNG.")


def _check_flags():
    """Every numeric flag in its range, before anything is written."""
    def integer(flag, low, high=None, optional=False):
        value = flag.value
        if value is None and optional:
            return
        if value is None or value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise app.UsageError(f"--{flag.name} must be an integer {bound}, got {value}")

    integer(_NUM_PATIENTS, 1)
    integer(_IMAGE_SIZE, 64, io_lib.MAX_IMAGE_SIDE)
    integer(_SEED, 0)
    integer(_NUM_WORKERS, 1, optional=True)
    for flag in (_BOX_FRACTION, _TEST_FRACTION):
        if not (math.isfinite(flag.value) and 0.0 <= flag.value <= 1.0):
            raise app.UsageError(f"--{flag.name} must be in [0, 1], got {flag.value}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _check_flags()
    start = time.time()
    summary = synthetic.generate(
        _OUTPUT_DIR.value, num_patients=_NUM_PATIENTS.value, image_size=_IMAGE_SIZE.value,
        seed=_SEED.value, box_fraction=_BOX_FRACTION.value, test_fraction=_TEST_FRACTION.value,
        num_workers=_NUM_WORKERS.value)
    summary["seconds"] = round(time.time() - start, 1)
    if _GRID_PNG.value:
        synthetic.render_example_grid(_OUTPUT_DIR.value, _GRID_PNG.value)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    flags.mark_flags_as_required(["output_dir", "num_patients"])
    app.run(main)
