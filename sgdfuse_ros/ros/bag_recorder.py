"""Record topics (by default the fusion node's outputs) into a rosbag2 bag with rclpy + rosbags.

    sgdfuse bag record --out out/live_bag --count 20 --idle-timeout 5

Subscriptions are raw (``create_subscription(..., raw=True)``): rclpy hands over the serialized
CDR bytes, which go into a rosbags Writer unchanged, so the recorded messages are exactly what was
published (the equivalent of ``ros2 bag record`` for machines without rosbag2). The log time of
each message is the recorder node's clock at reception (wall time, or bag time with
``use_sim_time``). The bag is built in a temporary folder next to ``--out`` and moved into place
when recording ends normally (count reached, duration or idle timeout, Ctrl-C); on an error it is
deleted and the error says so.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from sgdfuse_ros import bags
from sgdfuse_ros.ros.bag_player import message_class

__all__ = ["BagRecorder", "default_topics", "parse_topics", "record"]


def default_topics(namespace: str = "") -> dict[str, str]:
    """The node's outputs under ``namespace``: fused/image, fused/mask/ir, fused/mask/vis, fused/stats."""
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    types = {"fused": bags.IMAGE, "mask_ir": bags.IMAGE, "mask_vis": bags.IMAGE, "stats": bags.FUSION_STATS}
    return {prefix + topic: types[key] for key, topic in bags.OUTPUT_TOPICS.items()}


def parse_topics(items: Sequence[str]) -> dict[str, str]:
    """["/topic:pkg/msg/Type", ...] -> {"/topic": "pkg/msg/Type"}."""
    topics = {}
    for item in items:
        topic, sep, msgtype = item.partition(":")
        if not sep or not topic or "/msg/" not in msgtype:
            raise ValueError(f"topic must look like /name:package/msg/Type, got '{item}'")
        topics[topic] = msgtype
    return topics


class BagRecorder:
    """Raw subscriptions on ``node`` writing to a bag at ``out`` (staged; :meth:`finish` or :meth:`abort`)."""

    def __init__(
        self,
        node: Node,
        out: str | Path,
        topics: Mapping[str, str] | None = None,
        *,
        distro: str = "kilted",
        storage: str | None = None,
        version: int | None = None,
        qos: str = "reliable",
        overwrite: bool = False,
    ) -> None:
        self.node = node
        self.topics = dict(topics or default_topics())
        if qos not in ("reliable", "best_effort"):
            raise ValueError(f"qos must be reliable or best_effort, got '{qos}'")
        classes = {}
        for topic, msgtype in self.topics.items():
            try:
                classes[topic] = message_class(msgtype)
            except ImportError as error:
                raise bags.BagError(f"cannot record '{topic}': {error}") from None
        storage, version = bags.resolve_format(distro, storage, version)
        self.staging = bags.Staging(out, overwrite=overwrite)
        self.counts = {topic: 0 for topic in self.topics}
        self.last_time: dict[str, float] = {}  #: topic -> time.monotonic() of its last message
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.writer = bags.BagWriter(self.staging.path, storage, version, distro)
            for topic, msgtype in self.topics.items():
                self.writer.add(topic, msgtype)
        except Exception:
            self.staging.discard()
            raise
        # Reliable matches the node's default output QoS (node.output_qos); best_effort also matches
        # best-effort publishers, at the price of possible losses under load.
        reliability = ReliabilityPolicy.RELIABLE if qos == "reliable" else ReliabilityPolicy.BEST_EFFORT
        profile = QoSProfile(depth=100, reliability=reliability)
        self.subscriptions = [
            node.create_subscription(classes[topic], topic, self._callback(topic), profile, raw=True)
            for topic in self.topics
        ]

    def _callback(self, topic: str) -> Any:
        msgtype = self.topics[topic]

        def on_message(raw: bytes) -> None:
            log_time = self.node.get_clock().now().nanoseconds
            with self._lock:
                if self._closed:
                    return
                self.writer.write_raw(topic, msgtype, log_time, raw)
                self.counts[topic] += 1
                self.last_time[topic] = time.monotonic()

        return on_message

    def publisher_counts(self) -> dict[str, int]:
        """topic -> number of publishers matched with the recorder's subscription."""
        return {topic: sub.get_publisher_count() for topic, sub in zip(self.topics, self.subscriptions, strict=True)}

    def wait_for_publishers(self, executor: Any, timeout: float) -> bool:
        """Spin ``executor`` until every topic has a matched publisher (True) or ``timeout`` s pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n > 0 for n in self.publisher_counts().values()):
                # Matching is seen by each side on its own: give the publishers a moment to see us too.
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    executor.spin_once(timeout_sec=0.05)
                return True
            executor.spin_once(timeout_sec=0.05)
        return False

    def finish(self) -> Path:
        """Close the bag and move it to ``out``; returns the path."""
        with self._lock:
            self._closed = True
            self.writer.close()
        return self.staging.commit()

    def abort(self) -> None:
        """Stop and delete the partial bag (nothing appears at ``out``)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(Exception):  # the partial bag is deleted anyway
                    self.writer.close()
        self.staging.discard()


