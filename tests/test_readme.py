"""The README's commands run as printed (issue #18): the "Using it" and "Predict" blocks are
walked in a fresh folder on a tiny synthetic set. The only changes to what is printed: optional
`[...]` parts are left out, the configs run in their `:tiny` smoke mode (one fold for `cv`),
and flags appended for a tiny data set (a later absl flag wins); the synthetic set is made
first, as the README says to when there is no NIH download."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "tfrecords_tools.make_synthetic": ["--num_patients=24", "--image_size=64"],
    "tfrecords_tools.build_nih": ["--image_size=64", "--num_shards=2", "--num_workers=1"],
    "chestxray_tf.cli.train": ["--config.train.strategy=default"],
    "chestxray_tf.cli.cv": ["--folds=0", "--config.train.strategy=default"],
}


def readme_commands(section):
    """The shell commands of the first bash block under `## section`, continuation lines
    joined, comments and `[optional]` parts removed."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    block = text.split(f"## {section}", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = re.sub(r"\s+#.*$", "", line)
        line = re.sub(r"\s*\[[^\]]*\]", "", line).strip()
        if line:
            commands.append(shlex.split(line))
    return commands


def _module(command):
    return command[2] if command[:2] == ["python", "-m"] else command[0]


@pytest.mark.slow
def test_readme_commands_run_as_printed(tmp_path):
    commands = readme_commands("Using it") + readme_commands("Predict on your own images")
    modules = [_module(c) for c in commands]
    assert modules == ["tfrecords_tools.build_nih", "tfrecords_tools.inspect",
                       "tfrecords_tools.make_synthetic", "chestxray_tf.cli.train",
                       "tensorboard", "chestxray_tf.cli.evaluate", "chestxray_tf.cli.cv",
                       "chestxray_tf.cli.export", "chestxray_tf.cli.predict"], modules
    order = [2, 0, 1] + list(range(3, len(commands)))  # no NIH download: the synthetic set first
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for index in order:
        command, module = commands[index], modules[index]
        if module == "tensorboard":  # the viewer: its --logdir holds the run's event files
            logdir = tmp_path / command[command.index("--logdir") + 1]
            assert any("events.out.tfevents" in f for _, _, fs in os.walk(logdir) for f in fs)
            continue
        if module == "chestxray_tf.cli.predict":
            os.symlink(tmp_path / "NIH" / "images", tmp_path / "scans")
        args = [a.replace("configs/li2018_table2.py", "configs/li2018_table2.py:tiny")
                for a in command[1:]]
        result = subprocess.run([sys.executable, *args, *TINY.get(module, [])], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        if module == "tfrecords_tools.inspect":
            assert len(os.listdir(tmp_path / "inspect_show")) == 8
        if module == "chestxray_tf.cli.evaluate":
            assert "mean AUC" in result.stdout
    assert (tmp_path / "W" / "export" / "saved_model.pb").exists()
    assert (tmp_path / "CV" / "cv_report.md").exists()
    assert (tmp_path / "out" / "summary.csv").exists()
