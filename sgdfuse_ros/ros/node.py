"""The sgdfuse_ros fusion node: thermal + RGB images in, fused image, masks, stats and diagnostics out.

Threading model (see docs/node.md):

* The executor thread runs the subscription callbacks (message_filters.Subscriber ->
  ApproximateTimeSynchronizer), the diagnostics timer and the parameter services. All of them are
  cheap: the synchronizer callback only puts the newest pair into a one-slot mailbox (a waiting,
  older pair is dropped and counted as "superseded").
* One worker thread takes pairs from the mailbox, converts the messages (conversion.py), runs the
  FusionPipeline and publishes. Heavy work never runs in a callback, so a slow frame never blocks
  the subscriptions, the diagnostics or ``ros2 param``.

Every pair the synchronizer forms is accounted for: it is fused, or dropped with a reason
("superseded", the InvalidImageError reason keys such as "thermal_encoding", "cuda_oom",
"pipeline_error"). Messages that never become part of a pair are counted as unpaired per topic
(rule in :class:`PairAccounting`).
"""

from __future__ import annotations

import array
import collections
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import message_filters
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image

from sgdfuse_ros.config import ConfigError, FuseConfig, ParamSpec, parameter_specs
from sgdfuse_ros.imaging import InvalidImageError
from sgdfuse_ros.msg import FusionStats, StageTiming
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.ros.conversion import array_to_image, copy_header, rgb_to_array, thermal_to_array
from sgdfuse_ros.ros.throttle import ReasonThrottle
from sgdfuse_ros.sync import RGB, THERMAL, TOPIC_LABELS, PairAccounting, stamp_ns

__all__ = [
    "DEFAULT_NODE_NAME",
    "FusionNode",
    "PairAccounting",
    "StartupError",
    "input_qos_profile",
    "main",
    "output_qos_profile",
    "parameter_descriptor",
]

DEFAULT_NODE_NAME = "sgdfuse"
#: Consecutive CUDA out-of-memory errors after which the pipeline moves to the CPU.
OOM_CPU_FALLBACK_AFTER = 3
#: Consecutive pipeline failures after which diagnostics report ERROR.
PIPELINE_ERROR_LEVEL_AFTER = 3

_ROS_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_DOUBLE_ARRAY,
}
_SECTIONS = {spec.name.split(".", 1)[0] for spec in parameter_specs()}


class StartupError(RuntimeError):
    """The node cannot start (invalid parameter, missing weights...); the message says what and where."""


class _RosLogHandler(logging.Handler):
    """Forwards the library's Python logging (``sgdfuse_ros.*``) to the node's ROS logger (and /rosout).

    Without it a library warning (e.g. the pipeline's CUDA fallback note) goes to Python's
    last-resort stderr handler, unformatted and invisible in /rosout.
    """

    #: Recent messages kept for ``seen`` (bounded: a long-running node must not grow a list per warning).
    MAX_KEPT = 100

    def __init__(self, ros_logger: Any) -> None:
        super().__init__(level=logging.INFO)
        self._ros_logger = ros_logger
        self.messages: collections.deque[str] = collections.deque(maxlen=self.MAX_KEPT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            message = str(record.msg)
        self.messages.append(message)
        # One call site per severity (rclpy binds a severity to each call site).
        if record.levelno >= logging.ERROR:
            self._ros_logger.error(message)
        elif record.levelno >= logging.WARNING:
            self._ros_logger.warning(message)
        else:
            self._ros_logger.info(message)


# --------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------


def parameter_descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """ROS ParameterDescriptor of a config parameter: description, type, read_only, range, choices."""
    descriptor = ParameterDescriptor(
        name=spec.name, type=_ROS_TYPES[spec.type], description=spec.description, read_only=spec.read_only
    )
    if spec.choices or spec.length is not None:
        descriptor.additional_constraints = spec.allowed()
    elif spec.name == "compute.device":
        descriptor.additional_constraints = "allowed: 'cpu', 'cuda' or 'cuda:N'"
    if spec.minimum is not None and spec.maximum is not None:
        if spec.type is float:
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0)
            ]
        elif spec.type is int:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)]
    return descriptor


def _plain(value: Any) -> Any:
    """rclpy array parameter values (array.array) -> list, so ParamSpec.coerce accepts them."""
    if isinstance(value, array.array):
        return list(value)
    return value


