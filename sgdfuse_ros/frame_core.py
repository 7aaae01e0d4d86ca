"""One frame-processing core for the live node and the offline replay, without rclpy.

A synchronized (thermal, RGB) message pair goes: decode (:mod:`sgdfuse_ros.messages`) -> FusionPipeline
-> error policy -> accounting (:class:`sgdfuse_ros.sync.PairAccounting`) -> the content of one
``sgdfuse_ros/msg/FusionStats``. ``sgdfuse_ros.ros.node`` publishes what this core returns and
``sgdfuse_ros.bags.replay`` writes it to a bag, so live and offline cannot drift: same decoding, same
drop reasons, same counters, same stats.

Error policy (docs/node.md "Faults"):

* unusable input (:class:`~sgdfuse_ros.imaging.InvalidImageError`): the pair is dropped with the error's
  reason key (``thermal_encoding``, ``rgb_too_large`` ...), level warning;
* CUDA out of memory: dropped as ``cuda_oom``, the allocator cache is emptied and the next frame waits a
  back-off (0.25 s doubling to 4 s) before it runs on the GPU again. Only with ``compute.oom_cpu_fallback``
  does the pipeline move to the CPU, after :data:`OOM_CPU_FALLBACK_AFTER` OOMs in a row, with the CPU
  thread count set;
* any other exception: dropped as ``pipeline_error``. ``compute.cuda_error_exit_after`` such errors in a row
  whose text contains "CUDA error" (a sticky device fault: every later kernel launch fails too) raise
  :class:`FatalDeviceError`; the node exits with :data:`EXIT_CUDA_FAULT` so a supervisor can restart it.

Configuration is a snapshot: :meth:`FrameCore.reconfigure` is called by the thread that runs
:meth:`FrameCore.process`, between frames, so one frame never mixes old and new values; every accepted
change increments :attr:`FrameCore.config_generation`, which each FusionStats carries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .config import FuseConfig
from .imaging import InvalidImageError
from .messages import rgb_to_array, thermal_to_array
from .pipeline import BegunFrame, FusionPipeline, FusionResult
from .sync import PairAccounting, stamp_ns

__all__ = [
    "EXIT_CUDA_FAULT",
    "OOM_CPU_FALLBACK_AFTER",
    "FatalDeviceError",
    "FrameCore",
    "FrameOutcome",
    "FrameStats",
    "cpu_threads",
]

#: Process exit status of the node after a sticky CUDA error (documented in docs/node.md; launch's respawn
#: and supervisors key on it).
EXIT_CUDA_FAULT = 3
#: Consecutive CUDA out-of-memory errors after which the pipeline moves to the CPU, when compute.oom_cpu_fallback.
OOM_CPU_FALLBACK_AFTER = 3
#: Back-off before the next GPU attempt after an OOM: first value, doubling per consecutive OOM, capped.
OOM_BACKOFF_S = (0.25, 4.0)
#: Consecutive pipeline failures from which the health is ERROR (diagnostics).
PIPELINE_ERROR_LEVEL_AFTER = 3
_LOG = logging.getLogger(__name__)
STATS_COUNTERS = ("received_thermal", "received_rgb", "paired", "unpaired_thermal", "unpaired_rgb", "fused")


class FatalDeviceError(RuntimeError):
    """The compute device failed in a way retries cannot fix (repeated "CUDA error"); the process should exit."""


def cpu_threads(config: FuseConfig) -> int:
    """Torch CPU threads for ``config``: compute.torch_threads, or every core torch sees when it is 0."""
    return config.compute.torch_threads or torch.get_num_threads()


@dataclass(frozen=True)
class FrameStats:
    """Content of one ``sgdfuse_ros/msg/FusionStats`` apart from its header; counters are cumulative."""

    prior: str
    device: str
    timings_ms: Mapping[str, float]
    latency_ms: float  #: pair formed -> outputs ready
    stamp_age_ms: float  #: clock at publish - RGB stamp (NaN where no clock applies, e.g. offline replay)
    stamp_difference_ms: float  #: thermal stamp - RGB stamp
    counters: Mapping[str, Any]  #: PairAccounting.snapshot()
    config_generation: int

    def message_fields(self) -> dict[str, Any]:
        """{FusionStats field: value} for every field but ``header`` and ``timings``."""
        reasons = sorted(self.counters["dropped_by_reason"])
        fields: dict[str, Any] = {key: int(self.counters[key]) for key in STATS_COUNTERS}
        fields.update(
            prior=self.prior,
            device=self.device,
            latency_ms=float(self.latency_ms),
            stamp_age_ms=float(self.stamp_age_ms),
            stamp_difference_ms=float(self.stamp_difference_ms),
            dropped=int(self.counters["dropped"]),
            dropped_reasons=reasons,
            dropped_counts=[int(self.counters["dropped_by_reason"][r]) for r in reasons],
            time_jumps=int(self.counters["time_jumps"]),
            config_generation=int(self.config_generation),
        )
        return fields


@dataclass
class FrameOutcome:
    """What became of one pair: fused (``result`` set) or dropped (``drop_reason`` set)."""

    thermal_msg: Any
    rgb_msg: Any
    received: float  #: monotonic seconds when the pair formed
    result: FusionResult | None = None
    drop_reason: str = ""
    drop_message: str = ""
    drop_level: str = "warning"  #: "info", "warning" or "error": how loudly the adapter logs the drop
    #: Decoded inputs (None when decoding failed), for offline metrics.
    inputs: tuple[np.ndarray, str, np.ndarray, str] | None = None
    config_generation: int = 0
    #: Between :meth:`FrameCore.begin` and :meth:`FrameCore.finish`: the pipeline's half-done frame.
    begun: BegunFrame | None = None

    @property
    def fused(self) -> bool:
        return self.result is not None

    @property
    def stamp_difference_ms(self) -> float:
        return (stamp_ns(self.thermal_msg.header) - stamp_ns(self.rgb_msg.header)) / 1e6


@dataclass
class FaultState:
    """The error policy's memory (read by diagnostics)."""

    consecutive_oom: int = 0
    consecutive_errors: int = 0
    consecutive_cuda_errors: int = 0
    last_error: str = ""
    device_note: str = ""
    backoff_until: float = 0.0


