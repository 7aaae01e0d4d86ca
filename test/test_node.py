"""The fusion node, live on real rclpy (Fast DDS), fed with the bundled real pairs.

Two set-ups:

* In-process (module fixture ``live``): FusionNode (real FusionPipeline.from_config, fallback prior,
  shipped Stage I weights) in namespace /live and a probe node, both spun by a MultiThreadedExecutor
  in a background thread. The probe publishes thermal/RGB pairs with chosen stamps and records
  every output, /diagnostics and the node's /rosout log lines. Scenarios wait for a pair's outcome
  (its fused image, or its drop log line / counter) before sending the next, so nothing is
  superseded unless a test wants it.
* Subprocesses of scripts/fusion_node (start-up errors, exit codes; and one end-to-end run with
  scripts/pair_publisher, config/fuse.yaml, default sensor-data QoS and compute.device=cuda).

Images are 160x120 crops of the RoadScene pairs except one 640x480 MSRS pair.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
torch = pytest.importorskip("torch")

from builtin_interfaces.msg import Time  # noqa: E402
from conftest import ros_subprocess_env, wait_for  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from sgdfuse_ros.msg import FusionStats  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sgdfuse_ros.config import FuseConfig, parameter_specs  # noqa: E402
from sgdfuse_ros.pipeline import FusionPipeline  # noqa: E402
from sgdfuse_ros.ros.conversion import array_to_image, image_to_array  # noqa: E402
from sgdfuse_ros.ros.node import FusionNode, PairAccounting  # noqa: E402
from sgdfuse_ros.ros.pair_publisher import counts_from_mono8, load_pair  # noqa: E402

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parent.parent
PAIRS = REPO / "samples" / "pairs"
NODE_NAME = "sgdfuse_test"
NAMESPACE = "/live"
WAIT = 30.0  # seconds; generous: discovery and a loaded 2-core machine


def _wait_for(predicate, timeout: float = WAIT, what: str = "condition"):
    return wait_for(predicate, timeout, what)


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# --------------------------------------------------------------------------------------------------
# Accounting rule (no ROS needed)
# --------------------------------------------------------------------------------------------------


def test_unpaired_rule_of_pair_accounting() -> None:
    s = 1_000_000_000
    acc = PairAccounting(slop_s=0.05, queue_size=3)
    acc.on_message(0, 10 * s)  # thermal, never gets a partner
    acc.on_message(1, 10 * s + 40_000_000)  # rgb 40 ms later: still within the slop of the thermal
    assert acc.unpaired == [0, 0]
    acc.on_pair(10 * s, 10 * s + 40_000_000)
    acc.on_message(0, 11 * s)  # thermal without partner
    acc.on_message(1, 11 * s + 50_000_000)  # exactly slop later: not yet past stamp + slop
    assert acc.unpaired == [0, 0]
    acc.on_message(1, 12 * s)  # rgb past 11 s + slop: the 11 s thermal can no longer pair
    assert acc.unpaired == [1, 0]
    acc.on_message(0, 13 * s)  # thermal past both pending rgb stamps
    assert acc.unpaired == [1, 2]
    for k in range(4):  # four more thermal with no rgb: the synchronizer (queue 3) evicts the oldest
        acc.on_message(0, (14 + k) * s)
    assert acc.unpaired == [3, 2]  # 13 s and 14 s evicted; 15, 16, 17 s pending
    acc.on_message(0, 17 * s)  # same stamp again replaces the pending one in the synchronizer queue
    assert acc.unpaired == [4, 2]
    snap = acc.snapshot()
    assert (snap["received_thermal"], snap["received_rgb"], snap["paired"]) == (8, 3, 1)


# --------------------------------------------------------------------------------------------------
# In-process live fixture
# --------------------------------------------------------------------------------------------------


class Probe(Node):
    """Publishes inputs to the node under test and records everything it publishes."""

    def __init__(self, context, namespace: str, node_name: str) -> None:
        super().__init__("probe", namespace=namespace, context=context)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node_name = node_name
        self.lock = threading.Lock()
        self.thermal_pub = self.create_publisher(Image, "thermal/image", reliable)
        self.rgb_pub = self.create_publisher(Image, "rgb/image", reliable)
        self.outputs: dict[str, dict[int, object]] = {"image": {}, "mask/ir": {}, "mask/vis": {}, "preliminary": {}}
        for topic in self.outputs:
            self.create_subscription(Image, f"fused/{topic}", self._recorder(topic), reliable)
        self.stats: dict[int, FusionStats] = {}
        self.create_subscription(FusionStats, "fused/stats", self._on_stats, reliable)
        self.diagnostics: list[DiagnosticStatus] = []
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        self.logs: list[Log] = []
        self.create_subscription(Log, "/rosout", self._on_log, QoSProfile(depth=1000))

    def _recorder(self, topic: str):
        def record(msg: Image) -> None:
            with self.lock:
                self.outputs[topic][_ns(msg.header.stamp)] = msg

        return record

    def _on_stats(self, msg: FusionStats) -> None:
        with self.lock:
            self.stats[_ns(msg.header.stamp)] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diagnostics += [s for s in msg.status if s.name == f"{self.node_name}: fusion"]

    def _on_log(self, msg: Log) -> None:
        if msg.name.split(".")[-1] == self.node_name:
            with self.lock:
                self.logs.append(msg)

    def log_lines(self, needle: str) -> list[str]:
        with self.lock:
            return [log.msg for log in self.logs if needle in log.msg]


class Live:
    """The running node, probe and helpers shared by the in-process tests."""

    def __init__(self, node: FusionNode, probe: Probe, reference: FusionPipeline, base: dict) -> None:
        self.node, self.probe, self.reference, self.images = node, probe, reference, base
        self._next = 1_700_000_000

    def stamp(self) -> Time:
        """A fresh stamp, 1 s after the previous one (far outside the slop of any other pair)."""
        self._next += 1
        return Time(sec=self._next, nanosec=250_000_000)

    def send(self, thermal: Image | None, rgb: Image | None) -> None:
        if thermal is not None:
            self.probe.thermal_pub.publish(thermal)
        if rgb is not None:
            self.probe.rgb_pub.publish(rgb)

    def pair(self, stamp: Time, thermal=None, thermal_encoding="mono16", rgb=None) -> tuple[Image, Image]:
        thermal = self.images["thermal16"] if thermal is None else thermal
        rgb = self.images["rgb"] if rgb is None else rgb
        t = array_to_image(thermal, thermal_encoding, Header(stamp=stamp, frame_id="thermal"))
        r = array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id="rgb_camera"))
        return t, r

    def fused(self, stamp: Time, timeout: float = WAIT) -> tuple[Image, FusionStats]:
        key = _ns(stamp)
        _wait_for(
            lambda: key in self.probe.outputs["image"] and key in self.probe.stats,
            timeout,
            f"fused/image and fused/stats of stamp {stamp.sec}",
        )
        return self.probe.outputs["image"][key], self.probe.stats[key]

    def fuse_good_pair(self) -> tuple[Image, FusionStats]:
        stamp = self.stamp()
        self.send(*self.pair(stamp))
        return self.fused(stamp)

    def dropped(self, reason: str) -> int:
        return self.node.counters()["dropped_by_reason"].get(reason, 0)


def _load_images() -> dict[str, np.ndarray]:
    thermal8, rgb = load_pair(PAIRS / "ir" / "FLIR_06570.jpg", PAIRS / "vi" / "FLIR_06570.jpg", "mono8", (160, 120))
    return {"thermal8": thermal8, "thermal16": counts_from_mono8(thermal8), "rgb": rgb}


@pytest.fixture(scope="module")
def live(stage1_weights):
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = {
        "stage1.weights": stage1_weights,
        "compute.torch_threads": 1,
        "node.input_qos": "reliable",
        "node.diagnostics_period": 0.5,
        "node.publish_preliminary": True,
    }
    # Standard QoS override parameter of one input topic (must reach only that subscription).
    qos_override = {f"qos_overrides.{NAMESPACE}/thermal/image.subscription.depth": 20}
    node = FusionNode(
        NODE_NAME,
        namespace=NAMESPACE,
        context=context,
        parameter_overrides=[Parameter(k, value=v) for k, v in {**overrides, **qos_override}.items()],
    )
    probe = Probe(context, NAMESPACE, NODE_NAME)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    executor.add_node(node)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    reference = FusionPipeline.from_config(FuseConfig().updated(overrides))
    live = Live(node, probe, reference, _load_images())
    live.context, live.executor, live.overrides = context, executor, overrides
    try:
        _wait_for(
            lambda: (
                probe.thermal_pub.get_subscription_count() >= 1
                and probe.rgb_pub.get_subscription_count() >= 1
                and node._outputs["fused"].get_subscription_count() >= 1
                and node._outputs["stats"].get_subscription_count() >= 1
                and node._outputs["mask_vis"].get_subscription_count() >= 1
            ),
            what="discovery between the probe and the node",
        )
        yield live
    finally:
        executor.shutdown(timeout_sec=5.0)
        probe.destroy_node()
        node.destroy_node()
        context.try_shutdown()


def _pixels(msg: Image) -> np.ndarray:
    return image_to_array(msg)


# --------------------------------------------------------------------------------------------------
# In-process tests
# --------------------------------------------------------------------------------------------------


def test_parameters_are_declared_with_descriptors(live) -> None:
    node = live.node
    for spec in parameter_specs():
        descriptor = node.describe_parameter(spec.name)
        assert descriptor.description == spec.description
        assert descriptor.read_only == spec.read_only
        if spec.choices:
            for choice in spec.choices:
                assert repr(choice) in descriptor.additional_constraints
        if spec.type is float and spec.minimum is not None:
            (fp_range,) = descriptor.floating_point_range
            assert (fp_range.from_value, fp_range.to_value) == (spec.minimum, spec.maximum)
        if spec.type is int and spec.minimum is not None:
            (int_range,) = descriptor.integer_range
            assert (int_range.from_value, int_range.to_value) == (spec.minimum, spec.maximum)
    assert node.get_parameter("node.diagnostics_period").value == 0.5
    assert node.config.node.input_qos == "reliable"
    assert node.get_parameter("thermal.counts_min").value == FuseConfig().thermal.counts_min


def test_input_qos_and_qos_override_parameters(live) -> None:
    subscriptions = {s.topic_name: s.qos_profile for s in live.node.subscriptions}
    thermal, rgb = subscriptions[f"{NAMESPACE}/thermal/image"], subscriptions[f"{NAMESPACE}/rgb/image"]
    assert thermal.reliability == rgb.reliability == ReliabilityPolicy.RELIABLE  # node.input_qos: reliable
    assert thermal.depth == 20 and rgb.depth == 10  # the override applies to its topic only
    assert qos_profile_sensor_data.depth == 5  # rclpy's shared profile is left alone
    published = {p.topic_name: p.qos_profile for p in live.node.publishers}
    assert published[f"{NAMESPACE}/fused/image"].reliability == ReliabilityPolicy.RELIABLE
    assert published[f"{NAMESPACE}/fused/image"].depth == 10


def test_diagnostics_report_prior_and_device(live) -> None:
    # (The one-time start-up announcement of the prior is checked on the process output below.)
    assert live.node.pipeline.prior_name == "fallback"
    diag = _wait_for(lambda: live.probe.diagnostics, what="/diagnostics")[-1]
    values = {kv.key: kv.value for kv in diag.values}
    assert values["prior"] == "fallback" and values["device"] == "cpu" and values["device note"] == ""


def test_fuses_mono16_thermal_and_rgb8(live) -> None:
    stamp = live.stamp()
    thermal, rgb = live.pair(stamp)
    live.send(thermal, rgb)
    fused, stats = live.fused(stamp)
    key = _ns(stamp)
    # Header copied from the RGB input (stamp and frame_id), never now(); size = RGB size.
    for topic in ("image", "mask/ir", "mask/vis", "preliminary"):
        msg = _wait_for(lambda topic=topic: live.probe.outputs[topic].get(key), what=f"fused/{topic}")
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (stamp.sec, stamp.nanosec)
        assert msg.header.frame_id == "rgb_camera"
        assert (msg.height, msg.width) == (120, 160)
        assert msg.encoding == ("mono8" if topic.startswith("mask") else "rgb8")
    assert fused.step == 160 * 3
    # The node fed the pipeline exactly what a direct call gets (mono16 counts -> the default range).
    expected = live.reference.fuse(live.images["thermal16"], live.images["rgb"], "mono16", "rgb8")
    assert np.abs(_pixels(fused).astype(int) - expected.fused.astype(int)).max() <= 1
    mask_ir = _pixels(live.probe.outputs["mask/ir"][key])
    assert np.abs(mask_ir.astype(int) - expected.mask_ir.astype(int)).max() <= 1
    assert mask_ir.std() > 1.0  # a real mask, not a constant image
    # Stats of the same frame.
    assert stats.header.frame_id == "rgb_camera"
    assert stats.prior == "fallback" and stats.device == "cpu"
    stages = {t.stage for t in stats.timings}
    assert {"preprocess", "prior", "stage1", "postprocess", "total"} <= stages
    assert stats.latency_ms > 0.0 and stats.stamp_difference_ms == 0.0
    assert stats.fused >= 1 and stats.paired >= stats.fused and stats.received_rgb >= 1


def test_thermal_of_different_size_fuses_at_rgb_size(live) -> None:
    stamp = live.stamp()
    small = cv2.resize(live.images["thermal8"], (80, 60), interpolation=cv2.INTER_AREA)
    live.send(*live.pair(stamp, thermal=small, thermal_encoding="mono8"))
    fused, _ = live.fused(stamp)
    assert (fused.height, fused.width) == (120, 160)
    mask = live.probe.outputs["mask/vis"].get(_ns(stamp)) or _wait_for(
        lambda: live.probe.outputs["mask/vis"].get(_ns(stamp)), what="mask"
    )
    assert (mask.height, mask.width) == (120, 160)


def test_compressed_inputs(live) -> None:
    """node.thermal_compressed / node.rgb_compressed: 16-bit PNG thermal and JPEG RGB CompressedImage."""
    namespace, name = "/compressed", "sgdfuse_compressed"
    overrides = {**live.overrides, "node.thermal_compressed": True, "node.rgb_compressed": True}
    node = FusionNode(
        name,
        namespace=namespace,
        context=live.context,
        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()],
    )
    probe, reliable = live.probe, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    thermal_pub = probe.create_publisher(CompressedImage, f"{namespace}/thermal/image", reliable)
    rgb_pub = probe.create_publisher(CompressedImage, f"{namespace}/rgb/image", reliable)
    fused: dict[int, Image] = {}
    subscription = probe.create_subscription(
        Image, f"{namespace}/fused/image", lambda m: fused.setdefault(_ns(m.header.stamp), m), reliable
    )
    live.executor.add_node(node)
    try:
        _wait_for(
            lambda: (
                thermal_pub.get_subscription_count() >= 1
                and rgb_pub.get_subscription_count() >= 1
                and node._outputs["fused"].get_subscription_count() >= 1
            ),
            what="discovery of the compressed-input node",
        )
        ok_png, png = cv2.imencode(".png", live.images["thermal16"])
        ok_jpg, jpeg = cv2.imencode(".jpg", cv2.cvtColor(live.images["rgb"], cv2.COLOR_RGB2BGR))
        assert ok_png and ok_jpg
        stamp = live.stamp()
        thermal = CompressedImage(format="mono16; png compressed")
        thermal.header = Header(stamp=stamp, frame_id="thermal")
        thermal.data = png.tobytes()
        rgb = CompressedImage(format="rgb8; jpeg compressed bgr8")
        rgb.header = Header(stamp=stamp, frame_id="rgb_camera")
        rgb.data = jpeg.tobytes()
        thermal_pub.publish(thermal)
        rgb_pub.publish(rgb)
        out = _wait_for(lambda: fused.get(_ns(stamp)), what="fused image from compressed inputs")
        assert (out.height, out.width, out.header.frame_id) == (120, 160, "rgb_camera")
        # 16 bits survived the PNG round trip: same result as the pipeline on the decoded arrays.
        decoded_bgr = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
        expected = live.reference.fuse(live.images["thermal16"], decoded_bgr, "mono16", "bgr8")
        assert np.abs(_pixels(out).astype(int) - expected.fused.astype(int)).max() <= 1
    finally:
        live.executor.remove_node(node)
        node.destroy_node()
        probe.destroy_subscription(subscription)
        probe.destroy_publisher(thermal_pub)
        probe.destroy_publisher(rgb_pub)


def test_pair_publisher_mono16_maps_back_with_the_default_config() -> None:
    from sgdfuse_ros.imaging import ThermalScaler

    thermal8, _ = load_pair(PAIRS / "ir" / "FLIR_04598.jpg", PAIRS / "vi" / "FLIR_04598.jpg", "mono8", (160, 120))
    counts = counts_from_mono8(thermal8)
    assert counts.dtype == np.uint16 and counts.min() >= 27000 and counts.max() <= 33000
    scaled = ThermalScaler(FuseConfig().thermal).scale(counts, "mono16")
    assert np.abs(scaled - thermal8 / 255.0).max() < 1e-3


def test_full_size_640x480_pair(live) -> None:
    thermal8, rgb = load_pair(PAIRS / "ir" / "00537D.png", PAIRS / "vi" / "00537D.png", "mono8")
    assert rgb.shape == (480, 640, 3)
    stamp = live.stamp()
    live.send(*live.pair(stamp, thermal=counts_from_mono8(thermal8), rgb=rgb))
    fused, stats = live.fused(stamp, timeout=60.0)
    assert (fused.height, fused.width, fused.encoding) == (480, 640, "rgb8")
    assert stats.fused >= 1


def _bad_thermal_encoding(live, stamp):
    t, r = live.pair(stamp)
    t.encoding = "yuv422"
    return t, r


def _bad_rgb_encoding(live, stamp):
    t, r = live.pair(stamp)
    r.encoding = "bayer_rggb8"
    return t, r


def _bad_data_size(live, stamp):
    t, r = live.pair(stamp)
    t.data = bytes(t.data)[:-10]
    return t, r


def _bad_step(live, stamp):
    t, r = live.pair(stamp)
    r.step = r.width * 3 - 1
    r.data = bytes(r.step * r.height)
    return t, r


def _bad_empty(live, stamp):
    t, r = live.pair(stamp)
    t.width, t.height, t.step, t.data = 0, 0, 0, b""
    return t, r


def _bad_nonfinite(live, stamp):
    celsius = (live.images["thermal8"].astype(np.float32) / 255.0 * 60.0 - 10.0).astype(np.float32)
    celsius[10:12, 20:25] = np.nan
    return live.pair(stamp, thermal=celsius, thermal_encoding="32FC1")


@pytest.mark.parametrize(
    ("make", "reason", "says"),
    [
        (_bad_thermal_encoding, "thermal_encoding", "unsupported encoding 'yuv422'"),
        (_bad_rgb_encoding, "rgb_encoding", "unsupported encoding 'bayer_rggb8'"),
        (_bad_data_size, "thermal_data_size", "expected step x height"),
        (_bad_step, "rgb_step", "smaller than width x bytes per pixel"),
        (_bad_empty, "thermal_empty", "zero width or height"),
        (_bad_nonfinite, "thermal_nonfinite", "10 NaN/Inf pixel(s)"),
    ],
)
def test_bad_input_is_dropped_logged_and_counted(live, make, reason, says) -> None:
    before = live.dropped(reason)
    stamp = live.stamp()
    live.send(*make(live, stamp))
    line = _wait_for(lambda: live.probe.log_lines(f"({reason})"), what=f"a log line for {reason}")[-1]
    assert says in line and f"{stamp.sec}." in line
    assert _ns(stamp) not in live.probe.outputs["image"]
    # The node keeps serving: the next good pair is fused, and its stats carry the counter.
    _, stats = live.fuse_good_pair()
    counts = dict(zip(stats.dropped_reasons, stats.dropped_counts, strict=True))
    assert counts[reason] == before + 1
    assert stats.dropped == sum(stats.dropped_counts)


def test_throttle_is_per_reason(live) -> None:
    """Two reasons in quick succession are both logged; a repeat of the first one within the period is not."""
    node = live.node
    assert node.config.node.log_throttle >= 5.0

    def send_and_wait(make, reason: str) -> None:
        before = live.dropped(reason)
        live.send(*make(live, live.stamp()))
        _wait_for(lambda: live.dropped(reason) == before + 1, what=f"drop counted as {reason}")

    def zero_height_rgb(live, stamp):
        t, r = live.pair(stamp)
        r.height, r.data = 0, b""
        return t, r

    def short_thermal_step(live, stamp):
        t, r = live.pair(stamp)
        t.step = t.width  # mono16 needs 2 bytes per pixel
        t.data = bytes(t.step * t.height)
        return t, r

    start = time.monotonic()
    send_and_wait(zero_height_rgb, "rgb_empty")
    send_and_wait(short_thermal_step, "thermal_step")
    send_and_wait(zero_height_rgb, "rgb_empty")
    assert time.monotonic() - start < node.config.node.log_throttle  # all inside one throttle period
    _wait_for(lambda: live.probe.log_lines("(thermal_step)"), what="the thermal_step line")
    time.sleep(0.5)  # /rosout delivery of anything else that was logged
    assert len(live.probe.log_lines("(rgb_empty)")) == 1
    assert len(live.probe.log_lines("(thermal_step)")) == 1


def test_unpaired_messages_are_counted_per_topic(live) -> None:
    _, before = live.fuse_good_pair()
    lonely_thermal, _ = live.pair(live.stamp())
    live.send(lonely_thermal, None)
    # Wait for it to arrive: the two topics are not ordered with respect to each other, and the rule
    # needs an RGB message *after* it (one arriving earlier with a later stamp leaves it pending).
    received = live.node.counters
    _wait_for(lambda: received()["received_thermal"] == before.received_thermal + 1, what="the lonely thermal")
    _, after_thermal = live.fuse_good_pair()  # its RGB is > slop later than the lonely thermal
    assert after_thermal.unpaired_thermal == before.unpaired_thermal + 1
    assert after_thermal.unpaired_rgb == before.unpaired_rgb
    assert after_thermal.received_thermal == before.received_thermal + 2
    assert after_thermal.received_rgb == before.received_rgb + 1
    assert after_thermal.paired == before.paired + 1

    _, lonely_rgb = live.pair(live.stamp())
    live.send(None, lonely_rgb)
    # A partner outside the slop does not pair either: thermal 0.2 s after the rgb.
    late = Time(sec=lonely_rgb.header.stamp.sec, nanosec=lonely_rgb.header.stamp.nanosec + 200_000_000)
    live.send(live.pair(late)[0], None)
    _wait_for(
        lambda: (
            received()["received_rgb"] == after_thermal.received_rgb + 1
            and received()["received_thermal"] == after_thermal.received_thermal + 1
        ),
        what="the lonely rgb and the late thermal",
    )
    _, after_rgb = live.fuse_good_pair()
    assert after_rgb.unpaired_rgb == before.unpaired_rgb + 1
    assert after_rgb.unpaired_thermal == before.unpaired_thermal + 2
    assert after_rgb.paired == before.paired + 2
    assert _ns(lonely_rgb.header.stamp) not in live.probe.outputs["image"]
    # Diagnostics report the counts; unpaired messages alone are not a fault (a 30 Hz camera paired with a
    # 9 Hz one leaves most of its frames unpaired), so they do not raise the level.
    status = _wait_for(
        lambda: [
            s
            for s in list(live.probe.diagnostics)
            if {kv.key: kv.value for kv in s.values}.get("unpaired rgb") == str(after_rgb.unpaired_rgb)
        ],
        what="a diagnostics status with the unpaired rgb count",
    )[0]
    assert status.name == f"{NODE_NAME}: fusion"
    assert "unpaired" not in status.message


def test_a_looped_bag_pairs_every_pass_after_the_time_jump_reset(live) -> None:
    """The bag-loop pattern through the node's real pairing (message_filters; the test double here): pass 1
    ends with more unmatched RGB stamps than the queue holds, so pass 2 (the same stamps again) would pair
    nothing; the node detects the backwards jump, resets the pairing and pairs pass 2 like pass 1."""
    node, pairs_per_pass, queue = live.node, 6, live.node.config.node.sync_queue_size
    base = live.stamp()
    live._next += 5  # later tests keep increasing stamps (no second jump)

    def at(k: int) -> Time:
        ns = base.nanosec + k * 100_000_000
        return Time(sec=base.sec + ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def one_pass() -> int:
        before = node.counters()["paired"]
        for k in range(pairs_per_pass):
            live.send(*live.pair(at(k)))
            time.sleep(0.05)
        _wait_for(lambda: node.counters()["paired"] >= before + pairs_per_pass, what="the pass's pairs")
        time.sleep(0.3)  # the worker catches up, so the tail cannot overtake a pair
        received = node.counters()["received_rgb"]
        for k in range(pairs_per_pass, pairs_per_pass + queue + 2):  # RGB only: fills the RGB queue
            live.send(None, live.pair(at(k))[1])
            time.sleep(0.03)  # within the subscription's depth
        _wait_for(lambda: node.counters()["received_rgb"] >= received + queue + 2, what="the RGB tail")
        return node.counters()["paired"] - before

    jumps = node.counters()["time_jumps"]
    assert [one_pass() for _ in range(3)] == [pairs_per_pass] * 3
    assert node.counters()["time_jumps"] == jumps + 2  # one reset per loop
    line = _wait_for(lambda: live.probe.log_lines("pairing reset"), what="the time-jump log line")[-1]
    assert "stamp jumped back" in line and "bag loop" in line
    _, stats = live.fuse_good_pair()
    assert stats.time_jumps == jumps + 2


def test_newest_pair_wins_and_superseded_is_counted(live, monkeypatch) -> None:
    pipeline = live.node.pipeline
    real_fuse = pipeline.begin
    busy = threading.Event()

    def slow_fuse(*args, **kwargs):
        if not busy.is_set():
            busy.set()
            time.sleep(1.0)  # keep the worker busy while two more pairs arrive
        return real_fuse(*args, **kwargs)

    monkeypatch.setattr(pipeline, "begin", slow_fuse)
    before = live.dropped("superseded")
    first, second, third = live.stamp(), live.stamp(), live.stamp()
    live.send(*live.pair(first))
    _wait_for(busy.is_set, what="the worker to start on the first pair")
    live.send(*live.pair(second))
    live.send(*live.pair(third))
    live.fused(first)
    _, stats = live.fused(third)
    assert _ns(second) not in live.probe.outputs["image"]
    assert live.dropped("superseded") == before + 1
    assert dict(zip(stats.dropped_reasons, stats.dropped_counts, strict=True))["superseded"] == before + 1


def test_cuda_oom_drops_the_frame_and_keeps_serving(live, monkeypatch) -> None:
    pipeline = live.node.pipeline
    real_fuse = pipeline.begin
    raised = []

    def oom_once(*args, **kwargs):
        if not raised:
            raised.append(True)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fuse(*args, **kwargs)

    monkeypatch.setattr(pipeline, "begin", oom_once)
    before = live.dropped("cuda_oom")
    stamp = live.stamp()
    live.send(*live.pair(stamp))
    line = _wait_for(lambda: live.probe.log_lines("(cuda_oom)"), what="the cuda_oom log line")[-1]
    assert "CUDA out of memory" in line and "1 in a row" in line
    _, stats = live.fuse_good_pair()
    assert dict(zip(stats.dropped_reasons, stats.dropped_counts, strict=True))["cuda_oom"] == before + 1
    assert _ns(stamp) not in live.probe.outputs["image"]


def test_repeated_cuda_oom_moves_the_pipeline_to_the_cpu(live, monkeypatch) -> None:
    """With compute.oom_cpu_fallback, after 3 OOMs in a row on a CUDA device the pipeline moves to the CPU
    (with the thread count set) and says so.

    No GPU here: the pipeline is marked as being on cuda:0 and fuse raises OutOfMemoryError (what
    the CUDA caching allocator raises); the node's reaction is what is tested.
    """
    pipeline = live.node.pipeline
    real_fuse = pipeline.begin
    monkeypatch.setattr(pipeline, "device", torch.device("cuda:0"))
    monkeypatch.setattr(pipeline, "config", pipeline.config.updated({"compute.oom_cpu_fallback": True}))

    def fuse(*args, **kwargs):
        if pipeline.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return real_fuse(*args, **kwargs)

    monkeypatch.setattr(pipeline, "begin", fuse)
    before = live.dropped("cuda_oom")
    for k in range(3):
        live.send(*live.pair(live.stamp()))
        _wait_for(lambda k=k: live.dropped("cuda_oom") == before + k + 1, what=f"OOM drop {k + 1}")
    # The move follows the third drop in the worker thread.
    _wait_for(lambda: pipeline.device == torch.device("cpu"), what="the pipeline to move to the CPU")
    _, stats = live.fuse_good_pair()
    assert stats.device == "cpu"
    line = _wait_for(lambda: live.probe.log_lines("to the CPU (1 threads) after 3 consecutive CUDA"), what="move log")
    assert "moved from cuda:0" in line[-1]
    status = _wait_for(
        lambda: [
            s
            for s in list(live.probe.diagnostics)
            if "to the CPU" in {kv.key: kv.value for kv in s.values}.get("device note", "")
        ],
        what="diagnostics naming the move to the CPU",
    )[-1]
    assert status.level == DiagnosticStatus.WARN


def test_pipeline_errors_are_dropped_and_raise_diagnostics_to_error(live, monkeypatch) -> None:
    pipeline = live.node.pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("stage1 exploded")

    monkeypatch.setattr(pipeline, "begin", broken)
    before = live.dropped("pipeline_error")
    seen = len(live.probe.diagnostics)  # only statuses published from now on (earlier tests leave ERRORs too)
    for k in range(3):
        live.send(*live.pair(live.stamp()))
        _wait_for(lambda k=k: live.dropped("pipeline_error") == before + k + 1, what=f"pipeline error {k + 1}")
    line = _wait_for(lambda: live.probe.log_lines("(pipeline_error)"), what="the pipeline_error line")[-1]
    assert "RuntimeError: stage1 exploded" in line
    error = _wait_for(
        lambda: [s for s in list(live.probe.diagnostics)[seen:]
                 if s.level == DiagnosticStatus.ERROR and "stage1 exploded" in s.message],
        what="an ERROR diagnostics status naming the error",
    )[-1]
    assert "pipeline failed" in error.message and "times in a row" in error.message
    monkeypatch.undo()
    _, stats = live.fuse_good_pair()
    assert dict(zip(stats.dropped_reasons, stats.dropped_counts, strict=True))["pipeline_error"] == before + 3


def test_worker_survives_a_publish_error(live, monkeypatch) -> None:
    publisher = live.node._outputs["mask_ir"]
    real_publish = publisher.publish
    failed = []

    def publish_once_broken(msg):
        if not failed:
            failed.append(True)
            raise RuntimeError("middleware refused the message")
        return real_publish(msg)

    monkeypatch.setattr(publisher, "publish", publish_once_broken)
    before = live.node.counters()
    stamp = live.stamp()
    live.send(*live.pair(stamp))
    _wait_for(lambda: live.dropped("pipeline_error") == before["dropped_by_reason"].get("pipeline_error", 0) + 1)
    _, stats = live.fuse_good_pair()  # the worker thread is still alive
    assert stats.fused == before["fused"] + 1  # the broken frame was not counted as fused
    assert stats.paired == stats.fused + stats.dropped  # every pair accounted for (none in flight now)


def test_diagnostics_fields(live) -> None:
    seen = len(live.probe.diagnostics)
    live.fuse_good_pair()
    fused_status = _wait_for(
        lambda: [
            s
            for s in list(live.probe.diagnostics)[seen:]
            if float({kv.key: kv.value for kv in s.values}["fused rate (Hz)"]) > 0
        ],
        what="a diagnostics period with a fused frame",
    )[-1]
    values = {kv.key: kv.value for kv in fused_status.values}
    for key in (
        "thermal input rate (Hz)",
        "rgb input rate (Hz)",
        "pair rate (Hz)",
        "fused rate (Hz)",
        "latency p50 (ms)",
        "latency max (ms)",
        "timestamp age p50 (ms)",
        "timestamp age p99 (ms)",
        "superseded in period",
        "dropped in period (other reasons)",
        "dropped in period by reason",
        "drop rate excluding superseded",
        "thermal last message (s ago)",
        "rgb last message (s ago)",
        "time jumps",
        "config generation",
        "dropped total",
        "unpaired thermal",
        "unpaired rgb",
        "unpaired thermal in period",
        "unpaired rgb in period",
        "prior",
        "device",
        "device note",
    ):
        assert key in values, key
    assert float(values["latency max (ms)"]) >= float(values["latency p50 (ms)"]) > 0.0
    # Age = node clock at publish - sensor stamp; the test stamps are in 2023, so it is large and positive.
    assert float(values["timestamp age p99 (ms)"]) >= float(values["timestamp age p50 (ms)"]) > 0.0
    assert fused_status.name == f"{NODE_NAME}: fusion"
    assert fused_status.hardware_id == values["device"] == str(live.node.pipeline.device)
    # Every drop reason seen so far has its own cumulative key.
    for reason, count in live.node.counters()["dropped_by_reason"].items():
        assert f"dropped {reason}" in values
        assert int(values[f"dropped {reason}"]) <= count


def _set_parameters(live, **values) -> list:
    client = live.probe.create_client(SetParameters, f"{NAMESPACE}/{NODE_NAME}/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=WAIT)
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]
        )
        future = client.call_async(request)
        _wait_for(future.done, what="set_parameters response")
        return future.result().results
    finally:
        live.probe.destroy_client(client)


def test_dynamic_parameters_validated_and_applied(live) -> None:
    node = live.node
    scaler = node.pipeline.thermal_scaler
    try:
        (ok,) = _set_parameters(live, **{"thermal.counts_min": 26000.0})
        assert ok.successful, ok.reason
        assert node.get_parameter("thermal.counts_min").value == 26000.0
        # The worker applies an accepted change at the next frame boundary (within its 0.5 s wait when idle).
        _wait_for(lambda: scaler.config.counts_min == 26000.0, what="the worker to apply counts_min")
        # An integer for a float parameter (what `ros2 param set ... 34000` sends) is accepted.
        (ok,) = _set_parameters(live, **{"thermal.counts_max": 34000})
        assert ok.successful, ok.reason
        assert isinstance(node.get_parameter("thermal.counts_max").value, float)
        _wait_for(lambda: scaler.config.counts_max == 34000.0, what="the worker to apply counts_max")
        (ok,) = _set_parameters(live, **{"node.log_throttle": 2.5})
        assert ok.successful and node._throttle.period == 2.5
        # The change reaches the frames: a mono16 pair is now scaled with 26000-34000.
        fused, _ = live.fuse_good_pair()
        reference = live.reference
        default_thermal = reference.thermal_scaler.config
        reference.thermal_scaler.config = node.config.thermal
        try:
            expected = reference.fuse(live.images["thermal16"], live.images["rgb"], "mono16", "rgb8")
        finally:
            reference.thermal_scaler.config = default_thermal
        assert np.abs(_pixels(fused).astype(int) - expected.fused.astype(int)).max() <= 1
        prepared, _ = node.pipeline.prepare(live.images["thermal16"], live.images["rgb"], "mono16", "rgb8")
        counts = live.images["thermal16"].astype(np.float32)
        np.testing.assert_allclose(prepared, np.clip((counts - 26000.0) / 8000.0, 0, 1), atol=1e-6)
        # Rejected: cross-field rule, choices, range, read-only, type. Nothing changes.
        rejections = {
            "thermal.counts_min": (40000.0, "must be greater than thermal.counts_min"),
            "thermal.scaling": ("auto", "allowed: 'fixed', 'tracked'"),
            "thermal.tracking_rate": (2.0, "out of range"),
            "node.sync_slop": (0.2, "read-only"),
            "node.log_throttle": ("fast", "ype"),
        }
        for name, (value, says) in rejections.items():
            (result,) = _set_parameters(live, **{name: value})
            assert not result.successful, name
            assert says in result.reason, (name, result.reason)
        assert scaler.config.counts_min == 26000.0 and scaler.config.scaling == "fixed"
        assert node.config.node.sync_slop == 0.05 and node._throttle.period == 2.5
    finally:
        _set_parameters(
            live, **{"thermal.counts_min": 27000.0, "thermal.counts_max": 33000.0, "node.log_throttle": 5.0}
        )
    _wait_for(
        lambda: scaler.config.counts_min == 27000.0 and scaler.config.counts_max == 33000.0,
        what="the defaults back in effect",
    )


def test_parameter_changes_while_frames_flow_apply_between_frames(live) -> None:
    """``ros2 param set`` from another thread while pairs flow: every frame is wholly one configuration (its
    pixels equal a reference fused with exactly one of the values sent), FusionStats.config_generation
    never goes back and names it, and no pair is dropped because of a change."""
    from dataclasses import replace

    node, reference = live.node, live.reference
    values = [26000.0, 25000.0, 24000.0, 23000.0, 22000.0]
    default_thermal = reference.thermal_scaler.config
    expected = {}
    try:
        for value in [node.config.thermal.counts_min, *values]:
            reference.thermal_scaler.config = replace(node.config.thermal, counts_min=value)
            expected[value] = reference.fuse(live.images["thermal16"], live.images["rgb"], "mono16", "rgb8").fused
    finally:
        reference.thermal_scaler.config = default_thermal
    done = threading.Event()

    def change_parameters() -> None:
        for value in values:
            (result,) = _set_parameters(live, **{"thermal.counts_min": value})
            assert result.successful, result.reason
            time.sleep(0.2)
        done.set()

    dropped = node.counters()["dropped"]
    changer = threading.Thread(target=change_parameters)
    frames = []
    try:
        changer.start()
        while not done.is_set() or len(frames) < 4:
            fused, stats = live.fuse_good_pair()
            frames.append((_pixels(fused), stats.config_generation))
        changer.join()
        last_generation = frames[-1][1]
        _wait_for(lambda: node.config_generation > last_generation or node.config.thermal.counts_min == values[-1])
        fused, stats = live.fuse_good_pair()  # after the last change: the last value
        frames.append((_pixels(fused), stats.config_generation))
    finally:
        _set_parameters(live, **{"thermal.counts_min": 27000.0})
    matches_by_generation: dict[int, set[float]] = {}
    for pixels, generation in frames:
        matching = {v for v, image in expected.items() if np.abs(pixels.astype(int) - image.astype(int)).max() <= 1}
        assert matching, f"generation {generation}: the frame matches no single configuration"
        previous = matches_by_generation.setdefault(generation, matching)
        assert previous & matching, f"generation {generation}: frames with different values"
        matches_by_generation[generation] = previous & matching
    generations = [generation for _, generation in frames]
    assert generations == sorted(generations) and len(set(generations)) >= 3, generations
    assert values[-1] in matches_by_generation[generations[-1]]
    assert node.counters()["dropped"] == dropped  # no drop caused by a change


# --------------------------------------------------------------------------------------------------
# Subprocesses of scripts/fusion_node
# --------------------------------------------------------------------------------------------------


def _node_process(*ros_args: str, name: str = "sgdfuse", extra: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "scripts" / "fusion_node"), *extra, "--ros-args", *ros_args]
    return subprocess.Popen(
        command,
        cwd=str(REPO),
        env=ros_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_startup_errors_exit_non_zero_and_name_the_problem(tmp_path, stage1_weights) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("/**:\n  ros__parameters:\n    compute:\n      precision: fp8\n")
    weights = ["-p", f"stage1.weights:={stage1_weights}"] if stage1_weights else []
    cases = {
        "missing stage1 weights": (
            ["-p", "stage1.weights:=/nonexistent/stage1_roadscene.pt"],
            ["/nonexistent/stage1_roadscene.pt"],
        ),
        "missing SAM checkpoint": (
            [*weights, "-p", "prior.sam_checkpoint:=/nonexistent/sam_vit_b.pth"],
            ["/nonexistent/sam_vit_b.pth"],
        ),
        "invalid parameter": ([*weights, "-p", "node.sync_slop:=20.0"], ["node.sync_slop", "20.0", "[0.0, 10.0]"]),
        "invalid parameter in params file": (
            [*weights, "--params-file", str(bad_yaml)],
            ["compute.precision", "fp8", "'fp32', 'fp16', 'bf16'"],
        ),
    }
    # All at once: each process spends most of its time importing torch.
    processes = {case: _node_process(*args) for case, (args, _) in cases.items()}
    for case, process in processes.items():
        try:
            output, _ = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            pytest.fail(f"{case}: the node did not exit:\n{output}")
        assert process.returncode != 0, f"{case}: exit code 0\n{output}"
        for needle in cases[case][1]:
            assert needle in output, f"{case}: '{needle}' not in output:\n{output}"
        assert "[ERROR]" in output and "Traceback" not in output, f"{case}:\n{output}"


def test_process_end_to_end_with_pair_publisher(stage1_weights) -> None:
    """scripts/fusion_node with config/fuse.yaml, remapped topics, default sensor-data QoS and
    compute.device=cuda (falls back to the CPU here), fed by scripts/pair_publisher (mono16)."""
    namespace = "/e2e"
    remaps = ["-r", f"__ns:={namespace}", "-r", "thermal/image:=cam/thermal", "-r", "rgb/image:=cam/rgb"]
    node_args = [
        *remaps,
        "--params-file",
        str(REPO / "config" / "fuse.yaml"),
        "-p",
        "compute.device:=cuda",
        "-p",
        "compute.torch_threads:=1",
        "-p",
        "node.diagnostics_period:=0.5",
    ]
    if stage1_weights:
        node_args += ["-p", f"stage1.weights:={stage1_weights}"]
    fusion = _node_process(*node_args)
    publisher = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "pair_publisher"),
            "--thermal-encoding",
            "mono16",
            "--size",
            "160x120",
            "--rate",
            "4",
            "--loop",
            "--ros-args",
            *remaps,
        ],
        cwd=str(REPO),
        env=ros_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = Probe(context, namespace, "sgdfuse")
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    fusion_output = ""
    try:
        _wait_for(lambda: probe.stats, timeout=90.0, what="fused/stats from the node process")
        with probe.lock:
            stats = next(iter(probe.stats.values()))
            key = _ns(stats.header.stamp)
        fused = _wait_for(lambda: probe.outputs["image"].get(key), what="the fused image of that frame")
        assert (fused.height, fused.width, fused.encoding) == (120, 160, "rgb8")
        assert fused.header.frame_id == "rgb_camera"  # from the RGB input, as pair_publisher sets it
        assert stats.prior == "fallback"
        expected_device = "cuda:0" if torch.cuda.is_available() else "cpu"
        assert stats.device.startswith(expected_device[:4])
        if not torch.cuda.is_available():
            status = _wait_for(
                lambda: [
                    s
                    for s in list(probe.diagnostics)
                    if "CUDA requested" in {kv.key: kv.value for kv in s.values}.get("device note", "")
                ],
                what="diagnostics reporting the CUDA fallback",
            )[-1]
            assert status.level == DiagnosticStatus.WARN
        # Ctrl-C: a clean exit.
        fusion.send_signal(signal.SIGINT)
        fusion_output, _ = fusion.communicate(timeout=30)
        assert fusion.returncode == 0, fusion_output
        assert "semantic prior: fallback" in fusion_output
        assert "no prior.sam_checkpoint configured" in fusion_output
        assert fusion_output.count("semantic prior:") == 1
        assert "first fused frame: 160x120" in fusion_output
        if not torch.cuda.is_available():
            assert fusion_output.count("CUDA requested ('cuda') but not available") == 1  # warned once
            assert "[WARN]" in fusion_output.split("CUDA requested")[0].splitlines()[-1]
    finally:
        for process in (fusion, publisher):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()
        executor.shutdown(timeout_sec=5.0)
        probe.destroy_node()
        context.try_shutdown()
