"""Predict findings on radiographs: `python -m chestxray_tf.cli.predict --model E --input scans/
--output out/ [--decision_threshold 0.5] [--map_threshold T] [--top_k 3] [--classes A,B]
[--checkpoint latest]`.

Two thresholds, two meanings: a class is a finding when its image probability is >=
--decision_threshold (one number, or a JSON file of {class: number}); --map_threshold is the
threshold of the localization map whose cells form the regions (default: the model's,
config.eval.region_threshold). --threshold is the old name of --map_threshold (deprecated).
For research only, not for diagnosis (`chestxray_tf.predict.NOTICE`, printed and in every
NAME.json).

E is an exported SavedModel folder (`chestxray_tf.cli.export`) or a training workdir. Writes
NAME.json, NAME.png per image and summary.csv (see `chestxray_tf.predict`); a file that fails
gets an error row and the batch goes on; the exit code is 1 when any file failed. --output must
be new, empty or an earlier output folder of predict (replaced as a whole), and never the
input's folder (see `chestxray_tf.predict`); the thresholds and --top_k are checked before the
model is loaded. A user error (a bad threshold, a model folder that is neither, an --output
that is not ours) ends in one line (`chestxray_tf.cli.run`; --debug shows the traceback).
"""

import collections

from absl import app, flags, logging

from chestxray_tf import cli, predict

_MODEL = flags.DEFINE_string("model", None, "An exported SavedModel folder or a training workdir.")
_INPUT = flags.DEFINE_string("input", None, "A PNG, JPEG or DICOM file, or a folder of them "
                             "(walked recursively).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for NAME.json, NAME.png and summary.csv.")
_DECISION = flags.DEFINE_string(
    "decision_threshold", str(predict.DECISION_THRESHOLD), "A class is a finding when its "
    "image probability is >= this: a number in [0, 1], or a JSON file of {class: number} "
    f"(classes it does not name: {predict.DECISION_THRESHOLD}).")
_MAP_THRESHOLD = flags.DEFINE_float(
    "map_threshold", None, "Threshold of the localization map: the cells above it form the "
    "regions (default: the model's, config.eval.region_threshold). Not a decision threshold.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Deprecated: the old name of "
                                "--map_threshold.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "At most this many findings per image (overlay "
                              "panels).")
_CLASSES = flags.DEFINE_list("classes", None, "Classes to report (default: all).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "With a workdir as --model: latest, "
                                  "best, or a checkpoint path.")
flags.mark_flags_as_required(["model", "input", "output"])


def map_threshold():
    """--map_threshold, or the deprecated --threshold (with a warning)."""
    if _THRESHOLD.value is not None:
        logging.warning("--threshold is deprecated: it is the map threshold of the regions; use "
                        "--map_threshold (the findings use --decision_threshold, default %s)",
                        predict.DECISION_THRESHOLD)
    return predict.map_threshold_of(_MAP_THRESHOLD.value, _THRESHOLD.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    threshold = map_threshold()  # the numbers checked before anything is loaded
    decision = predict.parse_decision_threshold(_DECISION.value)
    predict.check_arguments(threshold, _TOP_K.value, decision)
    cli.quiet_tensorflow()
    predictor = predict.load_predictor(_MODEL.value, _CHECKPOINT.value)
    summary = predict.predict_files(predictor, _INPUT.value, _OUTPUT.value, threshold,
                                    _TOP_K.value, _CLASSES.value, decision_threshold=decision)
    if summary.skipped:
        reasons = collections.Counter(s.reason for s in summary.skipped)
        print(f"skipped {len(summary.skipped)} entries ("
              + "; ".join(f"{n}: {reason}" for reason, n in reasons.most_common()) + "): "
              + ", ".join(s.path for s in summary.skipped))
    print(f"{len(summary.rows) - summary.num_failed} of {len(summary.rows)} images predicted, "
          f"{summary.num_failed} failed; summary: {summary.csv_path}")
    print(predict.NOTICE)
    return 1 if summary.num_failed else 0


if __name__ == "__main__":
    cli.run(main)
