"""Builds sharded TFRecords of an NIH-layout folder (SPEC §0): the logic of `build_nih`.

Reads the metadata with `nih`, finds the PNGs in `D/images/` or `D/images_*/images/`, resizes
each image with an area (box-filter) resize to `image_size`, grey single-channel, encodes it
(PNG or raw uint8) and writes `num_shards` shards in parallel, one process per shard at a time,
each to a temporary name. `manifest.json` and `metadata.csv` (see `manifest`) are written last.

Guarantees:

* Arguments are checked before anything is read (`check_arguments`).
* The frame of the boxes is stated, never voted: `frame_size` when given (1024 for the NIH
  release), otherwise the one size that every referenced image's header declares. When the
  headers declare several sizes and no `frame_size` is given, the build stops before any work
  naming the sizes, their counts and an example of each (with or without `skip_bad`: which
  images are wrong is for the user to say). With the frame known, an image of another size is
  the one reported (or skipped under `skip_bad`).
* Every image's size is read from its header (`io.read_header`) before it is decoded; an image
  that is not the frame size, or declares more than `io.MAX_IMAGE_PIXELS` pixels (a
  decompression bomb), is a per-image error naming the file (a counted skip under
  `skip_bad`), never decoded.
* An earlier set is never removed before the new one is complete: the build writes into a
  hidden folder inside `output_dir` (`.build-PID-...`), validates it there
  (`inspect_lib.validate`: every record read back and checked against the manifest), and only
  then moves it in (the old set's manifest goes first, the new manifest last, so a set in
  between has no manifest and is refused by readers). A failed build leaves the old set as it
  was; files in `output_dir` that are not part of a set are never touched.
* Worker processes end with the build: each sets PR_SET_PDEATHSIG (SIGKILL) on Linux and runs
  a watchdog thread that exits when its parent process is gone, so a SIGKILLed build leaves no
  worker behind. Their leftover hidden `.build-PID-...` folder is removed by the next build
  once that PID has ended.
"""

import collections
import ctypes
import dataclasses
import hashlib
import io
import math
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import threading
import time
import uuid
from concurrent import futures

import numpy as np
import tensorflow as tf
import tqdm
from PIL import Image

from chestxray_tf import fileio, geometry
from chestxray_tf import io as io_lib
from chestxray_tf import labels as labels_lib
from chestxray_tf.data import example
from chestxray_tf.data import inspect_lib
from chestxray_tf.data import manifest as manifest_lib
from chestxray_tf.data import nih

DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv",
                    "Data_Entry_2017_v2020.csv.gz", "Data_Entry_2017.csv.gz")
BBOX_NAME = "BBox_List_2017.csv"
SPLIT_LIST_NAMES = ("train_val_list.txt", "test_list.txt")
IMAGES_PER_SHARD = 1024
NIH_FRAME_SIZE = 1024  # the side of the PNGs of the NIH release, the frame of its boxes
MAX_FRAME_SIZE = math.isqrt(io_lib.MAX_IMAGE_PIXELS)  # a frame_size^2 image stays in the bound
MAX_SHARDS = 100000
STAGING_PREFIX = ".build-"  # the hidden folder a build writes into, inside output_dir
_WATCHDOG_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1
_SHOWN_BAD = 5
_EIGHT_BIT_MODES = ("L", "LA", "P", "RGB", "RGBA")


class BadInputError(ValueError):
    """Referenced images that are missing, undecodable or of the wrong size."""


