"""Shared test set-up: the `slow` marker, paths of the real NIH excerpt, quiet TF logs."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from chestxray_tf.data import build, synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NIH_SAMPLE = REPO_ROOT / ".." / "shared" / "data" / "nih_sample"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~20 s on 2 CPU cores "
                            "(`make test` runs it; `make test-fast` does not)")
    # Keras' own save_weights path (keras/src/backend/tensorflow/core.py) under NumPy 2.
    config.addinivalue_line("filterwarnings",
                            "ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope="session")
def nih_sample_dir():
    """The real NIH metadata excerpt in ../shared/data/nih_sample (CI has it: never skipped)."""
    assert NIH_SAMPLE.is_dir(), f"{NIH_SAMPLE} is missing: the tests need ../shared beside the repo"
    return NIH_SAMPLE


SOURCE_SIZE = 64


@pytest.fixture(scope="session")
def nih_source(tmp_path_factory):
    """A synthetic folder in the NIH layout: 24 patients, SOURCE_SIZE px PNGs, boxes, lists."""
    out = tmp_path_factory.mktemp("synthetic") / "nih"
    synthetic.generate(out, num_patients=24, image_size=SOURCE_SIZE, seed=5, num_workers=1,
                       progress=False)
    return out


@pytest.fixture(scope="session")
def built_set(nih_source, tmp_path_factory):
    """`nih_source` built at its own size, PNG, 4 shards (do not modify: copy first)."""
    out = tmp_path_factory.mktemp("built")
    build.build(nih_source, out, image_size=SOURCE_SIZE, num_shards=4, encoding="png",
                num_workers=1, progress=False, command="test")
    return out


@pytest.fixture(scope="session")
def trained_run(built_set, tmp_path_factory):
    """A workdir of the tiny Li et al. config trained for 12 steps on `built_set`."""
    from chestxray_tf.training import trainer
    from tiny import tiny_config
    workdir = tmp_path_factory.mktemp("trained_run")
    trainer.train(tiny_config(built_set, num_steps=12, steps_per_epoch=6), str(workdir))
    return workdir
