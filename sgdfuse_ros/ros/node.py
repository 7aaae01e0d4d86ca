"""The sgdfuse_ros fusion node: thermal + RGB images in, fused image, masks, stats and diagnostics out.

A thin ROS adapter around the rclpy-free frame core (:mod:`sgdfuse_ros.frame_core`, shared with the offline
replay) and the diagnostics core (:mod:`sgdfuse_ros.health`). Threading model (docs/node.md):

* The executor thread runs the two image subscriptions (one mutually exclusive group), the pairing
  (message_filters' ApproximateTimeSynchronizer fed through ``message_filters.SimpleFilter`` inputs), the
  diagnostics timer and the parameter services. All of them are cheap: a formed pair only goes into a
  one-slot mailbox (a waiting, older pair is dropped and counted as "superseded").
* One worker thread applies accepted parameter changes between frames, takes pairs from the mailbox, runs
  the frame core and publishes. Heavy work never runs in a callback.

A stamp that jumps backwards by more than the slop on either camera (bag loop, clock reset, ``/clock`` jump)
resets the pairing: fresh SimpleFilter inputs and a fresh synchronizer replace the old ones (message_filters'
public API only; the stale queues would otherwise block pairing until the stamps pass them).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import message_filters
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image

from sgdfuse_ros.config import ConfigError, FuseConfig, parameter_specs
from sgdfuse_ros.frame_core import EXIT_CUDA_FAULT, FatalDeviceError, FrameCore, FrameOutcome, FrameStats
from sgdfuse_ros.health import FusionHealth, HealthSettings
from sgdfuse_ros.msg import FusionStats, StageTiming
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.ros.conversion import array_to_image, copy_header
from sgdfuse_ros.ros.parameters import (
    RosLogHandler,
    declare_config_parameters,
    input_qos_profile,
    output_qos_profile,
    parameter_descriptor,
    plain_value,
    widen_parameters,
)
from sgdfuse_ros.ros.throttle import ReasonThrottle
from sgdfuse_ros.sync import RGB, THERMAL, TOPIC_LABELS, PairAccounting, TimeJumpDetector, stamp_ns

__all__ = [
    "DEFAULT_NODE_NAME",
    "EXIT_CUDA_FAULT",
    "FusionNode",
    "PairAccounting",
    "StartupError",
    "input_qos_profile",
    "main",
    "output_qos_profile",
    "parameter_descriptor",
]

DEFAULT_NODE_NAME = "sgdfuse"


class StartupError(RuntimeError):
    """The node cannot start (invalid parameter, missing weights...); the message says what and where."""


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
        self._attach_library_logging()
        try:
            config = declare_config_parameters(self)
            # ConfigError is a ValueError; FileNotFoundError / ValueError from the weights and
            # checkpoint loaders name the path.
            pipeline = pipeline_factory(config)
        except (OSError, ValueError, RuntimeError, ImportError) as error:
            log.error(f"cannot start: {error}")  # one line, no traceback: the message says what and where
            self._detach_library_logging()
            Node.destroy_node(self)
            raise StartupError(str(error)) from None

        self._config = config  # the latest accepted configuration; the worker applies it between frames
        self._config_lock = threading.Lock()
        self._pending_changes: set[str] = set()
        self._accounting = PairAccounting(config.node.sync_slop, config.node.sync_queue_size)
        self._core = FrameCore(pipeline, self._accounting)
        self._health = FusionHealth(HealthSettings.from_config(config))
        self._throttle = ReasonThrottle(config.node.log_throttle)
        self._mailbox = _Mailbox()
        self._first_frame_reported = False
        #: Set when the node must stop (sticky CUDA error); ``exit_code`` says with which status.
        self.fatal = threading.Event()
        self.exit_code = 0
        self._announce()

        # Inputs: plain subscriptions in one mutually exclusive group feed the pairing's SimpleFilter inputs,
        # so the accounting and the time-jump check see each message before the synchronizer, in its order.
        self._time_jumps = TimeJumpDetector(config.node.sync_slop)
        self._connect_pairing()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._subscriptions_by_topic = [
            self.create_subscription(
                CompressedImage if compressed else Image,
                topic,
                functools.partial(self._on_message, topic=index),
                input_qos_profile(config.node.input_qos),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                callback_group=self._input_group,
            )
            for index, topic, compressed in (
                (THERMAL, "thermal/image", config.node.thermal_compressed),
                (RGB, "rgb/image", config.node.rgb_compressed),
            )
        ]

        def publisher(msg_type: type, topic: str) -> Any:
            return self.create_publisher(
                msg_type,
                topic,
                output_qos_profile(config.node.output_qos),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            )

        self._pub_fused = publisher(Image, "fused/image")
        self._pub_mask_ir = publisher(Image, "fused/mask/ir")
        self._pub_mask_vis = publisher(Image, "fused/mask/vis")
        self._pub_stats = publisher(FusionStats, "fused/stats")
        self._pub_preliminary = publisher(Image, "fused/preliminary") if config.node.publish_preliminary else None
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Diagnostics on a steady clock: keeps reporting with use_sim_time and a paused bag.
        self._diag_timer = self.create_timer(
            config.node.diagnostics_period,
            self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        if hasattr(self, "add_pre_set_parameters_callback"):  # Iron and newer; Humble lacks it
            self.add_pre_set_parameters_callback(widen_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="sgdfuse-worker", daemon=True)
        self._worker.start()
        log.info(
            f"fusing '{self.resolve_topic_name('thermal/image')}' + '{self.resolve_topic_name('rgb/image')}' "
            f"-> '{self.resolve_topic_name('fused/image')}' (input QoS {config.node.input_qos}, "
            f"slop {config.node.sync_slop} s, queue {config.node.sync_queue_size})"
        )

    # -- accessors ---------------------------------------------------------------------------------
    @property
    def pipeline(self) -> FusionPipeline:
        return self._core.pipeline

    @property
    def config(self) -> FuseConfig:
        """The latest accepted configuration (the worker applies it at the next frame boundary)."""
        return self._config

    @property
    def config_generation(self) -> int:
        """Generation of the configuration the worker runs with (FusionStats.config_generation)."""
        return self._core.config_generation

    def counters(self) -> dict[str, Any]:
        """Cumulative counters (same numbers as fused/stats), for tests and tools."""
        return self._accounting.snapshot()

    # -- logging -----------------------------------------------------------------------------------
    def _attach_library_logging(self) -> None:
        self._log_handler = RosLogHandler(self.get_logger())
        self._library_logger = logging.getLogger("sgdfuse_ros")
        self._library_logger.addHandler(self._log_handler)
        self._library_level = self._library_logger.level
        if self._library_logger.getEffectiveLevel() > logging.INFO:
            self._library_logger.setLevel(logging.INFO)

    def _detach_library_logging(self) -> None:
        self._library_logger.removeHandler(self._log_handler)
        self._library_logger.setLevel(self._library_level)

    def _log(self, level: str, line: str) -> None:
        # One call site per severity: rclpy binds a severity to each call site and raises
        # "Logger severity cannot be changed between calls" if one line logs at two levels.
        logger = self.get_logger()
        if level == "error":
            logger.error(line)
        elif level == "info":
            logger.info(line)
        else:
            logger.warning(line)

    def _log_throttled(self, reason: str, line: str, level: str) -> None:
        allowed, suppressed = self._throttle.allow(reason)
        if not allowed:
            return
        if suppressed:
            line += f" [{suppressed} more '{reason}' line(s) not logged in the last {self._throttle.period:g} s]"
        self._log(level, line)

    def _log_drop(self, reason: str, rgb: Image | CompressedImage, message: str, level: str) -> None:
        stamp = rgb.header.stamp
        self._log_throttled(reason, f"dropped pair {stamp.sec}.{stamp.nanosec:09d} ({reason}): {message}", level)

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
        note = self.pipeline.device_note
        if note and note not in self._log_handler.messages:
            log.warning(note)  # (the pipeline usually logged it already, forwarded above)

    # -- parameters (executor thread: validate and hand over; the worker applies) --------------------
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        known = {spec.name for spec in parameter_specs()}
        changes = {p.name: plain_value(p.value) for p in parameters if p.name in known}
        if not changes:
            return SetParametersResult(successful=True)
        with self._config_lock:
            try:
                new = self._config.updated(changes)
            except ConfigError as error:
                self.get_logger().warning(f"rejected parameter change: {error}")
                return SetParametersResult(successful=False, reason=str(error))
            self._config = new
            self._pending_changes |= set(changes)
        self._throttle.period = new.node.log_throttle
        accepted = ", ".join(f"{name}={value!r}" for name, value in sorted(changes.items()))
        self.get_logger().info(f"parameters accepted (applied from the next frame): {accepted}")
        return SetParametersResult(successful=True)

    def _apply_pending_config(self) -> None:
        """Worker thread, between frames: hand the latest accepted configuration to the frame core."""
        with self._config_lock:
            if not self._pending_changes:
                return
            new, changed, self._pending_changes = self._config, self._pending_changes, set()
        generation = self._core.reconfigure(new, changed)
        self.get_logger().info(f"configuration generation {generation} in effect ({', '.join(sorted(changed))})")

    # -- inputs (executor thread; cheap) -----------------------------------------------------------
    def _connect_pairing(self) -> None:
        """Fresh SimpleFilter inputs and a fresh synchronizer (start-up, and the reset after a time jump)."""
        queue_size, slop = self._config.node.sync_queue_size, self._config.node.sync_slop
        self._inputs = (message_filters.SimpleFilter(), message_filters.SimpleFilter())
        if slop > 0.0:
            self._sync = message_filters.ApproximateTimeSynchronizer(list(self._inputs), queue_size, slop)
        else:
            # ApproximateTimeSynchronizer pairs only stamps closer than slop (strictly), so slop 0
            # would never pair; 0 means "identical stamps", which is what TimeSynchronizer does.
            self._sync = message_filters.TimeSynchronizer(list(self._inputs), queue_size)
        self._sync.registerCallback(self._on_pair)

    def _on_message(self, msg: Image | CompressedImage, topic: int) -> None:
        stamp = stamp_ns(msg.header)
        self._health.on_input(topic)
        if self._time_jumps.check(topic, stamp):
            self._accounting.on_time_jump()
            self._connect_pairing()
            self._log_throttled(
                "time_jump",
                f"{TOPIC_LABELS[topic]} stamp jumped back to {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}, "
                f"more than node.sync_slop before its previous stamp (bag loop, clock reset or /clock jump): pairing "
                f"reset ({self._time_jumps.jumps} time jump(s) so far)",
                "warning",
            )
        self._accounting.on_message(topic, stamp)
        self._inputs[topic].signalMessage(msg)

    def _on_pair(self, thermal: Image | CompressedImage, rgb: Image | CompressedImage) -> None:
        # Runs inside the synchronizer (holding its lock): hand over and return.
        self._accounting.on_pair(stamp_ns(thermal.header), stamp_ns(rgb.header))
        replaced = self._mailbox.put(_Pair(thermal, rgb, time.monotonic()))
        if replaced is not None:
            self._core.drop("superseded")
            replaced.accounted = True
            why = "a newer pair arrived before the worker was free (input faster than fusion)"
            self._log_drop("superseded", replaced.rgb, why, "info")

    # -- worker thread -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            self._apply_pending_config()
            backoff = self._core.backoff_remaining()
            if backoff > 0.0:
                self._stop.wait(backoff)  # after a CUDA OOM: newer pairs supersede the waiting one meanwhile
                continue
            pair = self._mailbox.take(timeout=0.5)
            if pair is None or self._stop.is_set():
                continue
            self._apply_pending_config()  # a change accepted while waiting applies to this frame already
            try:
                self._process(pair)
            except FatalDeviceError as error:
                pair.accounted = True
                self.get_logger().fatal(f"{error}: exiting with status {EXIT_CUDA_FAULT} (docs/node.md 'Faults')")
                self.exit_code = EXIT_CUDA_FAULT
                self.fatal.set()
                return
            except Exception as error:  # noqa: BLE001 - the worker must survive anything (e.g. a publish error)
                if self._stop.is_set():
                    return  # shutting down: the context is gone
                text = f"{type(error).__name__}: {error}"
                if not pair.accounted:
                    pair.accounted = True
                    self._core.drop("pipeline_error")
                    self._log_drop("pipeline_error", pair.rgb, text, "error")
                else:
                    self.get_logger().error(f"after publishing a fused frame: {text}")

    def _process(self, pair: _Pair) -> None:
        outcome = self._core.process(pair.thermal, pair.rgb, pair.received)
        for note in self._core.take_notes():
            self.get_logger().error(note)
        if outcome.result is None:
            pair.accounted = True
            self._log_drop(outcome.drop_reason, pair.rgb, outcome.drop_message, outcome.drop_level)
            return
        header = pair.rgb.header
        result = outcome.result
        self._pub_fused.publish(array_to_image(result.fused, "rgb8", header))
        self._pub_mask_ir.publish(array_to_image(result.mask_ir, "mono8", header))
        self._pub_mask_vis.publish(array_to_image(result.mask_vis, "mono8", header))
        if self._pub_preliminary is not None:
            self._pub_preliminary.publish(array_to_image(result.preliminary, "rgb8", header))
        age_ms = (self.get_clock().now().nanoseconds - stamp_ns(header)) / 1e6
        stats = self._core.complete(outcome, age_ms)
        pair.accounted = True
        self._health.on_published(age_ms / 1000.0, stats.latency_ms)
        if not self._first_frame_reported:
            self._first_frame_reported = True
            self.get_logger().info(
                f"first fused frame: {result.fused.shape[1]}x{result.fused.shape[0]} on {stats.device}, "
                f"{result.timings_ms.get('total', 0.0):.0f} ms in the pipeline, {stats.latency_ms:.0f} ms latency"
            )
        self._pub_stats.publish(stats_message(stats, header, outcome))

    # -- diagnostics -------------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """The status for the period since the previous call (closes the period); docs/node.md 'Diagnostics'."""
        report = self._health.report(self._accounting.snapshot(), self._core.health())
        device = str(self.pipeline.device)
        values = report.values + [
            ("prior", self.pipeline.prior_name),
            ("device", device),
            ("config generation", str(self._core.config_generation)),
        ]
        return DiagnosticStatus(
            level=bytes([report.level]),
            name=f"{self.get_name()}: fusion",
            message=report.message,
            hardware_id=self._config.node.hardware_id or device,
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


def stats_message(stats: FrameStats, header: Any, outcome: FrameOutcome) -> FusionStats:
    """FusionStats of one fused frame (the header is copied, never aliased)."""
    msg = FusionStats(**stats.message_fields())
    msg.header = copy_header(header)
    msg.timings = [StageTiming(stage=k, milliseconds=float(v)) for k, v in stats.timings_ms.items()]
    return msg


def run(args: Sequence[str] | None = None) -> int:
    """Start the node and spin until shutdown; returns the process exit code.

    0 after a normal shutdown, 1 when the node cannot start, :data:`EXIT_CUDA_FAULT` after a sticky CUDA error.
    """
    rclpy.init(args=args)
    try:
        try:
            node = FusionNode()
        except StartupError:
            return 1  # already logged by the node, naming the parameter or path
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while rclpy.ok() and not node.fatal.is_set():
                executor.spin_once(timeout_sec=0.2)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass  # Ctrl-C / ros2 launch shutdown: a normal exit
        finally:
            with contextlib.suppress(Exception):
                executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
        return node.exit_code
    finally:
        rclpy.try_shutdown()


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of scripts/fusion_node (``ros2 run sgdfuse_ros fusion_node``)."""
    sys.exit(run(sys.argv if args is None else args))


if __name__ == "__main__":
    main()