@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The metadata files of an NIH-layout folder."""

    data_entry: str
    bbox: str | None
    split_lists: tuple[str, str] | None


@dataclasses.dataclass(frozen=True)
class _Item:
    """One image to write: where it is and the record fields other than the pixels."""

    image_id: str
    path: str
    fields: dict


@dataclasses.dataclass(frozen=True)
class _ShardJob:
    path: str
    items: tuple
    image_size: int
    frame_size: int
    encoding: str


def find_source_files(nih_dir):
    """Locates Data_Entry (required), BBox_List and the two split lists (optional) in `nih_dir`.

    Raises:
        FileNotFoundError: `nih_dir` is missing or has no Data_Entry file, or only one list.
    """
    if not os.path.isdir(nih_dir):
        raise FileNotFoundError(f"NIH folder {nih_dir} does not exist")
    entries = [os.path.join(nih_dir, n) for n in DATA_ENTRY_NAMES
               if os.path.exists(os.path.join(nih_dir, n))]
    if not entries:
        raise FileNotFoundError(f"{nih_dir} holds none of {', '.join(DATA_ENTRY_NAMES)}: not an "
                                "NIH ChestX-ray14 folder (or an empty one)")
    bbox = os.path.join(nih_dir, BBOX_NAME)
    lists = [os.path.join(nih_dir, n) for n in SPLIT_LIST_NAMES]
    present = [os.path.exists(p) for p in lists]
    if any(present) and not all(present):
        raise FileNotFoundError(f"{nih_dir} has {lists[present.index(True)]} but not "
                                f"{lists[present.index(False)]}: give both official lists or none")
    return SourceFiles(data_entry=entries[0], bbox=bbox if os.path.exists(bbox) else None,
                       split_lists=tuple(lists) if all(present) else None)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bad_input_error(bad, total):
    """One error naming the first few bad files, their problems and the total count."""
    lines = [f"  {path}: {reason}" for _, path, reason in bad[:_SHOWN_BAD]]
    more = [f"  ... and {len(bad) - _SHOWN_BAD} more"] if len(bad) > _SHOWN_BAD else []
    return BadInputError(
        "\n".join([f"{len(bad)} of {total} referenced images are bad (skip them with "
                   "skip_bad=True / --skip_bad):"] + lines + more))


def _size_problem(size, frame_size):
    return (f"size {size[0]}x{size[1]} differs from the data set's {frame_size}x{frame_size} "
            "frame, in which its boxes are given")


def _open_grey(path, frame_size):
    """Decodes `path` to a grey PIL image of frame_size x frame_size; ValueError says why not.
    The size is checked before any pixel is decoded."""
    try:
        with Image.open(path) as image:  # reads the header only
            if image.size != (frame_size, frame_size):
                raise ValueError(_size_problem(image.size, frame_size))
            image.load()
            if image.mode not in _EIGHT_BIT_MODES:
                raise ValueError(f"pixel mode {image.mode} is not an 8-bit grey or colour mode")
            grey = image.convert("L")
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a decodable image ({type(e).__name__}: {e})") from e
    return grey


def encode(pixels, encoding):
    """uint8 [H, W] -> image bytes in `encoding` ('png' or 'raw')."""
    if encoding == "raw":
        return np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def load_resized(path, frame_size, image_size):
    """The image at `path`, checked against the frame, area-resized -> uint8 [S, S]."""
    grey = _open_grey(path, frame_size)
    if image_size != frame_size:
        grey = grey.resize((image_size, image_size), Image.BOX)
    return np.asarray(grey, dtype=np.uint8)


def _write_shard(job, progress):
    """Writes one shard to a temporary file -> (tmp path, written ids, skipped triples)."""
    tmp = f"{job.path}.tmp-{os.getpid()}"
    written, skipped = [], []
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for item in job.items:
                try:
                    pixels = load_resized(item.path, job.frame_size, job.image_size)
                except ValueError as e:
                    skipped.append((item.image_id, item.path, str(e)))
                else:
                    writer.write(example.serialize(
                        image_bytes=encode(pixels, job.encoding), encoding=job.encoding,
                        height=job.image_size, width=job.image_size, **item.fields))
                    written.append(item.image_id)
                progress(1)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return tmp, written, skipped


_progress_queue = None


def _parent_gone(parent_pid):
    return os.getppid() != parent_pid


def _watchdog(parent_pid):
    while not _parent_gone(parent_pid):
        time.sleep(_WATCHDOG_SECONDS)
    os._exit(1)  # pylint: disable=protected-access  (no cleanup: the parent is gone)


def _init_worker(progress_queue, parent_pid):
    """Runs first in each worker: the worker dies with `parent_pid` (see the module docstring)."""
    global _progress_queue  # pylint: disable=global-statement
    _progress_queue = progress_queue
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    if _parent_gone(parent_pid):  # the parent died before prctl took effect
        os._exit(1)  # pylint: disable=protected-access
    threading.Thread(target=_watchdog, args=(parent_pid,), daemon=True,
                     name="parent-watchdog").start()


def _write_shard_in_worker(job):
    return _write_shard(job, _progress_queue.put)


def _run_jobs(jobs, num_workers, bar):
    """Runs the shard jobs in `num_workers` spawned processes (in this one when 1).

    On any failure the temporary shards already written are removed before re-raising.
    """
    if num_workers == 1:
        results = []
        try:
            for job in jobs:
                results.append(_write_shard(job, bar.update))
        except BaseException:
            _remove_tmp(results)
            raise
        return results
    context = multiprocessing.get_context("spawn")  # TF state must not be forked
    progress = context.Queue()
    with futures.ProcessPoolExecutor(num_workers, mp_context=context, initializer=_init_worker,
                                     initargs=(progress, os.getpid())) as pool:
        pending = [pool.submit(_write_shard_in_worker, job) for job in jobs]
        try:
            while not all(f.done() for f in pending) or not progress.empty():
                try:
                    bar.update(progress.get(timeout=0.2))
                except queue.Empty:
                    pass
            return [f.result() for f in pending]
        except BaseException:
            for f in pending:
                f.cancel()
            futures.wait(pending)
            _remove_tmp([f.result() for f in pending
                         if not f.cancelled() and f.exception() is None])
            raise


def _remove_tmp(results):
    for tmp, _, _ in results:
        os.remove(tmp)


def read_sizes(paths):
    """The size each image's header declares, read without decoding -> ({path: (w, h)},
    [(path, problem)] for headers that do not read or declare too many pixels)."""
    sizes, bad = {}, []
    for path in paths:
        try:
            header = io_lib.read_header(path)
            if header.width * header.height > io_lib.MAX_IMAGE_PIXELS:
                io_lib.check_bounds(path, header.width, header.height)
        except io_lib.ImageReadError as e:
            bad.append((path, e.problem))
        else:
            sizes[path] = (header.width, header.height)
    return sizes, bad


def stated_frame_size(sizes, frame_size=None):
    """The frame of the boxes: `frame_size`, or the one square size all headers declare.

    Raises:
        BadInputError: no `frame_size` and the images declare several sizes (named, counted,
            an example of each), or one size that is not square.
    """
    if frame_size is not None:
        return frame_size
    by_size = collections.defaultdict(list)
    for path, size in sorted(sizes.items()):
        by_size[size].append(path)
    if not by_size:
        raise BadInputError("no referenced image has a readable PNG header")
    if len(by_size) > 1:
        listed = "; ".join(f"{w}x{h}: {len(p)} images, e.g. {p[0]}" for (w, h), p in
                           sorted(by_size.items(), key=lambda item: -len(item[1])))
        raise BadInputError(
            f"the images are of {len(by_size)} sizes ({listed}): the frame of the boxes cannot "
            f"be told from the images; pass frame_size / --frame_size (the NIH release: "
            f"{NIH_FRAME_SIZE}), and the images of other sizes are then reported (or skipped "
            "with --skip_bad)")
    (width, height), paths = next(iter(by_size.items()))
    if width != height:
        raise BadInputError(f"the images are {width}x{height} (e.g. {paths[0]}), not square; "
                            "boxes need a square frame (pass frame_size to say which size is "
                            "right)")
    return width


def check_arguments(image_size=512, num_shards=None, num_folds=5, fold_seed=0,
                    group_by="patient", encoding="png", frame_size=None, num_workers=None):
    """Raises ValueError naming the first argument of `build` out of its range."""
    def integer(name, value, low, high=None, optional=False):
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
                or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be an integer {bound}, got {value!r}")

    integer("image_size", image_size, 1, MAX_FRAME_SIZE)
    integer("frame_size", frame_size, 1, MAX_FRAME_SIZE, optional=True)
    integer("num_shards", num_shards, 1, MAX_SHARDS, optional=True)
    integer("num_folds", num_folds, 2)
    integer("fold_seed", fold_seed, 0)
    integer("num_workers", num_workers, 1, optional=True)
    if group_by not in ("patient", "image"):
        raise ValueError(f"group_by must be 'patient' or 'image', got {group_by!r}")
    if encoding not in example.ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {example.ENCODINGS}")


def _box_table(meta, frame_size):
    """image_id -> (normalised yxyx [N, 4], class ids [N]) of the boxed images."""
    out = {}
    for image_id, rows in meta.boxes.groupby("image_id", sort=False):
        xywh = geometry.clip_boxes_xywh(rows[["x", "y", "w", "h"]].to_numpy(), frame_size,
                                        image_id)
        ids = [labels_lib.CLASS_INDEX[name] for name in rows["label"]]
        out[image_id] = (geometry.xywh_to_yxyx(xywh, frame_size), np.asarray(ids))
    return out


def _items(images, found, boxes, folds):
    """The record of every image in `images` -> (items, missing triples)."""
    items, missing = [], []
    fold_of = folds.to_dict()
    no_box = (np.zeros((0, 4)), np.zeros((0,), np.int64))
    for row in images.itertuples(index=False):
        row = row._asdict()
        image_id = row["image_id"]
        if image_id not in found:
            missing.append((image_id, image_id, "missing: referenced by the Data_Entry file but "
                            "not found under images/ or images_*/images/"))
            continue
        yxyx, box_labels = boxes.get(image_id, no_box)
        fields = dict(
            image_id=image_id, patient_id=row["patient_id"], age=row["age"], view=row["view"],
            sex=row["sex"], labels=[row[c] for c in labels_lib.CLASS_NAMES], boxes_yxyx=yxyx,
            box_labels=box_labels, fold=int(fold_of[image_id]),
            split=row.get("split", example.SPLIT_UNKNOWN))
        items.append(_Item(image_id=image_id, path=found[image_id], fields=fields))
    return items, missing


def _set_files(folder):
    """The names in `folder` that belong to a TFRecord set (manifest, metadata, shards)."""
    return sorted(n for n in os.listdir(folder)
                  if n in (manifest_lib.MANIFEST, manifest_lib.METADATA) or ".tfrecord" in n)


def _check_output(output_dir, overwrite):
    """Refuses to replace an earlier set unless `overwrite`; removes the leftover staging
    folders of builds whose process has ended. Nothing else is touched."""
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise FileExistsError(f"output_dir {output_dir} exists and is not a folder")
    if not os.path.isdir(output_dir):
        return
    complete = [n for n in _set_files(output_dir) if ".tmp-" not in n]
    if complete and not overwrite:
        raise FileExistsError(f"{output_dir} already holds a TFRecord set ({complete[0]}, ...); "
                              "pass overwrite=True / --overwrite to replace it")
    for name in os.listdir(output_dir):
        if name.startswith(STAGING_PREFIX):
            pid = name[len(STAGING_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not fileio.process_alive(int(pid)):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _swap_in(staging, output_dir):
    """Moves the validated set in `staging` into `output_dir` in place of an earlier set: the
    old manifest is removed first and the new one moved in last."""
    old = _set_files(output_dir)
    if manifest_lib.MANIFEST in old:
        os.remove(os.path.join(output_dir, manifest_lib.MANIFEST))
    for name in old:
        if name != manifest_lib.MANIFEST:
            os.remove(os.path.join(output_dir, name))
    new = _set_files(staging)
    for name in sorted(new, key=lambda n: n == manifest_lib.MANIFEST):
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    shutil.rmtree(staging)


def build(nih_dir, output_dir, *, image_size=512, num_shards=None, num_folds=5, fold_seed=0,
          group_by="patient", encoding="png", skip_bad=False, frame_size=None, num_workers=None,
          overwrite=False, command=None, progress=True):
    """Builds the TFRecord set of an NIH-layout folder.

    Args:
        nih_dir: folder with Data_Entry_2017[_v2020].csv, optional BBox_List_2017.csv and
            train_val_list.txt + test_list.txt, and images/ or images_*/images/.
        output_dir: where shards, manifest.json and metadata.csv go.
        image_size: stored size S (area resize from the frame).
        num_shards: number of shards (default: ~IMAGES_PER_SHARD images each, a multiple of
            the workers).
        num_folds, fold_seed, group_by: as `nih.assign_folds`.
        encoding: 'png' or 'raw'.
        skip_bad: skip missing / undecodable / wrongly sized / oversized images (counted and
            listed in the manifest) instead of failing; a build where every image is bad still
            fails.
        frame_size: the size of the source PNGs, the frame of the boxes (NIH: 1024; default:
            the size all images share; see the module docstring).
        num_workers: processes (default: all cores).
        overwrite: replace an earlier build in `output_dir`.
        command: the command line, recorded in the manifest.
        progress: show a progress bar.

    Returns:
        the manifest dict (as written).

    Raises:
        BadInputError: bad images and not `skip_bad` (first few named, total given), or
            images of several sizes and no `frame_size`; `output_dir` is left as it was (an
            earlier set in it intact).
        FileExistsError: `output_dir` holds a set and not `overwrite`.
        FileNotFoundError / ValueError: missing or malformed metadata, no images, an argument
            out of range (checked before anything is read).
    """
    check_arguments(image_size=image_size, num_shards=num_shards, num_folds=num_folds,
                    fold_seed=fold_seed, group_by=group_by, encoding=encoding,
                    frame_size=frame_size, num_workers=num_workers)
    output_dir = os.fspath(output_dir)
    _check_output(output_dir, overwrite)
    sources = find_source_files(nih_dir)
    meta = nih.load_metadata(sources.data_entry, sources.bbox, sources.split_lists)
    if meta.images.empty:
        raise ValueError(f"{sources.data_entry} lists no image")
    found = nih.find_images(nih_dir)
    referenced = [found[i] for i in meta.images["image_id"] if i in found]
    if not referenced:
        raise BadInputError(f"none of the {len(meta.images)} images of {sources.data_entry} is "
                            f"under {nih_dir}/images/ or {nih_dir}/images_*/images/")
    sizes, bad_headers = read_sizes(referenced)
    frame_source = "frame_size" if frame_size is not None else "the size of every image"
    frame_size = stated_frame_size(sizes, frame_size)
    folds = nih.assign_folds(meta, num_folds=num_folds, seed=fold_seed, group_by=group_by)
    items, bad = _items(meta.images, found, _box_table(meta, frame_size), folds)
    header_problem = dict(bad_headers)
    for path, size in sizes.items():
        if size != (frame_size, frame_size):
            header_problem[path] = _size_problem(size, frame_size)
    bad += [(item.image_id, item.path, header_problem[item.path]) for item in items
            if item.path in header_problem]
    items = [item for item in items if item.path not in header_problem]
    if bad and not skip_bad:
        raise _bad_input_error(bad, len(meta.images))
    if not items:
        raise _bad_input_error(bad, len(meta.images))  # skip_bad never yields an empty set

    num_workers = num_workers or os.cpu_count()
    if num_shards is None:
        per_worker = -(-len(items) // (IMAGES_PER_SHARD * num_workers))
        num_shards = num_workers * per_worker
    os.makedirs(output_dir, exist_ok=True)
    staging = os.path.join(output_dir, f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        manifest = _build_into(staging, nih_dir, sources, meta, found, folds, items, bad,
                               num_shards, num_workers, image_size, frame_size, frame_source,
                               encoding, num_folds, fold_seed, group_by, skip_bad, command,
                               progress, output_dir)
        inspect_lib.validate(staging)  # every record read back before the old set goes
        _swap_in(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _build_into(staging, nih_dir, sources, meta, found, folds, items, bad, num_shards,
                num_workers, image_size, frame_size, frame_source, encoding, num_folds,
                fold_seed, group_by, skip_bad, command, progress, output_dir):
    """Writes the shards, metadata.csv and manifest.json of `items` into `staging`."""
    order = np.random.default_rng(fold_seed).permutation(len(items))
    jobs = [_ShardJob(path=os.path.join(staging, manifest_lib.shard_name(s, num_shards)),
                      items=tuple(items[i] for i in order[s::num_shards]), image_size=image_size,
                      frame_size=frame_size, encoding=encoding)
            for s in range(num_shards)]
    with tqdm.tqdm(total=len(items), unit="img", disable=not progress,
                   desc=f"build {os.path.basename(os.path.normpath(output_dir))}") as bar:
        results = _run_jobs(jobs, min(num_workers, num_shards), bar)
    bad = bad + [triple for _, _, skipped in results for triple in skipped]
    if bad and not skip_bad:
        _remove_tmp(results)
        raise _bad_input_error(bad, len(meta.images))
    for job, (tmp, _, _) in zip(jobs, results):
        os.replace(tmp, job.path)
    if not any(written for _, written, _ in results):
        raise _bad_input_error(bad, len(meta.images))

    shard_of = {i: os.path.basename(job.path)
                for job, (_, written, _) in zip(jobs, results) for i in written}
    table = meta.images[meta.images["image_id"].isin(shard_of)].copy()
    table["fold"] = folds.loc[table["image_id"]].to_numpy()
    if "split" not in table:
        table["split"] = example.SPLIT_UNKNOWN
    num_boxes = meta.boxes.groupby("image_id").size()
    table["num_boxes"] = num_boxes.reindex(table["image_id"]).fillna(0).astype(int).to_numpy()
    table["shard"] = table["image_id"].map(shard_of)
    index_in_shard = {i: n for _, written, _ in results for n, i in enumerate(written)}
    table["shard_index"] = table["image_id"].map(index_in_shard)
    written_boxes = meta.boxes.loc[meta.boxes["image_id"].isin(shard_of), "label"]
    manifest = {
        "schema_version": example.SCHEMA_VERSION,
        "class_names": list(labels_lib.CLASS_NAMES),
        "boxed_classes": list(labels_lib.BOXED_CLASSES),
        "image_size": image_size,
        "frame_size": frame_size,
        "frame_size_from": frame_source,
        "channels": 1,
        "encoding": encoding,
        "resize": "area (PIL box filter)",
        "num_folds": num_folds,
        "fold_seed": fold_seed,
        "group_by": group_by,
        "num_images": len(table),
        "counts": manifest_lib.count_summary(
            table, [labels_lib.CLASS_INDEX[n] for n in written_boxes]),
        "shards": [{"file": os.path.basename(job.path), "count": len(written)}
                   for job, (_, written, _) in zip(jobs, results)],
        "sources": {os.path.relpath(p, nih_dir): {"sha256": sha256(p)}
                    for p in [sources.data_entry, sources.bbox, *(sources.split_lists or ())]
                    if p is not None},
        "unreferenced_images": len(set(found) - set(meta.images["image_id"])),
        "skipped": {"count": len(bad),
                    "files": [{"image_id": i, "path": p, "reason": r} for i, p, r in bad]},
        "command": command,
    }
    manifest_lib.write_manifest(staging, manifest, table)
    return manifest

