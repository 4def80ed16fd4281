"""A downloaded NIH ChestX-ray14 release made ready for `tfrecords_tools.build_nih` (the
library of `tfrecords_tools.prepare_nih`).

D holds what https://nihcc.app.box.com/v/ChestXray-NIHCC offers: images_001.tar.gz ...
images_012.tar.gz, Data_Entry_2017[_v2020].csv, BBox_List_2017.csv, train_val_list.txt and
test_list.txt. `prepare`

1. extracts every `images_*.tar.gz` of D into D (the archives hold `images/NAME.png`, so the
   images land in D/images/), W archives at a time. Resumable: an archive whose extraction
   completed is recorded by a marker (`D/.prepare_nih/ARCHIVE.done`, written after success,
   with the archive's size and modification time) and skipped, even once the archive is
   deleted; an archive whose extraction was interrupted is extracted again, keeping its files
   already extracted whole (each file is written to `NAME.part-ARCHIVE` and renamed when
   complete). A file already at a member's place that differs from the member is never
   overwritten: the archive fails, naming the file. Members with an absolute path, a `..`
   component, or that are not regular files or folders (links, devices) fail the archive,
   naming it and the member, before anything of theirs is written;
2. checks that the CSVs and lists are there and that every image of the Data_Entry file and
   `--expected_images` PNGs in all (112,120 in the release) are under D/images/ (or
   D/images_*/images/), naming what is missing (its count and the first few names);
3. prints the `build_nih` command to run next. The exit code is 1 when something is missing
   or an archive failed.
"""

import concurrent.futures
import dataclasses
import glob
import json
import os
import posixpath
import tarfile

from chestxray_tf import fileio
from chestxray_tf.data import build, nih

