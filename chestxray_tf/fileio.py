"""Atomic file writes: a reader of `path` sees the old content or the whole new content, never
a half-written file (shared by predict, build and the trainer).

`atomic_write(path, data)` writes `data` (str: UTF-8; bytes: as is) to a temporary name beside
`path` (`.NAME.tmp-PID-RANDOM`, same folder, so the rename stays on one file system), then
renames it onto `path`. On failure the temporary file is removed and `path` is untouched.

* Local paths (no `scheme://`): the data is flushed and fsync'ed before `os.replace`, and the
  folder is fsync'ed after it, so a power loss leaves the old or the new file. With
  `overwrite=False` the rename is a hard link that fails when `path` exists: no-clobber even
  against a concurrent writer.
* Other paths (gs://, hdfs://, ...): `tf.io.gfile` writes the temporary object and renames it.
  On object stores the rename is a copy then a delete: `path` is still never half-written (an
  object appears whole when its upload closes), but `overwrite=False` is a check before the
  copy, not atomic against a concurrent writer.

`atomic_write_json(path, obj)` writes `json.dumps(obj, indent=2)` plus a newline the same way;
NaN and infinities are a ValueError (not JSON) unless `allow_nan=True`.
"""

import json
import os
import uuid

import tensorflow as tf


def _is_remote(path):
    return "://" in path


def _temporary_name(path):
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_folder(folder):
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:  # e.g. a platform without folder handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_local(path, data, overwrite):
    tmp = _temporary_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError when `path` exists, whoever made it
            os.remove(tmp)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(os.path.dirname(path))


def _write_remote(path, data, overwrite):
    tmp = _temporary_name(path)
    try:
        if not overwrite and tf.io.gfile.exists(path):
            raise FileExistsError(f"{path} exists (atomic_write with overwrite=False)")
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=overwrite)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def atomic_write(path, data, overwrite=True):
    """Writes `data` to `path` atomically (see the module docstring).

    Args:
        path: a local path or a tf.io.gfile URL; its folder must exist.
        data: str (written as UTF-8) or bytes.
        overwrite: replace an existing `path`; False: FileExistsError if it exists.

    Raises:
        TypeError: `data` is neither str nor bytes.
        FileExistsError: `path` exists and not `overwrite`.
        OSError / tf.errors.OpError: the write failed; `path` is unchanged and no temporary
            file is left.
    """
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"atomic_write({path!r}): data must be str or bytes, got "
                        f"{type(data).__name__}")
    (_write_remote if _is_remote(path) else _write_local)(path, data, overwrite)


def atomic_write_json(path, obj, overwrite=True, allow_nan=False, **dumps_kwargs):
    """Writes `obj` as JSON (indent 2 unless given, a final newline) atomically to `path`.

    The whole text is serialised before anything is written, so an object that does not
    serialise (ValueError, TypeError) leaves `path` untouched.

    Raises:
        ValueError: NaN or infinity in `obj` and not `allow_nan`.
        TypeError: `obj` holds something JSON cannot represent.
        as `atomic_write` otherwise.
    """
    dumps_kwargs.setdefault("indent", 2)
    text = json.dumps(obj, allow_nan=allow_nan, **dumps_kwargs) + "\n"
    atomic_write(path, text, overwrite=overwrite)


def atomic_copy(source, target):
    """Copies `source` to `target` (any tf.io.gfile paths) so that `target` is never a part
    of `source`: a temporary copy beside it, renamed into place."""
    tmp = _temporary_name(target)
    try:
        tf.io.gfile.copy(source, tmp, overwrite=True)
        tf.io.gfile.rename(tmp, target, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def process_alive(pid):
    """Whether process `pid` of this machine still runs (for stale locks and staging folders)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
