"""Predict findings on radiographs: `python -m chestxray_tf.cli.predict --model E --input scans/
--output out/ [--threshold 0.5] [--top_k 3] [--classes A,B] [--checkpoint latest]`.

E is an exported SavedModel folder (`chestxray_tf.cli.export`) or a training workdir. Writes
NAME.json, NAME.png per image and summary.csv (see `chestxray_tf.predict`); a file that fails
gets an error row and the batch goes on; the exit code is 1 when any file failed. --output must
be new, empty or an earlier output folder of predict (replaced as a whole), and never the
input's folder (see `chestxray_tf.predict`); --threshold and --top_k are checked before the
model is loaded.
"""

import collections

from absl import app, flags

from chestxray_tf import cli, predict

_MODEL = flags.DEFINE_string("model", None, "An exported SavedModel folder or a training workdir.")
_INPUT = flags.DEFINE_string("input", None, "A PNG, JPEG or DICOM file, or a folder of them "
                             "(walked recursively).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for NAME.json, NAME.png and summary.csv.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Map threshold of the regions (default: the "
                                "model's, config.eval.region_threshold).")
_TOP_K = flags.DEFINE_integer("top_k", 3, "Findings per image (overlay panels).")
_CLASSES = flags.DEFINE_list("classes", None, "Classes to report (default: all).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "With a workdir as --model: latest, "
                                  "best, or a checkpoint path.")
flags.mark_flags_as_required(["model", "input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    predict.check_arguments(_THRESHOLD.value, _TOP_K.value)  # before loading anything
    cli.quiet_tensorflow()
    predictor = predict.load_predictor(_MODEL.value, _CHECKPOINT.value)
    summary = predict.predict_files(predictor, _INPUT.value, _OUTPUT.value, _THRESHOLD.value,
                                    _TOP_K.value, _CLASSES.value)
    if summary.skipped:
        reasons = collections.Counter(s.reason for s in summary.skipped)
        print(f"skipped {len(summary.skipped)} entries ("
              + "; ".join(f"{n}: {reason}" for reason, n in reasons.most_common()) + "): "
              + ", ".join(s.path for s in summary.skipped))
    print(f"{len(summary.rows) - summary.num_failed} of {len(summary.rows)} images predicted, "
          f"{summary.num_failed} failed; summary: {summary.csv_path}")
    return 1 if summary.num_failed else 0


if __name__ == "__main__":
    app.run(main)