def _widen(spec: ParamSpec, value: Any) -> float | list[float] | None:
    """An integer given for a float parameter (YAML ``27000``, ``ros2 param set ... 28000``) -> float.

    rclpy types parameters statically and would reject the integer with a type error; the config
    accepts it, so widen it before rclpy sees it. Returns None when nothing needs widening.
    """
    value = _plain(value)
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        spec.type is list
        and isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and any(isinstance(v, int) for v in value)
    ):
        return [float(v) for v in value]
    return None


def input_qos_profile(name: str) -> QoSProfile:
    """QoS of one image subscription for ``node.input_qos``: a new object on every call.

    Never share a profile between entities (or hand out rclpy's qos_profile_sensor_data itself):
    rclpy applies the ``qos_overrides.<topic>.*`` parameters by modifying the profile it is given,
    so an override of one topic would leak into the other one, and into the module global.
    """
    if name == "sensor_data":
        base = qos_profile_sensor_data
        return QoSProfile(
            history=base.history, depth=base.depth, reliability=base.reliability, durability=base.durability
        )
    reliability = ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=10, reliability=reliability)


def output_qos_profile(name: str) -> QoSProfile:
    """QoS of one published topic for ``node.output_qos`` (a new object on every call, see input_qos_profile)."""
    reliability = ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=10, reliability=reliability)


# --------------------------------------------------------------------------------------------------
# Hand-over from the synchronizer to the worker (the counters, PairAccounting, are in sgdfuse_ros.sync,
# shared with the offline bag tools)
# --------------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    thermal: Image | CompressedImage
    rgb: Image | CompressedImage
    received: float  #: time.monotonic() when the synchronizer formed the pair (arrival of the later message)
    accounted: bool = False  #: counted as fused or dropped


