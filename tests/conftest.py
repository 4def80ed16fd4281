"""Shared test set-up: the `slow` marker, paths of the real NIH excerpt, quiet TF logs."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NIH_SAMPLE = REPO_ROOT / ".." / "shared" / "data" / "nih_sample"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~20 s on 2 CPU cores "
                            "(`make test` runs it; `make test-fast` does not)")


@pytest.fixture(scope="session")
def nih_sample_dir():
    """The real NIH metadata excerpt in ../shared/data/nih_sample (CI has it: never skipped)."""
    assert NIH_SAMPLE.is_dir(), f"{NIH_SAMPLE} is missing: the tests need ../shared beside the repo"
    return NIH_SAMPLE
