"""Evaluate a trained run: `python -m chestxray_tf.cli.evaluate --workdir W
[--checkpoint latest|best|PATH] [--split test_fold|official_test|val]`.

Writes WORKDIR/eval/<split>[-<checkpoint>]/report.json, report.md (the paper's tables with its
published numbers beside ours) and the figures, then prints the headline numbers.
"""

import json

from absl import app, flags

from chestxray_tf import cli
from chestxray_tf.evaluation import evaluate, report

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's --workdir.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest, best, or a checkpoint path.")
_SPLIT = flags.DEFINE_enum("split", "test_fold", list(evaluate.SPLITS), "Images to evaluate.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_tensorflow()
    paths = evaluate.evaluate(cli.local_path(_WORKDIR.value), _CHECKPOINT.value,
                              _SPLIT.value)
    with open(paths["json"], encoding="utf-8") as f:
        results = json.load(f)["results"]
    print("\n".join(report.headline(results)))
    print(f"report: {paths['markdown']}\nmetrics: {paths['json']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
