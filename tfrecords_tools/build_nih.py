"""Builds sharded TFRecords of an NIH ChestX-ray14 folder (`chestxray_tf.data.build`).

    python -m tfrecords_tools.build_nih --nih_dir D --output_dir R --image_size 512 \
        --num_shards N --num_folds 5 --fold_seed 0 --group_by patient --encoding png \
        [--skip_bad] [--frame_size 1024] [--num_workers W] [--overwrite]

D holds Data_Entry_2017[_v2020].csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt and
images/ or images_*/images/ (the real release, or `tfrecords_tools.make_synthetic`'s output).
Prints the manifest's counts and the time taken as JSON. Numeric flags are checked before
anything is read; --overwrite replaces an earlier set only once the new one is complete and
validated; its worker processes end when it is killed (see `chestxray_tf.data.build`).
"""

import json
import sys
import time

from absl import app, flags

from chestxray_tf.data import build

_NIH_DIR = flags.DEFINE_string("nih_dir", None, "NIH-layout folder to read.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for shards and manifest.json.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Stored image side (area resize).")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, f"Shards (default: ~{build.IMAGES_PER_SHARD} images each).")
_NUM_FOLDS = flags.DEFINE_integer("num_folds", 5, "Cross-validation folds.")
_FOLD_SEED = flags.DEFINE_integer("fold_seed", 0, "Seed of the fold assignment.")
_GROUP_BY = flags.DEFINE_enum("group_by", "patient", ["patient", "image"],
                              "Keep a patient's images in one fold, or fold images.")
_ENCODING = flags.DEFINE_enum("encoding", "png", ["png", "raw"],
                              "Image bytes: PNG (small) or raw uint8 (fastest to read).")
_SKIP_BAD = flags.DEFINE_bool(
    "skip_bad", False, "Skip missing / undecodable / wrongly sized images (listed in the "
    "manifest) instead of failing.")
_FRAME_SIZE = flags.DEFINE_integer(
    "frame_size", None, "Size of the source PNGs, the frame of the boxes (1024 for the NIH "
    "release; default: the one size all images share, an error when they differ).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None, "Processes (default: all cores).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier build in output_dir.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:  # every numeric flag in range before anything is read
        build.check_arguments(image_size=_IMAGE_SIZE.value, num_shards=_NUM_SHARDS.value,
                              num_folds=_NUM_FOLDS.value, fold_seed=_FOLD_SEED.value,
                              group_by=_GROUP_BY.value, encoding=_ENCODING.value,
                              frame_size=_FRAME_SIZE.value, num_workers=_NUM_WORKERS.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    start = time.time()
    manifest = build.build(
        _NIH_DIR.value, _OUTPUT_DIR.value, image_size=_IMAGE_SIZE.value,
        num_shards=_NUM_SHARDS.value, num_folds=_NUM_FOLDS.value, fold_seed=_FOLD_SEED.value,
        group_by=_GROUP_BY.value, encoding=_ENCODING.value, skip_bad=_SKIP_BAD.value,
        frame_size=_FRAME_SIZE.value, num_workers=_NUM_WORKERS.value,
        overwrite=_OVERWRITE.value, command=" ".join(["python -m tfrecords_tools.build_nih",
                                                      *sys.argv[1:]]))
    print(json.dumps({"num_images": manifest["num_images"], "skipped": manifest["skipped"]["count"],
                      "counts": manifest["counts"], "seconds": round(time.time() - start, 1)},
                     indent=1))


if __name__ == "__main__":
    flags.mark_flags_as_required(["nih_dir", "output_dir"])
    app.run(main)
