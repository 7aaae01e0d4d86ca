"""Shared pytest set-up: private ROS discovery, and test doubles only for ROS packages that are missing.

* ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (Iron and newer; on Humble export ROS_LOCALHOST_ONLY=1
  instead) and a random ROS_DOMAIN_ID in 100-200 chosen once per test session (before anything
  calls rclpy.init), so concurrent test runs on one machine do not see each other's topics.
* message_filters, launch and launch_ros are not installable here. For each one that cannot be
  imported, test/doubles/ is appended to sys.path (appended: a real package, when installed, is
  always found first) and the pytest header says which doubles are in use. Subprocesses started by
  tests get the same PYTHONPATH through :func:`ros_subprocess_env`.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DOUBLES = Path(__file__).resolve().parent / "doubles"
DOUBLED_PACKAGES = ("message_filters", "launch", "launch_ros")
#: The workplace data sets (../shared/data beside the checkout), or SGDFUSE_SHARED_DATA; tests that need them
#: skip where the folder is missing. Never an absolute path of one machine.
SHARED_DATA = Path(os.environ.get("SGDFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
if "SGDFUSE_TEST_DOMAIN_ID" not in os.environ:
    # Fixed for the whole session (also inherited by subprocesses), random across sessions.
    os.environ["SGDFUSE_TEST_DOMAIN_ID"] = str(random.SystemRandom().randint(100, 200))
os.environ["ROS_DOMAIN_ID"] = os.environ["SGDFUSE_TEST_DOMAIN_ID"]
# ament index lookups (get_package_share_directory) in the venv prefix where the package is installed.
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)


def _missing_packages() -> list[str]:
    missing = []
    for name in DOUBLED_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        # A namespace package is not the real thing: the repository's own launch/ folder (no
        # __init__.py) looks like one when the repository root is on sys.path (python -m pytest).
        found = spec is not None and spec.origin not in (None, "namespace")
        if not found:
            missing.append(name)
    return missing


MISSING = _missing_packages()
if MISSING and str(DOUBLES) not in sys.path:
    sys.path.append(str(DOUBLES))


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"]
    if MISSING:
        lines.append(
            "TEST DOUBLES in use (real packages not importable): "
            + ", ".join(MISSING)
            + f" from {DOUBLES.relative_to(REPO)}"
        )
    else:
        lines.append("real message_filters, launch and launch_ros in use (no test doubles)")
    return lines


def ros_subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a ROS subprocess: this session's domain, and the doubles if they are in use."""
    env = dict(os.environ)
    if MISSING:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(DOUBLES)) if p)
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def stage1_weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Stage I weights for node processes: '' = the shipped file (what a robot runs).

    A checkout without the shipped weights (e.g. while they are being retrained) gets an untrained
    checkpoint of the same format, so the node tests still exercise the ROS side.
    """
    from sgdfuse_ros.models.stage1 import build_stage1, default_stage1_weights_path, stage1_checkpoint

    if default_stage1_weights_path().is_file():
        return ""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "stage1_untrained.pt"
    torch.save(stage1_checkpoint(build_stage1()), path)
    return str(path)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    The dev machine is 2 shared cores: intra-op threading only adds contention for small image ops.
    """
    import torch  # here, not at the top: the ROS tests do not need torch to start

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"sgdfuse_benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
