"""Publish a rosbag2 bag's messages over rclpy with the recorded timing, for machines without ``ros2 bag play``.

    sgdfuse bag play samples/bags/sample_pairs_10hz --rate 0.5 --clock --wait-for-subscribers 10

Each message's CDR bytes from the bag are deserialised into the rclpy message class with
``rclpy.serialization.deserialize_message`` (exact, field for field, whatever the storage) and
published on the recorded topic (or its remapped name) when its log time comes: the first played
message goes out at once, message k at ``(log_k - log_first) / rate`` seconds later. With a clock
rate ``clock_hz`` > 0, /clock (rosgraph_msgs/Clock) carries the bag's time as ``ros2 bag play
--clock`` does, so a node started with ``use_sim_time:=true`` runs on bag time. ``loop`` replays
from the start (the clock and the header stamps then go back in time, as with ``ros2 bag play
--loop``). message_filters' synchroniser alone would pair nothing after the first loop (its queues stay
full of later stamps; test/test_sync_time_jump.py); the node detects the backwards jump and resets its
pairing (docs/node.md "Time jumps"). Reading uses sgdfuse_ros.bags.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message

from sgdfuse_ros import bags

__all__ = ["BagPlayer", "PlayOptions", "message_class", "parse_remaps"]


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class; ImportError names the type when not installed."""
    package, _, name = msgtype.partition("/msg/")
    if not package or not name:
        raise ImportError(f"not a message type name: '{msgtype}'")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"message type {msgtype} is not installed ({error})") from None


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """["/from:=/to", ...] -> {"/from": "/to"} (ros2 bag play's --remap syntax)."""
    remaps = {}
    for item in items:
        source, sep, target = item.partition(":=")
        if not sep or not source or not target:
            raise ValueError(f"remap must look like /from:=/to, got '{item}'")
        remaps[source] = target
    return remaps