class FrameCore:
    """Decode, fuse and account for synchronized pairs; one instance per node or replay.

    Args:
        pipeline: the FusionPipeline (its ``config`` is replaced by :meth:`reconfigure`).
        accounting: the counters shared with the pairing side (received / paired / unpaired are counted
            there; this core counts fused and dropped).
        clock: monotonic seconds (tests inject one).
        keep_preliminary: also bring Stage I's F1 back to the host (``FusionResult.preliminary``), for an
            adapter that publishes or writes it (the node with ``node.publish_preliminary``); off, it stays None.
    Thread safety: :meth:`process`, :meth:`complete` and :meth:`reconfigure` belong to one thread (the
    node's worker); :meth:`drop` and :meth:`health` may be called from any thread.
    """

    def __init__(
        self,
        pipeline: FusionPipeline,
        accounting: PairAccounting,
        *,
        clock: Callable[[], float] = time.monotonic,
        keep_preliminary: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self._in_flight: tuple[Any, FrameOutcome] | None = None
        self.accounting = accounting
        self.keep_preliminary = bool(keep_preliminary)
        self.config_generation = 0
        self._clock = clock
        self._faults = FaultState(device_note=pipeline.device_note)

    @property
    def config(self) -> FuseConfig:
        """The configuration in effect for the next frame."""
        return self.pipeline.config

    # -- configuration -----------------------------------------------------------------------------
    def reconfigure(self, new: FuseConfig, changed: set[str] | frozenset[str]) -> int:
        """Apply run-time parameters between frames (:meth:`FusionPipeline.reconfigure`); returns the new
        config generation."""
        self.pipeline.reconfigure(new, changed)
        self.config_generation += 1
        return self.config_generation

    # -- frames ------------------------------------------------------------------------------------
    def backoff_remaining(self) -> float:
        """Seconds to wait before the next frame may use the GPU again (0 when none)."""
        return max(0.0, self._faults.backoff_until - self._clock())

    def process(self, thermal_msg: Any, rgb_msg: Any, received: float) -> FrameOutcome:
        """Decode and fuse one pair (Image or CompressedImage messages, rclpy or rosbags): :meth:`begin`, then
        :meth:`finish`.

        A dropped pair is counted here; a fused one is counted by :meth:`complete`, once its outputs are out.
        Raises:
            FatalDeviceError: the sticky-CUDA-error rule fired (this pair is counted as dropped first).
        """
        return self.finish(self.begin(thermal_msg, rgb_msg, received))

    def begin(self, thermal_msg: Any, rgb_msg: Any, received: float) -> FrameOutcome:
        """Decode the pair and run the first half of the pipeline (:meth:`FusionPipeline.begin`: preprocess and
        prior). A dropped pair comes back counted, with ``drop_reason`` set; otherwise :meth:`finish` must follow,
        for the pairs in the order they were begun. Raises FatalDeviceError as :meth:`process` does."""
        outcome = FrameOutcome(thermal_msg, rgb_msg, received, config_generation=self.config_generation)
        limit = self.pipeline.config.node.max_image_bytes

        def first_half() -> None:
            thermal, thermal_encoding = thermal_to_array(thermal_msg, limit)
            rgb, rgb_encoding = rgb_to_array(rgb_msg, limit)
            outcome.inputs = (thermal, thermal_encoding, rgb, rgb_encoding)
            outcome.begun = self.pipeline.begin(thermal, rgb, thermal_encoding, rgb_encoding)

        return self._guarded(outcome, first_half)

    def finish(self, outcome: FrameOutcome) -> FrameOutcome:
        """Run the second half (:meth:`FusionPipeline.finish`) of a begun pair; a dropped one passes through."""
        begun, outcome.begun = outcome.begun, None
        if begun is None:
            return outcome

        def second_half() -> None:
            outcome.result = self.pipeline.finish(begun, keep_preliminary=self.keep_preliminary)

        return self._guarded(outcome, second_half)

    # -- one pair in flight (compute.pipeline_prior) ---------------------------------------------------
    @property
    def pipelined(self) -> bool:
        """Whether :meth:`submit` keeps a begun pair in flight (``compute.pipeline_prior``).

        On CUDA the prior then runs on its own stream beside Stage I/II of the previous pair; on the CPU only the
        order of the work changes (nothing runs at the same time), which keeps the schedule testable here.
        """
        return self.pipeline.config.compute.pipeline_prior

    @property
    def in_flight(self) -> bool:
        """Whether a begun pair waits for :meth:`submit` or :meth:`flush` to finish it."""
        return self._in_flight is not None

    def submit(
        self, thermal_msg: Any, rgb_msg: Any, received: float, tag: Any = None
    ) -> list[tuple[Any, FrameOutcome]]:
        """Begin this pair; return the pairs completed meanwhile, oldest first, as (tag, outcome).

        Serial: this pair, finished. Pipelined: the pair in flight is finished after this pair's prior has been
        queued (so the GPU computes both at once), and this pair stays in flight unless it was dropped already.
        Raises FatalDeviceError as :meth:`process`, after counting every pair it held as dropped.
        """
        try:
            outcome = self.begin(thermal_msg, rgb_msg, received)
        except FatalDeviceError:
            self._abandon_in_flight()
            raise
        if not self.pipelined:
            return [(tag, self.finish(outcome))]
        try:
            done = self.flush()
        except FatalDeviceError:
            self._in_flight = (tag, outcome)
            self._abandon_in_flight()
            raise
        if outcome.begun is None:
            done.append((tag, outcome))
        else:
            self._in_flight = (tag, outcome)
        return done

    def flush(self) -> list[tuple[Any, FrameOutcome]]:
        """Finish the pair in flight, if any: [] or [(tag, outcome)]."""
        if self._in_flight is None:
            return []
        tag, outcome = self._in_flight
        self._in_flight = None
        return [(tag, self.finish(outcome))]

    def _abandon_in_flight(self) -> None:
        """Count a begun pair that will never be finished (the process is about to exit) as dropped."""
        if self._in_flight is not None and self._in_flight[1].begun is not None:
            self._in_flight[1].begun = None
            self.accounting.on_dropped("pipeline_error")
        self._in_flight = None

    def complete(self, outcome: FrameOutcome, stamp_age_ms: float = math.nan) -> FrameStats:
        """Count a fused pair whose outputs were delivered; returns its stats."""
        assert outcome.result is not None, "complete() is for fused pairs"
        self.accounting.on_fused()
        return FrameStats(
            prior=self.pipeline.prior_name,
            device=str(self.pipeline.device),
            timings_ms=dict(outcome.result.timings_ms),
            latency_ms=(self._clock() - outcome.received) * 1000.0,
            stamp_age_ms=stamp_age_ms,
            stamp_difference_ms=outcome.stamp_difference_ms,
            counters=self.accounting.snapshot(),
            config_generation=outcome.config_generation,
        )

    def drop(self, reason: str) -> None:
        """Count a pair dropped outside :meth:`process` (``superseded``, a failed publish ...)."""
        self.accounting.on_dropped(reason)

    def health(self) -> FaultState:
        """A copy of the fault state."""
        return replace(self._faults)

    # -- error policy ------------------------------------------------------------------------------
    def _guarded(self, outcome: FrameOutcome, work: Callable[[], None]) -> FrameOutcome:
        """Run one half of a frame under the error policy."""
        try:
            work()
        except InvalidImageError as error:
            return self._dropped(outcome, error.reason, str(error), "warning")
        except torch.cuda.OutOfMemoryError as error:
            return self._out_of_memory(outcome, error)
        except Exception as error:  # noqa: BLE001 - any pipeline fault drops the frame; the caller keeps serving
            return self._failed(outcome, error)
        if outcome.result is not None:
            faults = self._faults
            faults.consecutive_oom = faults.consecutive_errors = faults.consecutive_cuda_errors = 0
        return outcome

    def _dropped(self, outcome: FrameOutcome, reason: str, message: str, level: str) -> FrameOutcome:
        outcome.result = outcome.begun = None
        outcome.drop_reason, outcome.drop_message, outcome.drop_level = reason, message, level
        self.accounting.on_dropped(reason)
        return outcome

    def _out_of_memory(self, outcome: FrameOutcome, error: BaseException) -> FrameOutcome:
        # Best effort: release the cached blocks the failed frame left; the frame is dropped either way.
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        faults = self._faults
        faults.consecutive_oom += 1
        count = faults.consecutive_oom
        first, cap = OOM_BACKOFF_S
        backoff = min(cap, first * 2 ** (count - 1))
        faults.backoff_until = self._clock() + backoff
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else "out of memory"
        device = self.pipeline.device
        message = f"CUDA out of memory on {device} ({count} in a row; next try in {backoff:g} s): {first_line}"
        self._dropped(outcome, "cuda_oom", message, "error")
        config = self.pipeline.config
        if config.compute.oom_cpu_fallback and count >= OOM_CPU_FALLBACK_AFTER and device.type == "cuda":
            threads = cpu_threads(config)
            torch.set_num_threads(threads)
            self.pipeline.to("cpu")
            faults.device_note = (
                f"moved from {device} to the CPU ({threads} threads) after {count} consecutive CUDA out-of-memory "
                "errors (compute.oom_cpu_fallback)"
            )
            faults.consecutive_oom = 0
            faults.backoff_until = 0.0
            _LOG.error(faults.device_note)  # once; the node forwards library logging to its ROS logger
        return outcome

    def _failed(self, outcome: FrameOutcome, error: BaseException) -> FrameOutcome:
        faults = self._faults
        text = f"{type(error).__name__}: {error}"
        faults.consecutive_errors += 1
        faults.consecutive_oom = 0
        faults.last_error = text
        faults.consecutive_cuda_errors = faults.consecutive_cuda_errors + 1 if "CUDA error" in str(error) else 0
        self._dropped(outcome, "pipeline_error", text, "error")
        limit = self.pipeline.config.compute.cuda_error_exit_after
        if limit and faults.consecutive_cuda_errors >= limit:
            raise FatalDeviceError(
                f"{faults.consecutive_cuda_errors} consecutive CUDA errors on {self.pipeline.device} "
                f"(compute.cuda_error_exit_after = {limit}); last: {text}"
            )
        return outcome
