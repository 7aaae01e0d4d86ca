"""Shutdown under a supervisor: how often the fusion node exits cleanly (status 0, no traceback) per signal pattern.

    python benchmarks/shutdown.py [--runs 20] [--variants launch_sigint sigterm lifecycle_shutdown]

Each run starts ``scripts/fusion_node`` in its own process group (as ``ros2 launch`` starts it) with
``scripts/pair_publisher`` feeding it 320x240 pairs at 10 Hz (so the worker is busy, which is when an
interrupted join used to leave a traceback), waits for the first fused frame, then ends it one way:

* ``launch_sigint``: SIGINT to the whole process group (what a terminal's Ctrl-C does to ``ros2 launch`` and
  its children), then 0.1 s later launch's own SIGINT to the node;
* ``sigterm``: SIGTERM to the node (launch's escalation, systemd, docker stop);
* ``lifecycle_shutdown``: the lifecycle ``shutdown`` transition (``ros2 lifecycle set /<node> shutdown``).

A run is clean when the node exits with status 0 within 30 s and prints no "Traceback" and no
"terminate called". Prints one JSON line per run and a summary line with the clean count per variant.
test/test_shutdown.py runs 3 of each through :func:`run_variant`. Where message_filters is not installed
(it is not on PyPI), the labelled test double under test/doubles/ is used.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("launch_sigint", "sigterm", "lifecycle_shutdown")


def node_environment() -> dict[str, str]:
    """The caller's environment, on a private localhost ROS domain, with the message_filters double if needed."""
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(100, 200)))
    if importlib.util.find_spec("message_filters") is None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(ROOT / "test" / "doubles")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    return env


def _wait_for(path: Path, needle: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _lifecycle_shutdown(namespace: str, env: dict[str, str]) -> None:
    """Call <namespace>/sgdfuse/change_state with the shutdown transition from a separate process."""
    code = (
        "import rclpy, sys\n"
        "from lifecycle_msgs.msg import Transition\n"
        "from lifecycle_msgs.srv import ChangeState\n"
        "rclpy.init()\n"
        "node = rclpy.create_node('shutdown_caller')\n"
        f"client = node.create_client(ChangeState, '{namespace}/sgdfuse/change_state')\n"
        "assert client.wait_for_service(timeout_sec=20)\n"
        "request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVE_SHUTDOWN))\n"
        "future = client.call_async(request)\n"
        "rclpy.spin_until_future_complete(node, future, timeout_sec=20)\n"
        "sys.exit(0 if future.done() and future.result().success else 1)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False, capture_output=True)


def run_variant(variant: str, index: int, workdir: Path, stage1_weights: str = "") -> dict:
    """One start -> first fused frame -> stop; returns {variant, run, returncode, clean, reason}."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    env = node_environment()
    namespace = f"/shutdown_{variant}_{index}_{os.getpid()}"
    log = workdir / f"{variant}_{index}.log"
    weights = ["-p", f"stage1.weights:={stage1_weights}"] if stage1_weights else []
    node_command = [
        sys.executable, str(ROOT / "scripts" / "fusion_node"), "--ros-args", "-r", f"__ns:={namespace}",
        "-p", "compute.torch_threads:=1", "-p", "node.input_qos:=reliable", *weights,
    ]  # fmt: skip
    publisher_command = [
        sys.executable, str(ROOT / "scripts" / "pair_publisher"), "--loop", "--rate", "10", "--qos", "reliable",
        "--size", "320x240", "--ros-args", "-r", f"__ns:={namespace}",
    ]  # fmt: skip
    with log.open("w") as out:
        node = subprocess.Popen(node_command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    publisher = subprocess.Popen(
        publisher_command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    result = {"variant": variant, "run": index, "returncode": None, "clean": False, "reason": ""}
    try:
        if not _wait_for(log, "first fused frame", node, timeout=120):
            result["reason"] = "no fused frame before the stop"
            return result
        time.sleep(0.5)  # frames in flight
        if variant == "launch_sigint":
            os.killpg(node.pid, signal.SIGINT)
            time.sleep(0.1)
            if node.poll() is None:
                node.send_signal(signal.SIGINT)
        elif variant == "sigterm":
            node.send_signal(signal.SIGTERM)
        else:
            _lifecycle_shutdown(namespace, env)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            result["reason"] = "still running 30 s after the stop"
            return result
        output = log.read_text(errors="replace")
        result["returncode"] = node.returncode
        problems = [needle for needle in ("Traceback", "terminate called") if needle in output]
        result["clean"] = node.returncode == 0 and not problems
        result["reason"] = "" if result["clean"] else f"exit {node.returncode}; {', '.join(problems)}"
        return result
    finally:
        for process in (node, publisher):
            if process.poll() is None:
                process.kill()
                process.wait()
        if not result["clean"]:
            result["log"] = log.read_text(errors="replace")[-4000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--workdir", type=Path, default=ROOT / "out" / "shutdown")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    clean = {variant: 0 for variant in args.variants}
    for variant in args.variants:
        for index in range(args.runs):
            result = run_variant(variant, index, args.workdir)
            clean[variant] += result["clean"]
            print(json.dumps({k: v for k, v in result.items() if k != "log"}), flush=True)
    print(json.dumps({"runs_per_variant": args.runs, "clean_exits": clean}), flush=True)
    return 0 if all(n == args.runs for n in clean.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
