"""Prepares a downloaded NIH ChestX-ray14 release for `tfrecords_tools.build_nih`
(`chestxray_tf.data.release`: extracts the archives in parallel, resumable and safe, checks
that every image and metadata file is there, names what is missing, prints the next command).

    python -m tfrecords_tools.prepare_nih --nih_dir D [--num_workers W] \
        [--expected_images 112120]

D holds what https://nihcc.app.box.com/v/ChestXray-NIHCC offers: images_001.tar.gz ...
images_012.tar.gz, Data_Entry_2017[_v2020].csv, BBox_List_2017.csv, train_val_list.txt and
test_list.txt; the images are extracted into D/images/. The exit code is 1 when something is
missing or an archive failed; a rerun resumes.
"""

import os
import sys

from absl import app, flags

from chestxray_tf.data import release

_NIH_DIR = flags.DEFINE_string("nih_dir", None, "Folder of the downloaded release (archives "
                               "and CSVs); the images are extracted into it.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Archives extracted at a time "
                                    "(default: all cores).")
_EXPECTED = flags.DEFINE_integer("expected_images", release.NIH_IMAGES,
                                 "PNGs the release holds.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _NUM_WORKERS.value is not None and _NUM_WORKERS.value < 1:
        raise app.UsageError(f"--num_workers must be at least 1, got {_NUM_WORKERS.value}")
    if _EXPECTED.value < 0:
        raise app.UsageError(f"--expected_images must be >= 0, got {_EXPECTED.value}")
    sys.exit(release.prepare(os.path.abspath(_NIH_DIR.value), _NUM_WORKERS.value,
                             _EXPECTED.value))


if __name__ == "__main__":
    flags.mark_flags_as_required(["nih_dir"])
    app.run(main)
