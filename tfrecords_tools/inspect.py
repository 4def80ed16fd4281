"""Validates a built TFRecord set against its manifest; optionally draws examples.

    python -m tfrecords_tools.inspect --input R [--show N [--show_dir OUT]]

Reads every record, checks the schema version, encoding, size, the record count of each shard,
the image ids and the counts per fold / split / class against manifest.json and metadata.csv
(`chestxray_tf.data.inspect_lib.validate`), and prints the counts as JSON. `--show N` writes
the first N images (boxed ones first) with their boxes and class names drawn, at 512 px or
more, to OUT as PNGs (default: inspect_show/ in the current folder; nothing is overwritten).
"""

import json

from absl import app, flags

from chestxray_tf.data import inspect_lib

_INPUT = flags.DEFINE_string("input", None, "The set's folder or its manifest.json.")
_SHOW = flags.DEFINE_integer("show", 0, "Draw this many examples with their boxes.")
_SHOW_DIR = flags.DEFINE_string("show_dir", "inspect_show", "Folder for the --show PNGs.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _SHOW.value < 0:
        raise app.UsageError(f"--show must be >= 0, got {_SHOW.value}")
    report = inspect_lib.validate(_INPUT.value)
    print(json.dumps(report, indent=1))
    if _SHOW.value:
        for path in inspect_lib.show(_INPUT.value, _SHOW.value, _SHOW_DIR.value):
            print(f"wrote {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["input"])
    app.run(main)
