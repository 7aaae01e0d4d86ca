"""The sgdfuse_ros fusion node: thermal + RGB images in, fused image, masks, stats and diagnostics out.

A managed (lifecycle) node and a thin ROS adapter around the rclpy-free frame core
(:mod:`sgdfuse_ros.frame_core`, shared with the offline replay) and the diagnostics core
(:mod:`sgdfuse_ros.health`). States (docs/node.md "Lifecycle"):

* unconfigured: parameters declared, nothing loaded;
* configure: build the pipeline (weights, prior), the frame core and the publishers; a failure is a
  FAILURE transition naming the problem, not a crash;
* activate: subscribe to the inputs, start the worker and the diagnostics timer;
* deactivate: unsubscribe, let the worker finish the pair it holds, stop it;
* cleanup: drop the pipeline (and CUDA's cached memory) and the publishers;
* shutdown (from any state): whatever of the above is needed, then the process exits 0.

The ``autostart`` parameter (default true) configures and activates at start-up, so ``ros2 run`` gives an
active node. Threading: the executor thread runs the subscriptions (one mutually exclusive group), the
pairing (message_filters' ApproximateTimeSynchronizer fed through ``message_filters.SimpleFilter`` inputs),
the timer, the parameter and lifecycle services, all cheap: a formed pair goes into a one-slot mailbox (a
waiting, older pair is dropped as "superseded"). One worker thread applies accepted parameter changes
between frames, runs the frame core and publishes.

A stamp that jumps backwards by more than the slop on either camera (bag loop, clock reset, ``/clock`` jump)
resets the pairing: fresh SimpleFilter inputs and a fresh synchronizer replace the old ones (message_filters'
public API only; the stale queues would otherwise block pairing until the stamps pass them).
"""

from __future__ import annotations

import functools
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import message_filters
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from sgdfuse_ros.config import ConfigError, FuseConfig, parameter_specs
from sgdfuse_ros.frame_core import EXIT_CUDA_FAULT, FatalDeviceError, FrameCore, FrameOutcome, FrameStats
from sgdfuse_ros.health import FusionHealth, HealthSettings
from sgdfuse_ros.msg import FusionStats, StageTiming
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.ros.conversion import array_to_image, copy_header
from sgdfuse_ros.ros.handover import Mailbox, Pair
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
#: Longest wait for the worker to finish its frame when the node is deactivated or shut down.
DRAIN_TIMEOUT_S = 10.0
AUTOSTART_DESCRIPTOR = ParameterDescriptor(
    description="Configure and activate the lifecycle node at start-up (false: it waits unconfigured for "
    "'ros2 lifecycle set <node> configure').",
    read_only=True,
)


class StartupError(RuntimeError):
    """The node cannot start (invalid parameter, missing weights...); the message says what and where."""


