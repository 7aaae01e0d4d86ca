"""Publish thermal + RGB image pairs from a folder, as a stand-in for two synchronised cameras.

``ros2 run sgdfuse_ros pair_publisher [--pairs DIR] [--rate HZ] [--loop | --count N]
[--thermal-encoding mono8|mono16] [--qos sensor_data|reliable] [--size WxH]``

The folder holds ``ir/`` and ``vi/`` with files of the same stem (the bundled ``samples/pairs``
by default). Each pair is published with one stamp on both topics: ``thermal/image`` (frame_id
"thermal", mono8, or mono16 with 0-255 mapped linearly onto the default thermal counts range of
the node's configuration, 27000-33000, so the default node configuration maps it back) and
``rgb/image`` (frame_id "rgb_camera", rgb8). Topic names are relative: remap them as usual.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sgdfuse_ros.config import ThermalConfig
from sgdfuse_ros.files import find_pairs
from sgdfuse_ros.resources import find_resource
from sgdfuse_ros.ros.conversion import array_to_image

__all__ = ["counts_from_mono8", "default_pairs_dir", "load_pair", "main"]

THERMAL_FRAME_ID = "thermal"
RGB_FRAME_ID = "rgb_camera"


def default_pairs_dir() -> Path:
    """The bundled sample pairs: share/sgdfuse_ros/samples/pairs when installed, else the source tree's."""
    return find_resource("samples/pairs")


def counts_from_mono8(
    image: np.ndarray, counts_min: float | None = None, counts_max: float | None = None
) -> np.ndarray:
    """8-bit thermal [H, W] -> uint16 raw counts: 0 -> counts_min, 255 -> counts_max (linear, rounded).

    Defaults are the configuration's defaults (thermal.counts_min / counts_max), which the node maps
    back to [0, 1] with its default 'fixed' scaling.
    """
    low = ThermalConfig().counts_min if counts_min is None else counts_min
    high = ThermalConfig().counts_max if counts_max is None else counts_max
    counts = low + image.astype(np.float64) / 255.0 * (high - low)
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def load_pair(
    ir_path: Path, vi_path: Path, thermal_encoding: str = "mono8", size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair -> (thermal [H, W] uint8 or uint16 per ``thermal_encoding``, RGB [H, W, 3] uint8).

    ``size`` = (width, height) resizes both images (INTER_AREA).
    """
    thermal = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imread(str(vi_path), cv2.IMREAD_COLOR)
    if thermal is None or bgr is None:
        raise FileNotFoundError(f"cannot read {ir_path if thermal is None else vi_path}")
    if size is not None:
        thermal = cv2.resize(thermal, size, interpolation=cv2.INTER_AREA)
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if thermal_encoding == "mono16":
        thermal = counts_from_mono8(thermal)
    return thermal, rgb


class PairPublisher(Node):
    """Publishes the pairs at ``rate`` Hz on thermal/image and rgb/image (same stamp per pair)."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], args: argparse.Namespace) -> None:
        super().__init__("pair_publisher")
        qos = (
            qos_profile_sensor_data
            if args.qos == "sensor_data"
            else QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        )
        self._thermal_pub = self.create_publisher(Image, "thermal/image", qos)
        self._rgb_pub = self.create_publisher(Image, "rgb/image", qos)
        self._pairs = pairs
        self._encoding = args.thermal_encoding
        self._total = None if args.loop else (args.count if args.count > 0 else len(pairs))
        self._sent = 0
        self._wait_until = time.monotonic() + args.wait
        self._timer = self.create_timer(1.0 / args.rate, self._tick)

    @property
    def done(self) -> bool:
        return self._total is not None and self._sent >= self._total

    def _tick(self) -> None:
        if self.done:
            return
        if time.monotonic() < self._wait_until and (
            self._thermal_pub.get_subscription_count() == 0 or self._rgb_pub.get_subscription_count() == 0
        ):
            return  # give subscribers a moment to be discovered, so --count N delivers N pairs
        thermal, rgb = self._pairs[self._sent % len(self._pairs)]
        stamp = self.get_clock().now().to_msg()
        self._thermal_pub.publish(
            array_to_image(thermal, self._encoding, Header(stamp=stamp, frame_id=THERMAL_FRAME_ID))
        )
        self._rgb_pub.publish(array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id=RGB_FRAME_ID)))
        self._sent += 1
        if self._sent == 1 or self.done:
            self.get_logger().info(f"published {self._sent} pair(s)")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got '{text}'") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError("width and height must be at least 16")
    return width, height


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pair_publisher", description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=None, help="folder with ir/ and vi/ (default: bundled samples)")
    parser.add_argument("--rate", type=float, default=2.0, help="pairs per second (default 2)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--loop", action="store_true", help="repeat the pairs until stopped")
    group.add_argument("--count", type=int, default=0, help="publish this many pairs (cycling); 0 = each pair once")
    parser.add_argument("--thermal-encoding", choices=("mono8", "mono16"), default="mono8")
    parser.add_argument("--qos", choices=("sensor_data", "reliable"), default="sensor_data")
    parser.add_argument("--size", type=_size, default=None, help="resize both images to WIDTHxHEIGHT")
    parser.add_argument(
        "--wait", type=float, default=5.0, help="seconds to wait for subscribers before the first pair (default 5)"
    )
    args = parser.parse_args(list(argv))
    if args.rate <= 0:
        parser.error("--rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of scripts/pair_publisher."""
    argv = sys.argv if argv is None else list(argv)
    args = parse_args(remove_ros_args(args=argv)[1:])
    try:
        folder = args.pairs if args.pairs is not None else default_pairs_dir()
        found = find_pairs(folder)
        if not found:
            raise FileNotFoundError(f"no pairs with matching names in {folder / 'ir'} and {folder / 'vi'}")
        pairs = [load_pair(ir, vi, args.thermal_encoding, args.size) for _, ir, vi in found]
    except FileNotFoundError as error:
        print(f"pair_publisher: {error}", file=sys.stderr)
        sys.exit(1)
    rclpy.init(args=argv)
    node = PairPublisher(pairs, args)
    node.get_logger().info(f"{len(pairs)} pair(s) from {folder} at {args.rate} Hz ({args.thermal_encoding})")
    try:
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        # Let the last messages leave before the publishers are destroyed.
        end = time.monotonic() + 0.5
        while rclpy.ok() and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
