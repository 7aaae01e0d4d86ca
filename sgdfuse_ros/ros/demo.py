"""Live demo: the fusion node on real rclpy, fed with the bundled real pairs; fused frames written to disk.

    ros2 run sgdfuse_ros demo [--out out/demo] [--pairs samples/pairs] [--thermal-encoding mono16]

Starts the node (``python -m sgdfuse_ros.ros.node`` with config/fuse.yaml) as its own process, then
publishes each pair on ``thermal/image`` (mono16 radiometric counts by default) and ``rgb/image``
(reliable QoS on both ends) with one stamp, waits for ``fused/image``, both masks and
``fused/stats`` carrying that stamp, and writes ``<out>/<pair>_fused.png``, ``_mask_ir.png`` and
``_mask_vis.png``. One pair at a time, so every pair is fused (the node drops superseded pairs by
design when frames arrive faster than it fuses). Discovery stays on this machine and on a private
domain unless ROS_DOMAIN_ID is set.

message_filters is part of every ROS 2 install but not installable from PyPI. When it cannot be
imported (a machine with only the PyPI wheels), the node process is given the test double from the
source tree's test/doubles/ and the demo says so loudly; on a robot the real package is used.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sgdfuse_ros.config import default_config_path
from sgdfuse_ros.files import find_pairs
from sgdfuse_ros.msg import FusionStats
from sgdfuse_ros.ros.conversion import array_to_image, image_to_array
from sgdfuse_ros.ros.pair_publisher import RGB_FRAME_ID, THERMAL_FRAME_ID, default_pairs_dir, load_pair

OUTPUT_TOPICS = {"fused": "fused/image", "mask_ir": "fused/mask/ir", "mask_vis": "fused/mask/vis"}


def node_environment() -> dict[str, str]:
    """Environment of the node process: local discovery, and the message_filters test double if needed."""
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if env.get("ROS_DISTRO") == "humble":  # Humble predates ROS_AUTOMATIC_DISCOVERY_RANGE
        env.setdefault("ROS_LOCALHOST_ONLY", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if importlib.util.find_spec("message_filters") is None:
        # The source checkout's test/doubles: beside this module in a symlinked install, else the cwd.
        candidates = [Path(__file__).resolve().parents[2] / "test" / "doubles", Path.cwd() / "test" / "doubles"]
        doubles = next((c for c in candidates if (c / "message_filters").is_dir()), None)
        if doubles is None:
            raise SystemExit(
                "message_filters is not installed (install ros-$ROS_DISTRO-message-filters), and no test double "
                f"was found in {', '.join(str(c) for c in candidates)}: run the demo from the source checkout"
            )
        print(
            "NOTE: message_filters is not installed on this machine (it is not on PyPI); the node runs with the "
            f"TEST DOUBLE from {doubles}. A ROS install provides the real package.",
            flush=True,
        )
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH", ""), str(doubles)) if p)
    return env


class DemoClient(Node):
    """Publishes one pair, collects the node's outputs for its stamp."""

    def __init__(self) -> None:
        super().__init__("sgdfuse_demo")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.thermal_pub = self.create_publisher(Image, "thermal/image", reliable)
        self.rgb_pub = self.create_publisher(Image, "rgb/image", reliable)
        self.received: dict[tuple[int, int], dict[str, object]] = {}
        for key, topic in OUTPUT_TOPICS.items():
            self.create_subscription(Image, topic, self._collector(key), reliable)
        self.create_subscription(FusionStats, "fused/stats", self._collector("stats"), reliable)

    def _collector(self, key: str):
        def store(msg: object) -> None:
            stamp = msg.header.stamp  # type: ignore[attr-defined]
            self.received.setdefault((stamp.sec, stamp.nanosec), {})[key] = msg

        return store

    def node_ready(self) -> bool:
        return self.thermal_pub.get_subscription_count() > 0 and self.rgb_pub.get_subscription_count() > 0

    def publish_pair(self, thermal, rgb, thermal_encoding: str) -> tuple[int, int]:
        stamp = self.get_clock().now().to_msg()
        self.thermal_pub.publish(
            array_to_image(thermal, thermal_encoding, Header(stamp=stamp, frame_id=THERMAL_FRAME_ID))
        )
        self.rgb_pub.publish(array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id=RGB_FRAME_ID)))
        return stamp.sec, stamp.nanosec


def spin_until(node: Node, condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
        if condition():
            return True
    return False


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(100, 200)))
    pairs_dir = Path(args.pairs) if args.pairs else default_pairs_dir()
    pairs = find_pairs(pairs_dir)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = args.config or str(default_config_path())
    # Reliable input QoS: best-effort samples of several hundred kB are fragmented over UDP and a single
    # lost fragment loses the frame (see docs/node.md); camera drivers on a robot usually use sensor-data QoS.
    command = [
        sys.executable,
        "-m",
        "sgdfuse_ros.ros.node",
        "--ros-args",
        "--params-file",
        config,
        "-p",
        "node.input_qos:=reliable",
    ]
    print(f"starting the fusion node (ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}): {' '.join(command)}", flush=True)
    # cwd = the output folder: a source checkout as cwd would shadow the installed package (and its msg/).
    node_process = subprocess.Popen(command, env=node_environment(), cwd=out)
    rclpy.init()
    client = DemoClient()
    fused_count = 0
    try:
        if not spin_until(client, lambda: client.node_ready() or node_process.poll() is not None, args.timeout):
            print("the node did not subscribe in time", file=sys.stderr)
            return 1
        if node_process.poll() is not None:
            print(f"the node exited with status {node_process.returncode}", file=sys.stderr)
            return 1
        print(f"fusing {len(pairs)} bundled pair(s) from {pairs_dir} ...", flush=True)
        for stem, ir_path, vi_path in pairs:
            thermal, rgb = load_pair(ir_path, vi_path, args.thermal_encoding)
            key = client.publish_pair(thermal, rgb, args.thermal_encoding)
            if not spin_until(client, lambda k=key: len(client.received.get(k, {})) == 4, args.timeout):
                print(f"{stem}: no fused output received within {args.timeout:.0f} s", file=sys.stderr)
                continue
            outputs = client.received.pop(key)
            for name in OUTPUT_TOPICS:
                image = image_to_array(outputs[name])  # type: ignore[arg-type]
                if image.ndim == 3:
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(out / f"{stem}_{name}.png"), image)
            stats: FusionStats = outputs["stats"]  # type: ignore[assignment]
            stages = ", ".join(f"{t.stage} {t.milliseconds:.0f} ms" for t in stats.timings)
            print(f"  {stem}: {rgb.shape[1]}x{rgb.shape[0]}  prior={stats.prior} device={stats.device}  {stages}")
            fused_count += 1
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node_process.send_signal(signal.SIGINT)
        try:
            node_process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node_process.kill()
    print(f"fused {fused_count}/{len(pairs)} pairs live over ROS 2; frames written to {out}")
    return 0 if fused_count == len(pairs) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="folder for the fused frames and masks")
    parser.add_argument("--pairs", help="folder with ir/ and vi/ (default: the bundled samples)")
    parser.add_argument("--config", help="parameter file for the node (default: config/fuse.yaml)")
    parser.add_argument("--thermal-encoding", choices=("mono8", "mono16"), default="mono16")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for discovery / each frame")
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
