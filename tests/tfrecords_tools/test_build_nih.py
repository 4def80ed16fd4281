"""Runs the thin binaries tfrecords_tools.build_nih and tfrecords_tools.inspect end to end."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import processes

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(module, *args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_build_then_inspect(nih_source, tmp_path):
    out = tmp_path / "set"
    built = _run("tfrecords_tools.build_nih", f"--nih_dir={nih_source}", f"--output_dir={out}",
                 "--image_size=32", "--num_shards=2", "--encoding=raw", "--num_workers=1")
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["num_images"] == manifest["num_images"] > 0
    assert manifest["command"].startswith("python -m tfrecords_tools.build_nih --nih_dir=")
    assert "img/s" in built.stderr  # the progress bar

    # The README's command as printed: `--show N` alone draws into ./inspect_show.
    inspected = _run("tfrecords_tools.inspect", "--input", str(out), "--show", "2",
                     cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout[:inspected.stdout.index("wrote")])
    assert report["counts"] == manifest["counts"]
    assert len(os.listdir(tmp_path / "inspect_show")) == 2


def test_build_of_a_folder_with_a_missing_image_fails_naming_it(nih_source, tmp_path):
    folder = tmp_path / "nih"
    (folder / "images").mkdir(parents=True)
    names = sorted(os.listdir(nih_source / "images"))
    for name in os.listdir(nih_source):
        if name != "images":
            (folder / name).write_bytes((nih_source / name).read_bytes())
    for name in names[1:]:
        (folder / "images" / name).symlink_to(nih_source / "images" / name)
    failed = _run("tfrecords_tools.build_nih", f"--nih_dir={folder}",
                  f"--output_dir={tmp_path / 'out'}", "--image_size=32", "--num_workers=1")
    assert failed.returncode != 0
    assert f"1 of {len(names)} referenced images are bad" in failed.stderr
    assert names[0] in failed.stderr


def test_numeric_flags_are_checked_before_any_work(tmp_path):
    for module, args, message in [
            ("tfrecords_tools.build_nih", ["--image_size=0"], "image_size must be an integer"),
            ("tfrecords_tools.build_nih", ["--num_workers=-1"], "num_workers must be"),
            ("tfrecords_tools.make_synthetic", ["--num_patients=0"], "num_patients must be"),
            ("tfrecords_tools.make_synthetic", ["--num_patients=2", "--box_fraction=nan"],
             "box_fraction must be in"),
            ("tfrecords_tools.inspect", ["--show=-1"], "show must be >= 0")]:
        folder_flags = {"tfrecords_tools.build_nih": [f"--nih_dir={tmp_path / 'none'}",
                                                      f"--output_dir={tmp_path / 'out'}"],
                        "tfrecords_tools.make_synthetic": [f"--output_dir={tmp_path / 'out'}"],
                        "tfrecords_tools.inspect": [f"--input={tmp_path / 'none'}"]}[module]
        result = _run(module, *folder_flags, *args)
        assert result.returncode != 0 and message in result.stderr, (module, result.stderr[-2000:])
        assert not (tmp_path / "out").exists()


def _children(pid):
    """Pids of the live (not zombie) processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.slow
def test_sigkill_of_the_build_ends_its_workers(nih_source, tmp_path):
    # Large sources (2048 px) so that the workers are busy when the parent is killed.
    folder = tmp_path / "nih"
    (folder / "images").mkdir(parents=True)
    for name in os.listdir(nih_source):
        if name != "images":
            (folder / name).write_bytes((nih_source / name).read_bytes())
    ramp = np.add.outer(np.arange(2048), np.arange(2048)) % 256
    for k, name in enumerate(sorted(os.listdir(nih_source / "images"))):
        Image.fromarray(((ramp + k) % 256).astype(np.uint8)).save(folder / "images" / name,
                                                                   compress_level=1)
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "tfrecords_tools.build_nih", f"--nih_dir={folder}",
         f"--output_dir={out}", "--image_size=32", "--frame_size=2048", "--num_shards=8",
         "--num_workers=2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    workers = []
    try:
        def writing():
            nonlocal workers
            workers = _children(process.pid)
            tmp = list(out.rglob("*.tmp-*")) if out.exists() else []  # shards being written
            return len([w for w in workers
                        if "spawn_main" in pathlib.Path(f"/proc/{w}/cmdline").read_text(
                            errors="replace")]) == 2 and tmp
        processes.sigkill_when(process, writing, timeout=180, poll=0.02)
        assert process.returncode == -signal.SIGKILL
        assert workers, "the build had no worker processes when it was killed"
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived the killed build"
    finally:
        for w in workers:  # never leave one behind, even when the test fails
            if _alive(w):
                os.kill(w, signal.SIGKILL)
