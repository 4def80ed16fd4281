"""benchmarks/gpu.py runs on a CPU (`--quick`): its table and gpu.json have a row per task,
precision and XLA setting, each measured or failed with its error, beside the bare backbone."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_quick_gpu_benchmark_runs_on_cpu(tmp_path):
    precisions = ["float32", "mixed_bfloat16"]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--quick", f"--workdir={tmp_path}",
         "--tasks=li2018", f"--precisions={','.join(precisions)}", "--xla=off"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert [(r["task"], r["precision"], r["xla"]) for r in results["rows"]] == [
        ("li2018", p, "off") for p in precisions]
    assert results["not_run"] == []  # well within --budget_minutes
    for row in results["rows"]:
        for measured in (row, row["bare"]):
            assert "error" not in measured, measured
            assert measured["images_per_s"] > 0 and measured["batch"] == 4
            assert measured["peak_memory_mb"] is None  # no GPU here
        assert row["bare"]["stage"] == "train" and row["backbone"] == "resnet_v2_tiny"
    pipeline = results["pipeline"]
    assert pipeline["pipeline_images_per_s"] > 0 and 0 < pipeline["ratio"]
    table = [line for line in out.stdout.splitlines() if line.startswith("| li2018 |")]
    assert len(table) == len(precisions) and all("n/a" in line for line in table)
    assert "input pipeline (png, 64 px, uint8 grey" in out.stdout