class FusionNode(LifecycleNode):
    """Managed node: subscribes to ``thermal/image`` and ``rgb/image``, publishes ``fused/*`` and ``/diagnostics``.

    Args:
        node_name: default "sgdfuse" (remappable with ``--ros-args -r __node:=...``).
        pipeline_factory: builds the FusionPipeline from the FuseConfig at configure (tests inject faults here).
        **node_kwargs: passed to rclpy's LifecycleNode (``parameter_overrides``, ``context``, ``namespace``...).
    Raises:
        StartupError: a parameter rclpy or the config rejects, or (with ``autostart``) a failed configure;
            already logged as one line naming the parameter or path.
    """

    def __init__(
        self,
        node_name: str = DEFAULT_NODE_NAME,
        *,
        pipeline_factory: Callable[[FuseConfig], FusionPipeline] = FusionPipeline.from_config,
        **node_kwargs: Any,
    ) -> None:
        super().__init__(node_name, **node_kwargs)
        self._pipeline_factory = pipeline_factory
        self._log_handler = RosLogHandler.attach(self.get_logger())
        try:
            self._config = declare_config_parameters(self)
        except ConfigError as error:
            self._fail_start(str(error))
        self.declare_parameter("autostart", True, AUTOSTART_DESCRIPTOR)
        self._config_lock = threading.Lock()
        self._pending_changes: set[str] = set()
        self._throttle = ReasonThrottle(self._config.node.log_throttle)
        self._core: FrameCore | None = None
        self._accounting = PairAccounting(self._config.node.sync_slop, self._config.node.sync_queue_size)
        self._outputs: dict[str, Any] = {}
        self._subscriptions_by_topic: list[Any] = []
        self._diag_timer: Any = None
        self._worker: threading.Thread | None = None
        self._mailbox = Mailbox()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._first_frame_reported = False
        self.configure_error = ""
        #: Set when the node must stop (sticky CUDA error); ``exit_code`` says with which status.
        self.fatal = threading.Event()
        #: Set by the shutdown transition: the process has nothing left to do.
        self.finished = threading.Event()
        self.exit_code = 0
        if hasattr(self, "add_pre_set_parameters_callback"):  # Iron and newer; Humble lacks it
            self.add_pre_set_parameters_callback(widen_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.get_parameter("autostart").value:
            if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                self._fail_start(self.configure_error)
            self.trigger_activate()

    def _fail_start(self, message: str) -> None:
        self.get_logger().error(f"cannot start: {message}")  # one line, no traceback: it says what and where
        self.destroy_node()
        raise StartupError(message) from None

    # -- accessors ---------------------------------------------------------------------------------
    @property
    def pipeline(self) -> FusionPipeline | None:
        """The pipeline while configured (None when unconfigured)."""
        return self._core.pipeline if self._core is not None else None

    @property
    def config(self) -> FuseConfig:
        """The latest accepted configuration (the worker applies it at the next frame boundary)."""
        return self._config

    @property
    def config_generation(self) -> int:
        """Generation of the configuration the worker runs with (FusionStats.config_generation)."""
        return self._core.config_generation if self._core is not None else 0

    def counters(self) -> dict[str, Any]:
        """Cumulative counters since configure (same numbers as fused/stats), for tests and tools."""
        return self._accounting.snapshot()

    # -- lifecycle transitions (executor thread) ---------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self._config
        try:
            # ConfigError is a ValueError; the weights and checkpoint loaders name the path.
            pipeline = self._pipeline_factory(config)
        except (OSError, ValueError, RuntimeError, ImportError) as error:
            self.configure_error = str(error)
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        with self._config_lock:
            self._pending_changes = set()
        self._accounting = PairAccounting(config.node.sync_slop, config.node.sync_queue_size)
        self._core = FrameCore(pipeline, self._accounting, keep_preliminary=config.node.publish_preliminary)
        self._health = FusionHealth(HealthSettings.from_config(config))
        self._time_jumps = TimeJumpDetector(config.node.sync_slop)

        def publisher(msg_type: type, topic: str) -> Any:
            return self.create_publisher(
                msg_type,
                topic,
                output_qos_profile(config.node.output_qos),
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            )

        topics = {"fused": "fused/image", "mask_ir": "fused/mask/ir", "mask_vis": "fused/mask/vis"}
        self._outputs = {key: publisher(Image, topic) for key, topic in topics.items()}
        self._outputs["stats"] = publisher(FusionStats, "fused/stats")
        if config.node.publish_preliminary:
            self._outputs["preliminary"] = publisher(Image, "fused/preliminary")
        self._outputs["diagnostics"] = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._first_frame_reported = False
        self._announce()
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self._config
        self._connect_pairing()
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
        self._health.restart_period(self._accounting.snapshot())
        # Diagnostics on a steady clock: keeps reporting with use_sim_time and a paused bag.
        self._diag_timer = self.create_timer(
            config.node.diagnostics_period, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self._mailbox = Mailbox()
        self._worker = threading.Thread(target=self._work, name="sgdfuse-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"fusing '{self.resolve_topic_name('thermal/image')}' + '{self.resolve_topic_name('rgb/image')}' "
            f"-> '{self.resolve_topic_name('fused/image')}' (input QoS {config.node.input_qos}, "
            f"slop {config.node.sync_slop} s, queue {config.node.sync_queue_size})"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input_and_drain()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        # ``state`` is the state shut down from: undo whatever it holds.
        self.get_logger().info(f"shutting down from the '{state.label}' state")
        if state.label == "active":
            self._stop_input_and_drain()
        if state.label in ("active", "inactive"):
            self._release()
        self.finished.set()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in a transition from '{state.label}': releasing everything")
        self._stop_input_and_drain()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_input_and_drain(self) -> None:
        """No new input; the worker fuses the pair it holds (and one waiting), then stops."""
        for subscription in self._subscriptions_by_topic:
            self.destroy_subscription(subscription)
        self._subscriptions_by_topic = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        self._mailbox.close()
        if self._worker is not None:
            self._worker.join(timeout=DRAIN_TIMEOUT_S)
            if self._worker.is_alive():
                self.get_logger().warning(f"the worker did not finish its frame within {DRAIN_TIMEOUT_S:g} s")
            self._worker = None
        self._accounting.flush_pending()  # the synchronizer's queues are gone with it

    def _release(self) -> None:
        """Drop the publishers and the pipeline; return CUDA's cached blocks to the driver."""
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}
        on_cuda = self._core is not None and self._core.pipeline.device.type == "cuda"
        self._core = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    # -- logging -----------------------------------------------------------------------------------
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
        cfg, log, pipeline = self._config, self.get_logger(), self._core.pipeline
        if pipeline.prior_name == "fallback":
            why = "prior.kind is 'fallback'" if cfg.prior.kind == "fallback" else "no prior.sam_checkpoint configured"
            log.info(f"semantic prior: fallback (weight-free saliency masks; {why})")
        else:
            log.info(f"semantic prior: {pipeline.prior_name} (checkpoint '{cfg.prior.sam_checkpoint}')")
        weights = cfg.stage1.weights or "shipped Stage I weights"
        log.info(f"Stage I: {weights}; device {pipeline.device}, precision {cfg.compute.precision}")
        if pipeline.device_note and pipeline.device_note not in self._log_handler.messages:
            log.warning(pipeline.device_note)  # (the pipeline usually logged it already, forwarded above)

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
            if self._core is not None:
                self._pending_changes |= set(changes)
        self._throttle.period = new.node.log_throttle
        accepted = ", ".join(f"{name}={value!r}" for name, value in sorted(changes.items()))
        self.get_logger().info(f"parameters accepted (applied from the next frame): {accepted}")
        return SetParametersResult(successful=True)

    def _apply_pending_config(self, core: FrameCore) -> None:
        """Worker thread, between frames: hand the latest accepted configuration to the frame core."""
        with self._config_lock:
            if not self._pending_changes:
                return
            new, changed, self._pending_changes = self._config, self._pending_changes, set()
        generation = core.reconfigure(new, changed)
        self.get_logger().info(f"configuration generation {generation} in effect ({', '.join(sorted(changed))})")

    # -- inputs (executor thread; cheap) -----------------------------------------------------------
    def _connect_pairing(self) -> None:
        """Fresh SimpleFilter inputs and a fresh synchronizer (activation, and the reset after a time jump)."""
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
        replaced = self._mailbox.put(Pair(thermal, rgb, time.monotonic()))
        if replaced is not None:
            self._accounting.on_dropped("superseded")
            why = "a newer pair arrived before the worker was free (input faster than fusion)"
            self._log_drop("superseded", replaced.rgb, why, "info")

    # -- worker thread -----------------------------------------------------------------------------
    def _work(self) -> None:
        core, mailbox, log = self._core, self._mailbox, self.get_logger()
        while True:
            self._apply_pending_config(core)
            backoff = core.backoff_remaining()
            if backoff > 0.0 and not mailbox.closed and not core.in_flight:
                mailbox.wait_closed(backoff)  # after a CUDA OOM: newer pairs supersede the waiting one meanwhile
                continue
            # With a pair in flight (compute.pipeline_prior) do not wait: finish it now if nothing newer is there.
            pair = mailbox.take(timeout=0.0 if core.in_flight else 0.5)
            if pair is None and not core.in_flight:
                if mailbox.closed:
                    return  # deactivated and drained
                continue
            try:
                if pair is None:
                    done = core.flush()
                else:
                    self._apply_pending_config(core)  # a change accepted while waiting applies to this frame already
                    done = core.submit(pair.thermal, pair.rgb, pair.received, pair)
            except FatalDeviceError as error:  # the core has counted every pair it held
                log.fatal(f"{error}: exiting with status {EXIT_CUDA_FAULT} (docs/node.md 'Faults')")
                self.exit_code = EXIT_CUDA_FAULT
                self.fatal.set()
                return
            for done_pair, outcome in done:
                self._deliver(core, done_pair, outcome)

    def _deliver(self, core: FrameCore, pair: Pair, outcome: FrameOutcome) -> None:
        """Publish a fused pair's outputs and stats, or log a dropped one; never raises."""
        try:
            self._publish(core, pair, outcome)
        except Exception as error:  # noqa: BLE001 - the worker must survive anything (e.g. a publish error)
            text = f"{type(error).__name__}: {error}"
            if not pair.accounted:
                pair.accounted = True
                core.drop("pipeline_error")
                self._log_drop("pipeline_error", pair.rgb, text, "error")
            else:
                self.get_logger().error(f"after publishing a fused frame: {text}")

    def _publish(self, core: FrameCore, pair: Pair, outcome: FrameOutcome) -> None:
        if outcome.result is None:
            pair.accounted = True
            self._log_drop(outcome.drop_reason, pair.rgb, outcome.drop_message, outcome.drop_level)
            return
        header, result, publishers = pair.rgb.header, outcome.result, self._outputs
        publishers["fused"].publish(array_to_image(result.fused, "rgb8", header))
        publishers["mask_ir"].publish(array_to_image(result.mask_ir, "mono8", header))
        publishers["mask_vis"].publish(array_to_image(result.mask_vis, "mono8", header))
        if "preliminary" in publishers and result.preliminary is not None:
            publishers["preliminary"].publish(array_to_image(result.preliminary, "rgb8", header))
        age_ms = (self.get_clock().now().nanoseconds - stamp_ns(header)) / 1e6
        stats = core.complete(outcome, age_ms)
        pair.accounted = True
        self._health.on_published(age_ms / 1000.0, stats.latency_ms)
        if not self._first_frame_reported:
            self._first_frame_reported = True
            self.get_logger().info(
                f"first fused frame: {result.fused.shape[1]}x{result.fused.shape[0]} on {stats.device}, "
                f"{result.timings_ms.get('total', 0.0):.0f} ms in the pipeline, {stats.latency_ms:.0f} ms latency"
            )
        publishers["stats"].publish(stats_message(stats, header))

    # -- diagnostics -------------------------------------------------------------------------------
    def diagnostic_status(self) -> DiagnosticStatus:
        """The status for the period since the previous call (closes the period); docs/node.md 'Diagnostics'."""
        core = self._core
        report = self._health.report(self._accounting.snapshot(), core.health())
        device = str(core.pipeline.device)
        values = report.values + [
            ("prior", core.pipeline.prior_name),
            ("device", device),
            ("config generation", str(core.config_generation)),
        ]
        return DiagnosticStatus(
            level=bytes([report.level]),
            name=f"{self.get_name()}: fusion",
            message=report.message,
            hardware_id=self._config.node.hardware_id or device,
            values=[KeyValue(key=k, value=v) for k, v in values],
        )

    def _publish_diagnostics(self) -> None:
        publisher = self._outputs.get("diagnostics")
        if publisher is None or self._core is None:
            return
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [self.diagnostic_status()]
        publisher.publish(msg)

    # -- shutdown ----------------------------------------------------------------------------------
    def destroy_node(self) -> None:
        """Stop the worker (if still running) and destroy the node; safe in any lifecycle state."""
        if getattr(self, "_worker", None) is not None:
            self._stop_input_and_drain()
        self._log_handler.detach()
        super().destroy_node()


def stats_message(stats: FrameStats, header: Any) -> FusionStats:
    """FusionStats of one fused frame (the header is copied, never aliased)."""
    msg = FusionStats(**stats.message_fields())
    msg.header = copy_header(header)
    msg.timings = [StageTiming(stage=k, milliseconds=float(v)) for k, v in stats.timings_ms.items()]
    return msg


def run(
    args: Sequence[str] | None = None,
    *,
    pipeline_factory: Callable[[FuseConfig], FusionPipeline] = FusionPipeline.from_config,
) -> int:
    """Start the node and spin until shutdown; returns the process exit code.

    0 after SIGINT (Ctrl-C, ``ros2 launch``'s shutdown), SIGTERM or the lifecycle ``shutdown`` transition;
    1 when the node cannot start; :data:`EXIT_CUDA_FAULT` after a sticky CUDA error. rclpy's own signal
    handlers are replaced by ones that only request the stop, and from the teardown on SIGINT and SIGTERM
    stay ignored, also after this returns (the process is about to exit): ``ros2 launch`` sends SIGINT to
    the process group and then its own SIGINT, and a KeyboardInterrupt raised inside the worker's join, a
    publisher's destruction or the interpreter's exit would leave a traceback or a death by signal (status
    -2) instead of a clean exit.
    """
    stop = threading.Event()
    received: list[int] = []

    def request_stop(signum: int, frame: Any) -> None:
        received.append(signum)
        stop.set()

    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        signal.signal(sig, request_stop)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        try:
            node = FusionNode(pipeline_factory=pipeline_factory)
        except StartupError:
            return 1  # already logged by the node, naming the parameter or path
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while rclpy.ok() and not (stop.is_set() or node.fatal.is_set() or node.finished.is_set()):
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        for sig in handled:  # the teardown runs to its end whatever else arrives
            signal.signal(sig, signal.SIG_IGN)
        if received:
            node.get_logger().info(f"{signal.Signals(received[0]).name} received")
        if not node.finished.is_set():
            node.trigger_shutdown()
        executor.remove_node(node)
        node.destroy_node()
        return node.exit_code
    finally:
        for sig in handled:  # also on the start-up error path: the process exits next
            signal.signal(sig, signal.SIG_IGN)
        rclpy.try_shutdown()


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of scripts/fusion_node (``ros2 run sgdfuse_ros fusion_node``)."""
    sys.exit(run(sys.argv if args is None else args))


if __name__ == "__main__":
    main()