class _Mailbox:
    """One-slot hand-over from the synchronizer callback to the worker; a newer pair replaces a waiting one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: _Pair | None = None
        self._closed = False

    def put(self, item: _Pair) -> _Pair | None:
        """Store ``item``; returns the pair it replaced (never processed), if any."""
        with self._cond:
            replaced, self._item = self._item, item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> _Pair | None:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# --------------------------------------------------------------------------------------------------
# Node
# --------------------------------------------------------------------------------------------------


class FusionNode(Node):
    """Subscribes to ``thermal/image`` and ``rgb/image``, publishes ``fused/*`` and ``/diagnostics``.

    Args:
        node_name: default "sgdfuse" (remappable with ``--ros-args -r __node:=...``).
        pipeline_factory: builds the FusionPipeline from the FuseConfig (tests may wrap it).
        **node_kwargs: passed to rclpy.node.Node (``parameter_overrides``, ``context``, ``namespace``...).
    Raises:
        StartupError: invalid parameters, missing/unreadable weights or checkpoint (already logged).
    """

    def __init__(
        self,
        node_name: str = DEFAULT_NODE_NAME,
        *,
        pipeline_factory: Callable[[FuseConfig], FusionPipeline] = FusionPipeline.from_config,
        **node_kwargs: Any,
    ) -> None:
        super().__init__(node_name, **node_kwargs)
        log = self.get_logger()
        self._log_handler = _RosLogHandler(log)
        self._library_logger = logging.getLogger("sgdfuse_ros")
        self._library_logger.addHandler(self._log_handler)
        self._library_level = self._library_logger.level
        if self._library_logger.getEffectiveLevel() > logging.INFO:
            self._library_logger.setLevel(logging.INFO)
        try:
            self._config = self._declare_parameters()
            # ConfigError is a ValueError; FileNotFoundError / ValueError from the weights and
            # checkpoint loaders name the path.
            self.pipeline = pipeline_factory(self._config)
        except (OSError, ValueError, RuntimeError, ImportError) as error:
            log.error(f"cannot start: {error}")  # one line, no traceback: the message says what and where
            self._detach_library_logging()
            Node.destroy_node(self)
            raise StartupError(str(error)) from None
        cfg = self._config

        self._accounting = PairAccounting(cfg.node.sync_slop, cfg.node.sync_queue_size)
        self._throttle = ReasonThrottle(cfg.node.log_throttle)
        self._mailbox = _Mailbox()
        self._state_lock = threading.Lock()
        self._device_note = self.pipeline.device_note
        self._consecutive_oom = 0
        self._consecutive_errors = 0
        self._last_error = ""
        self._period_latencies: list[float] = []
        self._first_frame_reported = False
        self._announce()

        # Inputs: both subscriptions in one mutually exclusive group so the accounting sees the
        # messages in the order the synchronizer does, whatever executor the node is spun in.
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._subscribers = []
        for topic_index, topic, compressed in (
            (THERMAL, "thermal/image", cfg.node.thermal_compressed),
            (RGB, "rgb/image", cfg.node.rgb_compressed),
        ):
            subscriber = message_filters.Subscriber(
                self,
                CompressedImage if compressed else Image,
                topic,
                qos_profile=input_qos_profile(cfg.node.input_qos),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                callback_group=self._input_group,
            )
            # Registered before the synchronizer connects, so each message is counted before it can pair.
            subscriber.registerCallback(self._on_message, topic_index)
            self._subscribers.append(subscriber)
        if cfg.node.sync_slop > 0.0:
            self._sync = message_filters.ApproximateTimeSynchronizer(
                self._subscribers, queue_size=cfg.node.sync_queue_size, slop=cfg.node.sync_slop
            )
        else:
            # ApproximateTimeSynchronizer pairs only stamps closer than slop (strictly), so slop 0
            # would never pair; 0 means "identical stamps", which is what TimeSynchronizer does.
            self._sync = message_filters.TimeSynchronizer(self._subscribers, queue_size=cfg.node.sync_queue_size)
        self._sync.registerCallback(self._on_pair)

        # Outputs.
        def publisher(msg_type: type, topic: str) -> Any:
            return self.create_publisher(
                msg_type,
                topic,
                output_qos_profile(cfg.node.output_qos),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            )

        self._pub_fused = publisher(Image, "fused/image")
        self._pub_mask_ir = publisher(Image, "fused/mask/ir")
        self._pub_mask_vis = publisher(Image, "fused/mask/vis")
        self._pub_stats = publisher(FusionStats, "fused/stats")
        self._pub_preliminary = publisher(Image, "fused/preliminary") if cfg.node.publish_preliminary else None
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # Diagnostics on a steady clock: keeps reporting with use_sim_time and a paused bag.
        self._last_diag_time = time.monotonic()
        self._last_diag_counts = self._accounting.snapshot()
        self._diag_timer = self.create_timer(
            cfg.node.diagnostics_period, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )

        # Run-time parameter changes: widen ints for float parameters, then validate and apply.
        if hasattr(self, "add_pre_set_parameters_callback"):  # Iron and newer; Humble lacks it
            self.add_pre_set_parameters_callback(self._widen_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="sgdfuse-worker", daemon=True)
        self._worker.start()
        log.info(
            f"fusing '{self.resolve_topic_name('thermal/image')}' + '{self.resolve_topic_name('rgb/image')}' "
            f"-> '{self.resolve_topic_name('fused/image')}' (input QoS {cfg.node.input_qos}, "
            f"slop {cfg.node.sync_slop} s, queue {cfg.node.sync_queue_size})"
        )

    # -- parameters --------------------------------------------------------------------------------
    def _declare_parameters(self) -> FuseConfig:
        specs = parameter_specs()
        overrides = getattr(self, "_parameter_overrides", None)  # values from --ros-args / params files
        if isinstance(overrides, dict):
            for spec in specs:
                widened = _widen(spec, overrides[spec.name].value) if spec.name in overrides else None
                if widened is not None:
                    overrides[spec.name] = Parameter(spec.name, value=widened)
            known = {spec.name for spec in specs}
            for name in sorted(overrides):
                if name.split(".", 1)[0] in _SECTIONS and name not in known:
                    self.get_logger().warning(f"ignoring unknown parameter '{name}' (not an sgdfuse_ros parameter)")
        values: dict[str, Any] = {}
        for spec in specs:
            default = list(spec.default) if spec.type is list else spec.default
            try:
                declared = self.declare_parameter(spec.name, default, parameter_descriptor(spec))
            except ParameterException:
                # rclpy rejected the type or range of a value from the command line / params file.
                given = overrides[spec.name].value if isinstance(overrides, dict) and spec.name in overrides else "?"
                raise ConfigError(spec.name, _plain(given), spec.allowed()) from None
            values[spec.name] = _plain(declared.value)
        return FuseConfig().updated(values)

    def _widen_parameters(self, parameters: list[Parameter]) -> list[Parameter]:
        specs = {spec.name: spec for spec in parameter_specs()}
        out = []
        for parameter in parameters:
            spec = specs.get(parameter.name)
            widened = _widen(spec, parameter.value) if spec is not None else None
            if widened is not None:
                parameter = Parameter(parameter.name, value=widened)
            out.append(parameter)
        return out

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        known = {spec.name for spec in parameter_specs()}
        changes = {p.name: _plain(p.value) for p in parameters if p.name in known}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            new = self._config.updated(changes)
        except ConfigError as error:
            self.get_logger().warning(f"rejected parameter change: {error}")
            return SetParametersResult(successful=False, reason=str(error))
        self._apply_config(new, changes)
        return SetParametersResult(successful=True)

    def _apply_config(self, new: FuseConfig, changes: dict[str, Any]) -> None:
        """Apply run-time parameters (the read_only ones never reach here: rclpy rejects them)."""
        self._config = new
        pipeline = self.pipeline
        # Attribute swaps are atomic for the worker thread; a frame in flight finishes with the old values.
        pipeline.config = new
        if any(name.startswith("thermal.") for name in changes):
            pipeline.thermal_scaler.config = new.thermal
            pipeline.thermal_scaler.reset()
        for key in ("pred_iou_thresh", "stability_score_thresh"):
            if f"prior.{key}" in changes and hasattr(pipeline.prior, key):
                setattr(pipeline.prior, key, getattr(new.prior, key))
        self._throttle.period = new.node.log_throttle
        applied = ", ".join(f"{name}={value!r}" for name, value in sorted(changes.items()))
        self.get_logger().info(f"parameters applied: {applied}")

    @property
    def config(self) -> FuseConfig:
        """The configuration in effect (updated by run-time parameter changes)."""
        return self._config

    # -- start-up report ---------------------------------------------------------------------------
    def _announce(self) -> None:
        cfg, log = self._config, self.get_logger()
        prior = self.pipeline.prior_name
        if prior == "fallback":
            why = "prior.kind is 'fallback'" if cfg.prior.kind == "fallback" else "no prior.sam_checkpoint configured"
            log.info(f"semantic prior: fallback (weight-free saliency masks; {why})")
        else:
            log.info(f"semantic prior: {prior} (checkpoint '{cfg.prior.sam_checkpoint}')")
        weights = cfg.stage1.weights or "shipped Stage I weights"
        log.info(f"Stage I: {weights}; device {self.pipeline.device}, precision {cfg.compute.precision}")
        if self._device_note and self._device_note not in self._log_handler.messages:
            log.warning(self._device_note)  # (the pipeline usually logged it already, forwarded above)

    # -- callbacks (executor thread; cheap) --------------------------------------------------------
    def _on_message(self, msg: Image | CompressedImage, topic: int) -> None:
        self._accounting.on_message(topic, stamp_ns(msg.header))

    def _on_pair(self, thermal: Image | CompressedImage, rgb: Image | CompressedImage) -> None:
        # Runs inside the synchronizer (holding its lock): hand over and return.
        self._accounting.on_pair(stamp_ns(thermal.header), stamp_ns(rgb.header))
        replaced = self._mailbox.put(_Pair(thermal, rgb, time.monotonic()))
        if replaced is not None:
            self._drop(
                "superseded",
                replaced,
                "a newer pair arrived before the worker was free (input faster than fusion)",
                level="info",
            )

    # -- worker thread -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            pair = self._mailbox.take(timeout=0.5)
            if pair is None or self._stop.is_set():
                continue
            try:
                self._process(pair)
            except Exception as error:  # noqa: BLE001 - the worker must survive anything (e.g. a publish error)
                if self._stop.is_set():
                    return  # shutting down: the context is gone
                if not pair.accounted:
                    self._drop("pipeline_error", pair, f"{type(error).__name__}: {error}", level="error")
                else:
                    self.get_logger().error(f"after publishing a fused frame: {type(error).__name__}: {error}")

    def _process(self, pair: _Pair) -> None:
        pipeline = self.pipeline
        try:
            limit = self._config.node.max_image_bytes
            thermal, thermal_encoding = thermal_to_array(pair.thermal, limit)
            rgb, rgb_encoding = rgb_to_array(pair.rgb, limit)
            result = pipeline.fuse(thermal, rgb, thermal_encoding, rgb_encoding)
        except InvalidImageError as error:
            self._drop(error.reason, pair, str(error))
            return
        except torch.cuda.OutOfMemoryError as error:
            self._on_out_of_memory(pair, error)
            return
        except Exception as error:  # noqa: BLE001 - any pipeline fault drops the frame; the node keeps serving
            with self._state_lock:
                self._consecutive_errors += 1
                self._last_error = f"{type(error).__name__}: {error}"
            self._drop("pipeline_error", pair, f"{type(error).__name__}: {error}", level="error")
            return
        with self._state_lock:
            self._consecutive_oom = 0
            self._consecutive_errors = 0
        self._publish(pair, result, str(pipeline.device))

    def _on_out_of_memory(self, pair: _Pair, error: BaseException) -> None:
        # Best effort: release the cached blocks the failed frame left; the frame is dropped either way.
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        with self._state_lock:
            self._consecutive_oom += 1
            count = self._consecutive_oom
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "out of memory"
        self._drop(
            "cuda_oom",
            pair,
            f"CUDA out of memory on {self.pipeline.device} ({count} in a row): {first_line}",
            level="error",
        )
        if count >= OOM_CPU_FALLBACK_AFTER and self.pipeline.device.type == "cuda":
            previous = self.pipeline.device
            self.pipeline.to("cpu")
            note = f"moved from {previous} to the CPU after {count} consecutive CUDA out-of-memory errors"
            with self._state_lock:
                self._device_note = note
                self._consecutive_oom = 0
            self.get_logger().error(note)

    def _drop(self, reason: str, pair: _Pair, message: str, level: str = "warning") -> None:
        """Count ``pair`` as dropped for ``reason`` and log it (rate-limited per reason)."""
        self._accounting.on_dropped(reason)
        pair.accounted = True
        self._log_drop(reason, pair.rgb, message, level)

    def _log_drop(self, reason: str, rgb: Image | CompressedImage, message: str, level: str) -> None:
        allowed, suppressed = self._throttle.allow(reason)
        if not allowed:
            return
        stamp = rgb.header.stamp
        line = f"dropped pair {stamp.sec}.{stamp.nanosec:09d} ({reason}): {message}"
        if suppressed:
            line += f" [{suppressed} more '{reason}' drop(s) not logged in the last {self._throttle.period:g} s]"
        # One call site per severity: rclpy binds a severity to each call site and raises
        # "Logger severity cannot be changed between calls" if one line logs at two levels.
        logger = self.get_logger()
        if level == "error":
            logger.error(line)
        elif level == "info":
            logger.info(line)
        else:
            logger.warning(line)

    def _publish(self, pair: _Pair, result: Any, device: str) -> None:
        header = pair.rgb.header
        self._pub_fused.publish(array_to_image(result.fused, "rgb8", header))
        self._pub_mask_ir.publish(array_to_image(result.mask_ir, "mono8", header))
        self._pub_mask_vis.publish(array_to_image(result.mask_vis, "mono8", header))
        if self._pub_preliminary is not None:
            self._pub_preliminary.publish(array_to_image(result.preliminary, "rgb8", header))
        self._accounting.on_fused()
        pair.accounted = True
        latency_ms = (time.monotonic() - pair.received) * 1000.0
        if not self._first_frame_reported:
            self._first_frame_reported = True
            self.get_logger().info(
                f"first fused frame: {result.fused.shape[1]}x{result.fused.shape[0]} on {device}, "
                f"{result.timings_ms.get('total', 0.0):.0f} ms in the pipeline, {latency_ms:.0f} ms latency"
            )
        with self._state_lock:
            self._period_latencies.append(latency_ms)
        counts = self._accounting.snapshot()
        stats = FusionStats()
        stats.header = copy_header(header)
        stats.prior = self.pipeline.prior_name
        stats.device = device
        stats.timings = [StageTiming(stage=k, milliseconds=float(v)) for k, v in result.timings_ms.items()]
        stats.latency_ms = float(latency_ms)
        stats.stamp_difference_ms = (stamp_ns(pair.thermal.header) - stamp_ns(pair.rgb.header)) / 1e6
        for key in ("received_thermal", "received_rgb", "paired", "unpaired_thermal", "unpaired_rgb", "fused"):
            setattr(stats, key, int(counts[key]))
        stats.dropped = int(counts["dropped"])
        reasons = sorted(counts["dropped_by_reason"])
        stats.dropped_reasons = reasons
        stats.dropped_counts = [int(counts["dropped_by_reason"][r]) for r in reasons]
        self._pub_stats.publish(stats)

    # -- diagnostics -------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Cumulative counters (same numbers as fused/stats), for tests and tools."""
        return self._accounting.snapshot()

    def diagnostic_status(self) -> DiagnosticStatus:
        """The status for the period since the previous call (resets the period)."""
        now = time.monotonic()
        counts = self._accounting.snapshot()
        with self._state_lock:
            latencies, self._period_latencies = self._period_latencies, []
            device_note = self._device_note
            consecutive_errors, last_error = self._consecutive_errors, self._last_error
        previous, self._last_diag_counts = self._last_diag_counts, counts
        elapsed = max(now - self._last_diag_time, 1e-6)
        self._last_diag_time = now

        def rate(key: str) -> float:
            return (counts[key] - previous[key]) / elapsed

        dropped_period = {
            reason: n - previous["dropped_by_reason"].get(reason, 0)
            for reason, n in counts["dropped_by_reason"].items()
            if n - previous["dropped_by_reason"].get(reason, 0) > 0
        }
        unpaired_period = {label: counts[f"unpaired_{label}"] - previous[f"unpaired_{label}"] for label in TOPIC_LABELS}
        values = [
            ("thermal input rate (Hz)", f"{rate('received_thermal'):.2f}"),
            ("rgb input rate (Hz)", f"{rate('received_rgb'):.2f}"),
            ("pair rate (Hz)", f"{rate('paired'):.2f}"),
            ("fused rate (Hz)", f"{rate('fused'):.2f}"),
            ("latency mean (ms)", f"{sum(latencies) / len(latencies):.1f}" if latencies else "n/a"),
            ("latency max (ms)", f"{max(latencies):.1f}" if latencies else "n/a"),
            ("dropped in period", str(sum(dropped_period.values()))),
            (
                "dropped in period by reason",
                ", ".join(f"{r}={n}" for r, n in sorted(dropped_period.items())) or "none",
            ),
            ("dropped total", str(counts["dropped"])),
        ]
        values += [(f"dropped {r}", str(n)) for r, n in sorted(counts["dropped_by_reason"].items())]
        values += [
            ("unpaired thermal in period", str(unpaired_period["thermal"])),
            ("unpaired rgb in period", str(unpaired_period["rgb"])),
            ("unpaired thermal", str(counts["unpaired_thermal"])),
            ("unpaired rgb", str(counts["unpaired_rgb"])),
            ("received thermal", str(counts["received_thermal"])),
            ("received rgb", str(counts["received_rgb"])),
            ("paired", str(counts["paired"])),
            ("fused", str(counts["fused"])),
            ("prior", self.pipeline.prior_name),
            ("device", str(self.pipeline.device)),
            ("device note", device_note),
            ("consecutive pipeline errors", str(consecutive_errors)),
            ("period (s)", f"{elapsed:.2f}"),
        ]
        issues = []
        if dropped_period:
            issues.append(
                f"{sum(dropped_period.values())} pair(s) dropped ("
                + ", ".join(f"{r}: {n}" for r, n in sorted(dropped_period.items()))
                + ")"
            )
        for label in TOPIC_LABELS:
            if unpaired_period[label]:
                issues.append(f"{unpaired_period[label]} unpaired {label} message(s)")
        if device_note:
            issues.append(device_note)
        if consecutive_errors >= PIPELINE_ERROR_LEVEL_AFTER:
            level = DiagnosticStatus.ERROR
            message = f"pipeline failed {consecutive_errors} times in a row (last: {last_error})"
        elif issues:
            level = DiagnosticStatus.WARN
            message = "; ".join(issues)
        else:
            level = DiagnosticStatus.OK
            fused_rate = rate("fused")
            message = f"fusing at {fused_rate:.1f} Hz" if counts["fused"] > previous["fused"] else "waiting for input"
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: fusion",
            message=message,
            hardware_id=self.get_fully_qualified_name(),
            values=[KeyValue(key=k, value=v) for k, v in values],
        )

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        self._pub_diagnostics.publish(msg)

    # -- shutdown ----------------------------------------------------------------------------------
    def destroy_node(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._mailbox.close()
            self._worker.join(timeout=10.0)
        if getattr(self, "_log_handler", None) is not None:
            self._detach_library_logging()
        super().destroy_node()

    def _detach_library_logging(self) -> None:
        self._library_logger.removeHandler(self._log_handler)
        self._library_logger.setLevel(self._library_level)


def run(args: Sequence[str] | None = None) -> int:
    """Start the node and spin until shutdown; returns the process exit code (1 on start-up errors)."""
    rclpy.init(args=args)
    try:
        try:
            node = FusionNode()
        except StartupError:
            return 1  # already logged by the node, naming the parameter or path
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C / ros2 launch shutdown: a normal exit
        finally:
            node.destroy_node()
        return 0
    finally:
        rclpy.try_shutdown()


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of scripts/fusion_node (``ros2 run sgdfuse_ros fusion_node``)."""
    sys.exit(run(sys.argv if args is None else args))


if __name__ == "__main__":
    main()
