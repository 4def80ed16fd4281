"""What a new user sees from the binaries (issue #18 items 1, 3, 4): None-able fields from the
command line, one-line user errors, `--print_config`, absolute paths in the stored config, the
offline-weights message, a training run that says what it does and where it put it, and
`evaluate` ending with its headline numbers; TensorFlow's start-up noise filtered."""

import json
import logging
import os
import subprocess
import sys

import keras
import pytest

from chestxray_tf import cli
from chestxray_tf.models import resnet_v2
from chestxray_tf.training import defaults, trainer
from tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}  # the noise is ours to filter, not the env's


def _run(args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_print_config_takes_none_and_stores_paths_absolute(tmp_path):
    """`--config.model.weights=None` is None (not the string "None"); a relative manifest is
    made absolute against the current folder; nothing runs."""
    result = _run(["chestxray_tf.cli.train", f"--config={REPO}/configs/li2018_table2.py",
                   "--config.model.weights=None", "--config.data.manifest=rel/manifest.json",
                   "--print_config"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads(result.stdout)
    assert config["model"]["weights"] is None
    assert config["data"]["manifest"] == str(tmp_path / "rel" / "manifest.json")
    assert config["task"] == "li2018" and not os.listdir(tmp_path)
    # TensorFlow's start-up lines (cuInit, oneDNN, absl's pre-init warning) are filtered.
    assert "cuInit" not in result.stderr and "absl::InitializeLog" not in result.stderr
    assert "oneDNN custom operations" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--config=missing/nope.py", "--workdir=w"], "--config=missing/nope.py: no such file"),
    (["--config=configs/demo.py", "--config.model.nope=None", "--print_config"],
     "config has no field 'nope'"),
])
def test_user_errors_are_one_line(args, message):
    result = _run(["chestxray_tf.cli.train", *args], cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("train: ") and message in lines[0], result.stderr
    assert lines[1:] in ([], ["(--debug shows the traceback)"])


def test_none_overrides_apply_only_to_none_able_fields():
    config = defaults.base_config("li2018")
    cli.apply_none_overrides(config, cli.none_overrides(
        ["--config.model.weights=None", "--config.model.smoothing=none", "--workdir=x"]))
    assert config.model.weights is None and config.model.smoothing is None
    with pytest.raises(cli.UserError, match="model.grid cannot be None"):
        cli.apply_none_overrides(config, ["model.grid"])
    with pytest.raises(cli.UserError, match="no section 'nope'"):
        cli.apply_none_overrides(config, ["nope.grid"])


def test_resolve_paths_leaves_urls_and_imagenet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = defaults.base_config("li2018")
    config.data.manifest = "gs://bucket/manifest.json"
    defaults.resolve_paths(config)
    assert config.data.manifest == "gs://bucket/manifest.json"
    assert config.model.weights == "imagenet"
    config.model.weights = "w/backbone.weights.h5"
    defaults.resolve_paths(config)
    assert config.model.weights == str(tmp_path / "w" / "backbone.weights.h5")


def test_offline_imagenet_weights_end_in_one_line_that_says_how_to_go_on(monkeypatch):
    url = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
           "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")

    def offline():  # what keras.utils.get_file raises without internet
        raise Exception(f"URL fetch failure on {url}: None -- [Errno -3] Temporary failure "
                        "in name resolution")

    monkeypatch.setenv("KERAS_HOME", "/data/keras")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)], name="backbone")
    with pytest.raises(resnet_v2.WeightsUnavailable) as raised:
        resnet_v2.load_weights(model, "imagenet", offline)
    message = str(raised.value)
    assert "\n" not in message
    assert "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert "/data/keras/models/" in message
    assert "--config.model.weights=PATH" in message and "--config.model.weights=None" in message

    def broken():  # any other failure is not hidden
        raise RuntimeError("not a download")

    with pytest.raises(RuntimeError, match="not a download"):
        resnet_v2.load_weights(model, "imagenet", broken)


def test_image_size_off_the_stride_warns(built_set, tmp_path, caplog):
    config = tiny_config(built_set)
    config.data.image_size = 100
    with caplog.at_level(logging.WARNING):
        trainer.Run(config, str(tmp_path / "run"))
    assert any("data.image_size=100 is not a multiple of the backbone's stride 32" in r.message
               and "use 96 or 128" in r.message for r in caplog.records), caplog.text


@pytest.mark.slow
def test_train_then_evaluate_explain_themselves(built_set, tmp_path):
    """train prints its plan and where it put everything, logs the loss with the progress bar
    off, says when num_steps is below what was trained; evaluate, run from another folder on
    a relative workdir, prints the headline numbers."""
    (tmp_path / "elsewhere").mkdir()
    train = ["chestxray_tf.cli.train", f"--config={REPO}/configs/li2018.py:tiny",
             "--workdir=run", f"--config.data.manifest={built_set}/manifest.json",
             "--config.train.num_steps=4", "--config.train.strategy=default"]
    result = _run(train, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    workdir = tmp_path / "run"
    for expected in (f"train li2018 (li2018) in {workdir}",
                     "strategy: default strategy (no tf.distribute), 1 replica(s) on CPU:0",
                     "stage 0 train (gradient): 4 steps of 4 images",
                     "stage train step 2/4: loss ", "stage train step 4/4: loss ",
                     f"trained: {workdir}",
                     f"checkpoints: {workdir}/stages/0_train/checkpoints",
                     f"next: python -m chestxray_tf.cli.evaluate --workdir {workdir}"):
        assert expected in log, (expected, log[-3000:])
    assert "Sharding callback" not in log and "cuInit" not in log
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["data"]["manifest"] == f"{built_set}/manifest.json"

    lower = _run([*train[:-2], "--config.train.num_steps=2", "--config.train.strategy=default"],
                 cwd=tmp_path)
    assert lower.returncode == 0, lower.stderr[-3000:]
    assert "trained 4 steps, more than num_steps=2 now: nothing to do" in lower.stderr

    evaluated = _run(["chestxray_tf.cli.evaluate", "--workdir=../run"],
                     cwd=tmp_path / "elsewhere")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = evaluated.stdout
    assert "mean AUC " in out and "localization accuracy IoU > 0.1: " in out
    assert "(chance " in out and " boxes)" in out
    assert f"report: {workdir}/eval/test_fold/report.md" in out
