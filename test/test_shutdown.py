"""The node process under a supervisor's signals: 3 runs each of launch's SIGINT pattern (the process group, then
the node again 0.1 s later), SIGTERM and the lifecycle shutdown transition, each while frames flow; every run
must exit 0 without a traceback. benchmarks/shutdown.py runs the same harness 20 times per variant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("sgdfuse_ros.msg")

pytestmark = [pytest.mark.ros, pytest.mark.slow]

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "shutdown.py"


def _harness():
    spec = importlib.util.spec_from_file_location("sgdfuse_shutdown_benchmark", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant", ["launch_sigint", "sigterm", "lifecycle_shutdown"])
def test_clean_exit_three_times(tmp_path, stage1_weights, variant, monkeypatch):
    harness = _harness()
    from conftest import ros_subprocess_env

    monkeypatch.setattr(harness, "node_environment", ros_subprocess_env)  # this session's domain and doubles
    results = [harness.run_variant(variant, index, tmp_path, stage1_weights) for index in range(3)]
    failed = [r for r in results if not r["clean"]]
    assert not failed, "\n\n".join(f"{r['reason']}\n{r.get('log', '')}" for r in failed)
