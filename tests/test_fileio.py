"""chestxray_tf/fileio.py: atomic writes, local and through tf.io.gfile."""

import json
import os

import pytest
import tensorflow as tf

from chestxray_tf import fileio


def test_writes_text_and_bytes_and_replaces(tmp_path):
    path = tmp_path / "a.txt"
    fileio.atomic_write(path, "héllo")
    assert path.read_bytes() == "héllo".encode("utf-8")
    fileio.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary file left


def test_no_overwrite_keeps_the_existing_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(FileExistsError):
        fileio.atomic_write(path, "new", overwrite=False)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    fileio.atomic_write(tmp_path / "b.txt", "new", overwrite=False)
    assert (tmp_path / "b.txt").read_text() == "new"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        fileio.atomic_write(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_json_rejects_nan_before_writing(tmp_path):
    path = tmp_path / "m.json"
    fileio.atomic_write_json(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]} and path.read_text().endswith("\n")
    with pytest.raises(ValueError):
        fileio.atomic_write_json(path, {"loss": float("nan")})
    with pytest.raises(TypeError):
        fileio.atomic_write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    fileio.atomic_write_json(path, {"loss": float("nan")}, allow_nan=True)
    assert "NaN" in path.read_text()
    with pytest.raises(TypeError, match="str or bytes"):
        fileio.atomic_write(path, 3)


def test_gfile_paths(tmp_path):
    path = "ram://fileio_test/a.json"
    tf.io.gfile.makedirs("ram://fileio_test")
    fileio.atomic_write_json(path, {"k": 1})
    with tf.io.gfile.GFile(path) as f:
        assert json.load(f) == {"k": 1}
    with pytest.raises(FileExistsError):
        fileio.atomic_write(path, "x", overwrite=False)
    fileio.atomic_write(path, "y")
    with tf.io.gfile.GFile(path) as f:
        assert f.read() == "y"
    assert tf.io.gfile.listdir("ram://fileio_test") == ["a.json"]
