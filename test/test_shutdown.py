"""The node process under a supervisor's signals: 3 runs each of launch's SIGINT pattern (the process group, then
the node again 0.1 s later), SIGTERM and the lifecycle shutdown transition, each while frames flow; every run
must exit 0 without a traceback. benchmarks/shutdown.py runs the same harness 20 times per variant."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

pytest.importorskip("rclpy")
pytest.importorskip("sgdfuse_ros.msg")

pytestmark = [pytest.mark.ros, pytest.mark.slow]



def _harness():
    return load_benchmark("shutdown")


@pytest.mark.parametrize("variant", ["launch_sigint", "sigterm", "lifecycle_shutdown"])
def test_clean_exit_three_times(tmp_path, stage1_weights, variant, monkeypatch):
    harness = _harness()
    from conftest import ros_subprocess_env

    monkeypatch.setattr(harness, "node_environment", ros_subprocess_env)  # this session's domain and doubles
    results = [harness.run_variant(variant, index, tmp_path, stage1_weights) for index in range(3)]
    failed = [r for r in results if not r["clean"]]
    assert not failed, "\n\n".join(f"{r['reason']}\n{r.get('log', '')}" for r in failed)
