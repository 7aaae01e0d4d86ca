"""benchmarks/performance.py: runs on the CPU with the tiny SAM and Stage II, never imports a ROS package or
PyYAML, and prints one JSON line per configuration with the documented fields; a configuration whose parameter
FuseConfig lacks is reported as skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "performance.py"
#: Modules the benchmark must not need: a GPU machine has torch but no ROS (and maybe no PyYAML).
BLOCKED = ("rclpy", "message_filters", "sensor_msgs", "rosbags", "yaml")


def _load():
    return load_benchmark("performance")


@pytest.mark.slow
def test_runs_tiny_sam_and_stage2_on_the_cpu_without_ros_packages(tmp_path) -> None:
    for name in BLOCKED:
        package = tmp_path / "blocked" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('benchmarks/performance.py imported {name}')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(BENCHMARK), "--prior", "sam-tiny", "--stage2", "--set", "stage2.steps=1"]
    command += ["--frames", "3", "--warmup", "1", "--size", "64x48", "--rate", "40", "--threads", "1"]
    command += ["--configs", "fp32", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    rows = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["config"] == "fp32" and row["overrides"] == {"compute.precision": "fp32"}
    assert row["device"] == "cpu" and row["prior"] == "sam:tiny(random)" and row["stage2"].startswith("diffusion(ddim1")
    assert row["size"] == "64x48" and row["frames"] == 3 and row["threads"] == 1
    assert row["fused_hz"] > 0 and row["offered_hz"] > 0 and row["dropped"] == {}
    assert set(row["stages_ms"]) == {"preprocess", "prior", "stage1", "stage2", "postprocess", "total"}
    for stats in (*row["stages_ms"].values(), row["latency_ms"], row["frame_ms"]):
        assert 0 <= stats["p50"] <= stats["p99"] <= stats["max"]
    # Latency runs from the pair's arrival to its host outputs: at least the pipeline's own time.
    assert row["latency_ms"]["p50"] >= row["stages_ms"]["total"]["p50"] * 0.9
    assert row["peak_memory_kind"] == "process_max_rss" and row["peak_memory_mb"] > 0


def test_missing_parameters_are_reported_as_skipped(capsys, monkeypatch) -> None:
    performance = _load()
    assert performance.unavailable({"compute.precision": "bf16", "stage2.steps": 2}) == ""
    assert performance.unavailable({"compute.precision": "bf16", "compute.no_such": 1}) == "compute.no_such"
    monkeypatch.setitem(performance.CONFIGURATIONS, "future", {"compute.precision": "bf16", "compute.no_such": True})
    assert performance.main(["--configs", "future"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row == {
        "config": "future",
        "overrides": {"compute.precision": "bf16", "compute.no_such": True},
        "skipped": "compute.no_such not available",
    }
    assert performance.parse_set(["a.b=true", "c.d=0.5", "e.f=text"]) == {"a.b": True, "c.d": 0.5, "e.f": "text"}
    with pytest.raises(SystemExit):
        performance.parser().parse_args(["--configs", "fp64"])