NIH_IMAGES = 112120  # images of the ChestX-ray14 release
NIH_ARCHIVES = tuple(f"images_{i:03d}.tar.gz" for i in range(1, 13))
ARCHIVE_PATTERN = "images_*.tar.gz"
MARKER_DIR = ".prepare_nih"
SHOWN = 5  # names listed of what is missing
CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely: names the archive and the problem."""

    def __init__(self, archive, problem):
        super().__init__(f"{archive}: {problem}")


def marker_path(nih_dir, archive_name):
    return os.path.join(nih_dir, MARKER_DIR, archive_name + ".done")


def _stamp(archive):
    stat = os.stat(archive)
    return {"size": stat.st_size, "mtime": stat.st_mtime}


def is_extracted(nih_dir, archive_name):
    """Whether the marker of `archive_name` is there and matches the archive (when present)."""
    path = marker_path(nih_dir, archive_name)
    if not os.path.isfile(path):
        return False
    archive = os.path.join(nih_dir, archive_name)
    if not os.path.exists(archive):
        return True  # extracted, then deleted to save space
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    return {k: recorded.get(k) for k in ("size", "mtime")} == _stamp(archive)


def member_target(root, archive_name, member):
    """Where `member` of the archive goes under `root`; None for a folder.

    Raises:
        ArchiveError: an absolute path, a `..` component, or not a file or folder.
    """
    name = member.name
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if posixpath.isabs(name) or name.startswith("\\") or ".." in parts or (
            len(parts) and ":" in parts[0]):
        raise ArchiveError(archive_name, f"member {name!r} would be written outside "
                                         f"{root} (absolute path or '..'): refused")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(archive_name, f"member {name!r} is not a regular file or folder "
                                         "(a link or device): refused")
    if member.isdir() or not parts:
        return None
    return os.path.join(root, *parts)


def _same_content(path, stream, size):
    if os.path.getsize(path) != size:
        return False
    with open(path, "rb") as f:
        while True:
            ours, theirs = f.read(CHUNK), stream.read(CHUNK)
            if ours != theirs:
                return False
            if not ours:
                return True


def extract_archive(nih_dir, archive_name):
    """Extracts `nih_dir/archive_name` into `nih_dir` (see the module docstring) and writes
    its marker; returns the number of files extracted or kept.

    Raises:
        ArchiveError: an unsafe member, a differing file at a member's place, or an unreadable
            archive.
    """
    archive = os.path.join(nih_dir, archive_name)
    stamp, part = _stamp(archive), f".part-{archive_name}"
    count = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                target = member_target(nih_dir, archive_name, member)
                if target is None:
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target):
                    if os.path.islink(target) or not os.path.isfile(target) or not _same_content(
                            target, tar.extractfile(member), member.size):
                        raise ArchiveError(archive_name, f"{target} exists and differs from "
                                                         f"the archive's {member.name}: it is "
                                                         "never overwritten; move it away")
                else:
                    with open(target + part, "wb") as out:
                        source = tar.extractfile(member)
                        while chunk := source.read(CHUNK):
                            out.write(chunk)
                    os.replace(target + part, target)
                count += 1
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(archive_name, f"cannot be read ({type(e).__name__}: {e}); "
                                         "download it again") from e
    os.makedirs(os.path.join(nih_dir, MARKER_DIR), exist_ok=True)
    fileio.atomic_write_json(marker_path(nih_dir, archive_name),
                             {"archive": archive_name, **stamp, "files": count})
    return count


def _remove_parts(nih_dir, archive_name):
    """Leftover `NAME.part-ARCHIVE` files of an interrupted extraction of this archive."""
    for path in glob.glob(os.path.join(glob.escape(nih_dir), "**", f"*.part-{archive_name}"),
                          recursive=True):
        os.remove(path)


def extract_all(nih_dir, num_workers=None, log=print):
    """Extracts every archive of `nih_dir` not yet extracted, `num_workers` at a time.

    Returns:
        {archive name: "done earlier" | "extracted N files" | the error message}, and the
        number of archives that failed.
    """
    archives = sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(glob.escape(nih_dir), ARCHIVE_PATTERN)))
    archives += [os.path.basename(p)[:-len(".done")] for p in glob.glob(os.path.join(
        glob.escape(nih_dir), MARKER_DIR, "*.done"))]
    status, todo = {}, []
    for name in sorted(set(archives)):
        if is_extracted(nih_dir, name):
            status[name] = "done earlier"
        else:
            _remove_parts(nih_dir, name)
            todo.append(name)
    workers = num_workers or os.cpu_count() or 1
    if todo:
        log(f"extracting {len(todo)} archives ({', '.join(todo)}), {min(workers, len(todo))} "
            "at a time")
    # Threads: the work is gzip inflation (zlib releases the GIL) and file I/O; no fork of a
    # process that has imported TensorFlow.
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(todo) or 1)) as pool:
        done = dict(zip(todo, pool.map(_extract_or_error, [nih_dir] * len(todo), todo)))
    for name, outcome in done.items():
        log(f"{name}: {outcome}")
    status.update(done)
    failed = sum(name in done and not outcome.startswith("extracted")
                 for name, outcome in status.items())
    return status, failed


def _extract_or_error(nih_dir, archive_name):
    try:
        return f"extracted {extract_archive(nih_dir, archive_name)} files"
    except ArchiveError as e:
        return str(e)


@dataclasses.dataclass(frozen=True)
class Check:
    """What `check_release` found missing: metadata files, images of the Data_Entry file,
    and how many PNGs there are against the expected number."""
    missing_files: list
    missing_images: list
    num_images: int
    expected_images: int

    @property
    def ok(self):
        return not self.missing_files and not self.missing_images and (
            self.num_images >= self.expected_images)


def check_release(nih_dir, expected_images=NIH_IMAGES):
    """Checks the metadata files and the images of `nih_dir` (see the module docstring)."""
    entries = [n for n in build.DATA_ENTRY_NAMES if os.path.exists(os.path.join(nih_dir, n))]
    missing_files = [] if entries else [" or ".join(build.DATA_ENTRY_NAMES[:2])]
    missing_files += [n for n in (build.BBOX_NAME, *build.SPLIT_LIST_NAMES)
                      if not os.path.exists(os.path.join(nih_dir, n))]
    try:
        found = nih.find_images(nih_dir)
    except FileNotFoundError:
        found = {}
    listed = []
    if entries:
        meta = nih.load_metadata(os.path.join(nih_dir, entries[0]))
        listed = list(meta.images["image_id"])
    return Check(missing_files=missing_files,
                 missing_images=[i for i in listed if i not in found],
                 num_images=len(found), expected_images=expected_images)


def _names(items):
    shown = ", ".join(items[:SHOWN])
    return shown + (", ..." if len(items) > SHOWN else "")


def check_lines(nih_dir, check, status):
    """The messages of `check` (empty when all is there)."""
    lines = []
    if check.missing_files:
        lines.append(f"missing in {nih_dir}: {', '.join(check.missing_files)} (download them "
                     "from https://nihcc.app.box.com/v/ChestXray-NIHCC)")
    if check.missing_images:
        lines.append(f"{len(check.missing_images)} images of the Data_Entry file are not under "
                     f"{nih_dir}/images/: {_names(check.missing_images)}")
    if check.num_images < check.expected_images:
        absent = [a for a in NIH_ARCHIVES if a not in status]
        lines.append(f"{check.num_images:,} PNGs found, {check.expected_images:,} expected"
                     + (f"; archives not in {nih_dir}: {_names(absent)}" if absent else ""))
    return lines


def build_command(nih_dir):
    return (f"python -m tfrecords_tools.build_nih --nih_dir {nih_dir} "
            f"--output_dir {os.path.join(os.path.dirname(nih_dir.rstrip(os.sep)), 'nih_512')} "
            "--image_size 512 --frame_size 1024")


def prepare(nih_dir, num_workers=None, expected_images=NIH_IMAGES, log=print):
    """Extracts, checks and prints the next command; returns the exit code (0: ready)."""
    if not os.path.isdir(nih_dir):
        log(f"--nih_dir {nih_dir} is not a folder")
        return 1
    status, failed = extract_all(nih_dir, num_workers, log)
    try:
        check = check_release(nih_dir, expected_images)
    except ValueError as e:  # a malformed Data_Entry file: nih names the file and line
        log(f"not ready: {e}")
        return 1
    for line in check_lines(nih_dir, check, status):
        log(line)
    if failed or not check.ok:
        log(f"not ready: {failed} archives failed" if failed else "not ready")
        return 1
    log(f"ready: {check.num_images:,} images and the metadata in {nih_dir}. Next:")
    log(f"  {build_command(nih_dir)}")
    return 0