def record(
    out: str | Path,
    topics: Mapping[str, str] | None = None,
    *,
    duration: float = 0.0,
    count: int = 0,
    count_topic: str | None = None,
    idle_timeout: float = 0.0,
    distro: str = "kilted",
    storage: str | None = None,
    version: int | None = None,
    qos: str = "reliable",
    overwrite: bool = False,
    ros_args: Sequence[str] = (),
    node_name: str = "sgdfuse_bag_recorder",
    ready_file: str | Path | None = None,
    wait_for_publishers: float = 0.0,
) -> dict:
    """rclpy.init, record until a stop condition (or Ctrl-C), keep the bag; returns counts and the path.

    Stop conditions (any that is set): ``duration`` seconds since the start; ``count`` messages on
    ``count_topic`` (default: the fused image topic, else the first topic) followed by a 0.5 s grace
    period for the frame's other topics; ``idle_timeout`` seconds without a message on ``count_topic`` once
    one arrived there (periodic topics such as /diagnostics would otherwise keep it going).
    ``wait_for_publishers``: first wait up to this long until every topic has a matched publisher, so
    that nothing published right after start-up is missed. ``ready_file`` is created after that (for
    scripts and tests that start the publishing side only when the recorder listens).
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=["sgdfuse_bag_recorder", "--ros-args", *ros_args] if ros_args else ["sgdfuse_bag_recorder"])
    recorder = None
    try:
        node = rclpy.create_node(node_name)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            recorder = BagRecorder(
                node, out, topics, distro=distro, storage=storage, version=version, qos=qos, overwrite=overwrite
            )
            topics = recorder.topics
            if count_topic is None:
                fused = [t for t in topics if t.endswith(bags.OUTPUT_TOPICS["fused"])]
                count_topic = fused[0] if fused else next(iter(topics))
            if count_topic not in topics:
                raise ValueError(f"count topic '{count_topic}' is not recorded ({', '.join(topics)})")
            if wait_for_publishers > 0 and not recorder.wait_for_publishers(executor, wait_for_publishers):
                lonely = [t for t, n in recorder.publisher_counts().items() if n == 0]
                node.get_logger().warning(f"no publisher after {wait_for_publishers:g} s on: {', '.join(lonely)}")
            if ready_file:
                Path(ready_file).write_text("recording\n")
            node.get_logger().info(f"recording {', '.join(topics)} into {recorder.staging.dest}")
            started = time.monotonic()
            count_reached_at = None
            interrupted = False
            try:
                while rclpy.ok():
                    executor.spin_once(timeout_sec=0.05)
                    now = time.monotonic()
                    if duration > 0 and now - started >= duration:
                        break
                    if count > 0 and count_reached_at is None and recorder.counts[count_topic] >= count:
                        count_reached_at = now
                    if count_reached_at is not None and now - count_reached_at >= 0.5:
                        break
                    last = recorder.last_time.get(count_topic)
                    if idle_timeout > 0 and last is not None and now - last >= idle_timeout:
                        break
            except (KeyboardInterrupt, ExternalShutdownException):
                interrupted = True  # Ctrl-C ends a recording normally: keep what was recorded
            path = recorder.finish()
            return {"path": str(path), "counts": dict(recorder.counts), "interrupted": interrupted}
        except BaseException:
            if recorder is not None:
                recorder.abort()
                node.get_logger().error(f"recording failed: partial bag deleted, nothing written to {out}")
            raise
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
