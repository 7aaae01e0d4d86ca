"""Helpers shared by the benchmarks: memory, percentiles, Image-like messages and a simulated camera.

Imports only the standard library, NumPy and (inside the functions that need them) torch and the package's
ROS-free modules, so a benchmark built on it runs where no ROS package is installed.

* :func:`rss_mb` / :func:`peak_rss_mb`: resident memory of this process, now and at its peak.
* :func:`summary`: p50 / p99 / max / mean of a list of numbers, rounded, as one dict.
* :class:`ImageMsg`: the fields of ``sensor_msgs/Image`` (what :mod:`sgdfuse_ros.messages` decodes), without
  rclpy or rosbags; :func:`image_msg` builds one from an array.
* :func:`run_camera`: a camera pair every 1/rate s into a one-slot mailbox where the newest pair wins (the
  node's synchronizer callback does the same), and a worker that runs a :class:`~sgdfuse_ros.frame_core.FrameCore`
  on what it takes; returns what happened to every pair.
"""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sgdfuse_ros.frame_core import FrameCore, FrameStats

__all__ = ["CameraRun", "ImageMsg", "image_msg", "peak_rss_mb", "rss_mb", "run_camera", "summary"]


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


def peak_rss_mb() -> float:
    """Largest resident set size this process has had, in MB (getrusage: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def summary(values: Sequence[float], digits: int = 2) -> dict[str, float | None]:
    """{"p50", "p99", "max", "mean"} of ``values``, rounded (all None when there are none)."""
    if not values:
        return {"p50": None, "p99": None, "max": None, "mean": None}
    p50, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 99])
    return {
        "p50": round(float(p50), digits),
        "p99": round(float(p99), digits),
        "max": round(float(max(values)), digits),
        "mean": round(float(np.mean(values)), digits),
    }


@dataclass
class Stamp:
    """builtin_interfaces/Time."""

    sec: int = 0
    nanosec: int = 0


@dataclass
class Header:
    """std_msgs/Header."""

    stamp: Stamp = field(default_factory=Stamp)
    frame_id: str = ""


@dataclass
class ImageMsg:
    """The fields of sensor_msgs/Image; :mod:`sgdfuse_ros.messages` decodes it like an rclpy or rosbags one."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def image_msg(image: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> ImageMsg:
    """An :class:`ImageMsg` holding ``image`` (uint8 / uint16 / float32, [H, W] or [H, W, C], little-endian)."""
    image = np.ascontiguousarray(image)
    stamp = Stamp(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    return ImageMsg(
        header=Header(stamp=stamp, frame_id=frame_id),
        height=int(image.shape[0]),
        width=int(image.shape[1]),
        encoding=encoding,
        is_bigendian=0,
        step=int(image.strides[0]),
        data=image.tobytes(),  # a driver's message owns its bytes: one copy per frame, as on a robot
    )


@dataclass
class CameraRun:
    """What a :func:`run_camera` run did."""

    offered: int = 0  #: pairs the camera produced
    superseded: int = 0  #: pairs replaced in the mailbox by a newer one before the worker took them
    elapsed_s: float = 0.0  #: first pair offered -> last pair done
    stats: list[FrameStats] = field(default_factory=list)  #: FrameStats of every fused pair, in order
    #: worker time per fused pair (process + complete; pipelined: the call that finished it, which also began the next)
    frame_ms: list[float] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)  #: other drops by reason (decode errors, OOM ...)

    @property
    def fused(self) -> int:
        return len(self.stats)


def run_camera(
    core: FrameCore,
    make_pair: Callable[[int], tuple[Any, Any]],
    rate: float,
    *,
    frames: int | None = None,
    seconds: float | None = None,
) -> CameraRun:
    """Feed ``core`` a pair every 1/``rate`` s (``make_pair(stamp_ns)`` -> (thermal msg, RGB msg)), newest wins.

    The camera runs in a thread and never waits for the worker; the worker (this thread) takes the newest pair,
    runs it through ``core.submit`` (``core.process``, or pipelined with ``compute.pipeline_prior``, as the node
    does) and ``core.complete`` and counts. Stops after ``frames`` fused pairs or ``seconds``,
    whichever comes first (at least one must be given). Accounting goes through ``core.accounting`` exactly as
    in the node: received, paired, superseded, fused.
    """
    if frames is None and seconds is None:
        raise ValueError("run_camera needs frames or seconds")
    from sgdfuse_ros.sync import RGB, THERMAL

    accounting = core.accounting
    ready = threading.Condition()
    slot: list[tuple[Any, Any, float]] = []
    stop = threading.Event()
    run = CameraRun()
    period_ns = int(round(1e9 / rate))

    def camera() -> None:
        start = time.monotonic()
        k = 0
        while not stop.is_set():
            k += 1
            stamp = k * period_ns
            thermal, rgb = make_pair(stamp)
            accounting.on_message(THERMAL, stamp)
            accounting.on_message(RGB, stamp)
            accounting.on_pair(stamp, stamp)
            with ready:
                if slot:
                    run.superseded += 1
                    core.drop("superseded")
                slot[:] = [(thermal, rgb, time.monotonic())]
                run.offered += 1
                ready.notify()
            stop.wait(max(0.0, start + k / rate - time.monotonic()))

    thread = threading.Thread(target=camera, name="camera", daemon=True)
    begin = time.monotonic()
    deadline = begin + seconds if seconds is not None else float("inf")
    thread.start()
    try:
        while time.monotonic() < deadline and (frames is None or run.fused < frames):
            with ready:
                if not slot and not core.in_flight:
                    ready.wait(0.2)
                item = slot.pop() if slot else None
            if item is None and not core.in_flight:
                continue
            started = time.perf_counter()
            # As the node's worker: with a pair in flight (compute.pipeline_prior), finish it if nothing is newer.
            done = core.flush() if item is None else core.submit(*item)
            for _, outcome in done:
                if outcome.result is None:
                    run.dropped[outcome.drop_reason] = run.dropped.get(outcome.drop_reason, 0) + 1
                    continue
                run.stats.append(core.complete(outcome))
                run.frame_ms.append((time.perf_counter() - started) * 1000.0)
        for _, outcome in core.flush():  # a pair still in flight is finished, not counted
            if outcome.result is not None:
                core.complete(outcome)
    finally:
        stop.set()
        thread.join()
    run.elapsed_s = time.monotonic() - begin
    return run
