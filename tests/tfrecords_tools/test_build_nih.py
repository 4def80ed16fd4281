"""Runs the thin binaries tfrecords_tools.build_nih and tfrecords_tools.inspect end to end."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(module, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
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

    inspected = _run("tfrecords_tools.inspect", f"--input={out}", "--show=2",
                     f"--show_dir={tmp_path / 'show'}")
    assert inspected.returncode == 0, inspected.stderr
    report = json.loads(inspected.stdout[:inspected.stdout.index("wrote")])
    assert report["counts"] == manifest["counts"]
    assert len(os.listdir(tmp_path / "show")) == 2


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