@dataclass
class PlayOptions:
    """How to play (see ``sgdfuse bag play --help``)."""

    rate: float = 1.0  #: playback speed factor (0.5 = half speed)
    loop: bool = False  #: start again at the end, until interrupted
    start_offset: float = 0.0  #: skip the first seconds of the bag
    topics: Sequence[str] = ()  #: topics to play; empty = every topic whose message type is installed
    remap: Mapping[str, str] = field(default_factory=dict)  #: bag topic -> published topic
    clock_hz: float = 0.0  #: publish /clock at this rate (0 = no /clock)
    qos: str = "reliable"  #: "reliable" (depth 10) or "sensor_data" (best effort, depth 5)
    wait_for_subscribers: float = 0.0  #: wait up to this long for every topic to have a subscriber
    settle: float = 0.0  #: after the subscribers appeared, wait this long more (two-sided discovery)
    ack_timeout: float = 10.0  #: reliable QoS: at the end, wait up to this long for subscribers to acknowledge

    def check(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.start_offset < 0:
            raise ValueError(f"start offset must be >= 0 s, got {self.start_offset}")
        if self.clock_hz < 0:
            raise ValueError(f"clock rate must be >= 0 Hz, got {self.clock_hz}")
        if self.qos not in ("reliable", "sensor_data"):
            raise ValueError(f"qos must be reliable or sensor_data, got '{self.qos}'")


class BagPlayer:
    """Plays one bag on ``node``'s publishers (see the module docstring for the timing rule)."""

    def __init__(self, node: Node, bag_path: str | Path, options: PlayOptions | None = None) -> None:
        self.node = node
        self.path = Path(bag_path)
        self.options = options or PlayOptions()
        self.options.check()
        self.published: dict[str, int] = {}
        self.loops = 0
        self._stopped = False
        with bags.open_bag(self.path) as bag:
            available = bag.topics
            self.start_time = int(bag.reader.start_time)
        wanted = list(self.options.topics) or sorted(available)
        missing = [t for t in wanted if t not in available]
        if missing:
            listing = ", ".join(f"{t} [{m}]" for t, m in sorted(available.items())) or "none"
            raise bags.BagError(f"{self.path}: topic(s) {', '.join(missing)} not in the bag (topics: {listing})")
        self.types: dict[str, type] = {}
        for topic in wanted:
            try:
                self.types[topic] = message_class(available[topic])
            except ImportError as error:
                if self.options.topics:  # asked for explicitly: an error
                    raise bags.BagError(f"{self.path}: cannot play '{topic}': {error}") from None
                node.get_logger().warning(f"skipping '{topic}': {error}")
        if not self.types:
            raise bags.BagError(f"{self.path}: no topic to play")
        qos = (
            qos_profile_sensor_data
            if self.options.qos == "sensor_data"
            else QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        )
        self.publishers = {
            topic: node.create_publisher(cls, self.options.remap.get(topic, topic), qos)
            for topic, cls in self.types.items()
        }
        self.clock_publisher = None
        if self.options.clock_hz > 0:
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            # Reliable depth 1: matches both rclpy's best-effort /clock subscription and reliable ones.
            self.clock_publisher = node.create_publisher(
                Clock, "/clock", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
            )

    def stop(self) -> None:
        """Make :meth:`play` return after the message in flight (thread-safe)."""
        self._stopped = True

    def wait_for_subscribers(self, timeout: float, settle: float = 0.0) -> bool:
        """Wait until every played topic has a subscriber (True), or ``timeout`` seconds (False).

        Discovery is two-sided: the publisher counts a subscriber before that subscriber has matched the
        publisher, and a sample sent in between can be lost even on reliable QoS (seen here under load).
        So after every topic has a subscriber, wait ``settle`` more seconds before the first message.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopped:
            if all(p.get_subscription_count() > 0 for p in self.publishers.values()):
                time.sleep(settle)
                return True
            time.sleep(0.05)
        return all(p.get_subscription_count() > 0 for p in self.publishers.values())

    def play(self, on_message: Callable[[str, int], None] | None = None) -> dict:
        """Publish the bag (looping if asked) until its end or :meth:`stop`; returns counts per topic.

        ``on_message(topic, log_time)`` is called after each publish (progress, tests).
        """
        options, log = self.options, self.node.get_logger()
        if options.wait_for_subscribers > 0 and not self.wait_for_subscribers(
            options.wait_for_subscribers, options.settle
        ):
            lonely = [
                self.options.remap.get(t, t) for t, p in self.publishers.items() if p.get_subscription_count() == 0
            ]
            log.warning(
                f"no subscriber after {options.wait_for_subscribers:g} s on: {', '.join(lonely)}; playing anyway"
            )
        first_offset = self.start_time + int(options.start_offset * 1e9)
        while not self._stopped:
            self._play_once(first_offset, on_message)
            self.loops += 1
            if not options.loop:
                break
        if options.qos == "reliable":
            # Before the caller destroys the publishers: a reliable sample still unacknowledged (a busy
            # subscriber) is lost with its writer, typically the last message of the bag.
            for publisher in self.publishers.values():
                if not publisher.wait_for_all_acked(Duration(seconds=options.ack_timeout)):
                    log.warning(f"{publisher.topic_name}: not every message was acknowledged by the subscribers")
        return {"published": dict(self.published), "loops": self.loops}

    def _play_once(self, first_offset: int, on_message: Callable[[str, int], None] | None) -> None:
        rate = self.options.rate
        clock_period = 1.0 / self.options.clock_hz if self.options.clock_hz > 0 else None
        wall0: float | None = None
        bag_t0 = 0
        with bags.open_bag(self.path) as bag:
            for message in bags.iter_raw(bag, list(self.types)):
                if self._stopped:
                    return
                if message.log_time < first_offset:
                    continue
                if wall0 is None:
                    wall0, bag_t0 = time.monotonic(), message.log_time
                due = wall0 + (message.log_time - bag_t0) / 1e9 / rate
                while True:
                    now = time.monotonic()
                    if now >= due or self._stopped:
                        break
                    if clock_period is not None:
                        self._publish_clock(bag_t0 + int((now - wall0) * rate * 1e9))
                        time.sleep(min(clock_period, due - now))
                    else:
                        time.sleep(due - now)
                try:
                    msg = deserialize_message(message.raw, self.types[message.topic])
                except Exception as error:  # noqa: BLE001 - rclpy raises assorted errors for bad CDR
                    raise bags.BagError(
                        f"{self.path}: message on '{message.topic}' at log time {message.log_time} does not "
                        f"deserialise as {message.msgtype}: {error}"
                    ) from error
                if clock_period is not None:
                    self._publish_clock(message.log_time)
                self.publishers[message.topic].publish(msg)
                self.published[message.topic] = self.published.get(message.topic, 0) + 1
                if on_message is not None:
                    on_message(message.topic, message.log_time)

    def _publish_clock(self, nanoseconds: int) -> None:
        from builtin_interfaces.msg import Time

        msg = self._clock_cls(clock=Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000))
        self.clock_publisher.publish(msg)


def run(
    path: str | Path, options: PlayOptions, ros_args: Sequence[str] = (), node_name: str = "sgdfuse_bag_player"
) -> dict:
    """rclpy.init, play ``path`` once (or looping until Ctrl-C), shut down; returns the counts."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["sgdfuse_bag_player", "--ros-args", *ros_args] if ros_args else ["sgdfuse_bag_player"])
    try:
        node = rclpy.create_node(node_name)
        player = None
        try:
            player = BagPlayer(node, path, options)
            return player.play()
        except (KeyboardInterrupt, ExternalShutdownException):
            return {
                "published": dict(player.published) if player else {},
                "loops": player.loops if player else 0,
                "interrupted": True,
            }
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
