"""The node's diagnostics status, computed without rclpy, with diagnostic_updater's meaning.

diagnostic_updater is not installable in this workplace, so this module re-states the semantics of the
tasks a ROS user knows, and the node publishes the result as one ``diagnostic_msgs/DiagnosticStatus``
(like diagnostic_updater's TopicDiagnostic, a composite of a frequency and a timestamp task):

* **FrequencyStatus**: pair rate and fused rate over the period, judged against ``node.expected_rate``:
  WARN "... too low" below ``expected x (1 - node.rate_tolerance)``; rates without a judgement when the
  expected rate is 0.
* **TimeStampStatus**: the age of each published frame = node clock at publish - sensor (RGB) stamp, reported
  as p50 / p99 / max over the period (replay bags with ``--clock`` and ``use_sim_time`` or the age is
  meaningless); no judgement.
* **Input freshness**: a camera silent for ``node.stale_after`` s makes the status ERROR naming it while the
  other camera still delivers, STALE when both are silent (nothing to fuse: e.g. a paused bag).
* **Drops**: ``superseded`` (the camera outruns the fusion; the newest pair wins) is the normal state of a
  node slower than its cameras and is excluded: WARN when the other drops exceed ``node.drop_warn_fraction``
  of the period's pairs. ERROR after :data:`PIPELINE_ERROR_LEVEL_AFTER` pipeline failures in a row.
* A device fallback note and a pairing reset after a time jump are WARN for the period they happen in.

Summaries merge as diagnostic_updater's ``mergeSummary`` does: the highest level wins, and the messages of
all non-OK findings are joined with "; ".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import FuseConfig
from .frame_core import PIPELINE_ERROR_LEVEL_AFTER, FaultState
from .sync import TOPIC_LABELS

__all__ = ["ERROR", "OK", "STALE", "WARN", "FusionHealth", "HealthReport", "HealthSettings"]

#: diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class HealthSettings:
    """The node.* parameters the diagnostics judge by."""

    expected_rate: float = 0.0  #: Hz; 0 = rates reported, not judged
    rate_tolerance: float = 0.1  #: fraction
    stale_after: float = 3.0  #: s
    drop_warn_fraction: float = 0.05  #: fraction of the period's pairs

    @classmethod
    def from_config(cls, config: FuseConfig) -> HealthSettings:
        node = config.node
        return cls(node.expected_rate, node.rate_tolerance, node.stale_after, node.drop_warn_fraction)

    @property
    def minimum_rate(self) -> float:
        return self.expected_rate * (1.0 - self.rate_tolerance)


@dataclass
class HealthReport:
    """One diagnostics status: level (OK/WARN/ERROR/STALE), summary message and key/value pairs."""

    level: int = OK
    message: str = ""
    values: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, level: int, message: str) -> None:
        """diagnostic_updater's mergeSummary: the worse level wins; same-kind messages are joined with '; '."""
        if (level > OK) == (self.level > OK):
            self.message = f"{self.message}; {message}" if self.message else message
        elif level > self.level:
            self.message = message
        self.level = max(self.level, level)


def _ms(values: list[float], q: float) -> str:
    return f"{float(np.percentile(values, q)) * 1000.0:.1f}" if values else "n/a"


class FusionHealth:
    """Collects per-period evidence and turns it into a :class:`HealthReport`; thread-safe.

    ``on_input`` is called for every image message, ``on_published`` for every fused frame; ``report``
    closes the period.
    """

    def __init__(self, settings: HealthSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._last_input: list[float | None] = [None, None]
        self._ages: list[float] = []
        self._latencies: list[float] = []
        self._period_start = self._started
        self._previous: Mapping[str, Any] | None = None

    def on_input(self, topic: int) -> None:
        """A message arrived on ``topic`` (sync.THERMAL or sync.RGB)."""
        now = self._clock()
        with self._lock:
            self._last_input[topic] = now

    def on_published(self, age_s: float, latency_ms: float) -> None:
        """A fused frame went out ``age_s`` after its sensor stamp, ``latency_ms`` after its pair formed."""
        with self._lock:
            self._ages.append(age_s)
            self._latencies.append(latency_ms)

    def restart_period(self, counts: Mapping[str, Any]) -> None:
        """Start the first period (activation) from these counters; silence is measured from now."""
        with self._lock:
            self._previous = counts
            self._period_start = self._started = self._clock()
            self._last_input = [None, None]
            self._ages, self._latencies = [], []

    def report(self, counts: Mapping[str, Any], faults: FaultState) -> HealthReport:
        """The status of the period since the previous report (or start); ``counts`` is PairAccounting.snapshot()."""
        now = self._clock()
        with self._lock:
            ages, self._ages = self._ages, []
            latencies, self._latencies = self._latencies, []
            last_input = list(self._last_input)
            previous = self._previous or {key: 0 for key in counts if key != "dropped_by_reason"}
            previous_drops = (self._previous or {}).get("dropped_by_reason", {})
            self._previous = counts
            elapsed = max(now - self._period_start, 1e-6)
            self._period_start = now
            started = self._started

        def delta(key: str) -> int:
            return int(counts[key]) - int(previous.get(key, 0))

        settings = self.settings
        report = HealthReport()
        pairs, fused = delta("paired"), delta("fused")
        pair_rate, fused_rate = pairs / elapsed, fused / elapsed
        drops = {
            reason: n - previous_drops.get(reason, 0)
            for reason, n in counts["dropped_by_reason"].items()
            if n - previous_drops.get(reason, 0) > 0
        }
        other_drops = {r: n for r, n in drops.items() if r != "superseded"}
        silent = {}
        for label, last in zip(TOPIC_LABELS, last_input, strict=True):
            quiet = now - (started if last is None else last)
            if quiet > settings.stale_after:
                silent[label] = (quiet, last is None)

        # Findings, worst first (the merge keeps every non-OK message).
        if len(silent) == 2:
            never = all(never for _, never in silent.values())
            quiet = min(q for q, _ in silent.values())
            what = "no input yet" if never else "no input"
            report.merge(STALE, f"{what} on thermal and rgb for {quiet:.1f} s")
        elif silent:
            (label, (quiet, never)), other = next(iter(silent.items())), next(iter(set(TOPIC_LABELS) - set(silent)))
            report.merge(
                ERROR, f"no {label} input {'yet ' if never else ''}for {quiet:.1f} s while {other} delivers"
            )
        if faults.consecutive_errors >= PIPELINE_ERROR_LEVEL_AFTER:
            failed = faults.consecutive_errors
            report.merge(ERROR, f"pipeline failed {failed} times in a row (last: {faults.last_error})")
        if settings.expected_rate > 0 and len(silent) < 2:
            minimum = settings.minimum_rate
            if pair_rate < minimum:
                report.merge(WARN, f"pair rate too low: {pair_rate:.1f} Hz < {minimum:.1f} Hz")
            if fused_rate < minimum:
                report.merge(WARN, f"fused rate too low: {fused_rate:.1f} Hz < {minimum:.1f} Hz")
        if other_drops and sum(other_drops.values()) > settings.drop_warn_fraction * pairs:
            listed = ", ".join(f"{r}: {n}" for r, n in sorted(other_drops.items()))
            report.merge(WARN, f"{sum(other_drops.values())} of {pairs} pair(s) dropped ({listed})")
        if not silent and pairs == 0 and delta("received_thermal") and delta("received_rgb"):
            report.merge(WARN, "thermal and rgb arrive but no pair forms (stamps further apart than node.sync_slop?)")
        jumps = delta("time_jumps")
        if jumps:
            report.merge(WARN, f"pairing reset after {jumps} backwards time jump(s) (bag loop, clock reset, /clock)")
        if faults.device_note:
            report.merge(WARN, faults.device_note)
        if report.level == OK:
            report.message = f"fusing at {fused_rate:.1f} Hz" if fused else "waiting for pairs"

        superseded = drops.get("superseded", 0)
        report.values = [
            ("thermal input rate (Hz)", f"{delta('received_thermal') / elapsed:.2f}"),
            ("rgb input rate (Hz)", f"{delta('received_rgb') / elapsed:.2f}"),
            ("pair rate (Hz)", f"{pair_rate:.2f}"),
            ("fused rate (Hz)", f"{fused_rate:.2f}"),
            ("expected rate (Hz)", f"{settings.expected_rate:g}" if settings.expected_rate else "not set"),
            ("minimum acceptable rate (Hz)", f"{settings.minimum_rate:.2f}" if settings.expected_rate else "n/a"),
            ("timestamp age p50 (ms)", _ms(ages, 50)),
            ("timestamp age p99 (ms)", _ms(ages, 99)),
            ("timestamp age max (ms)", _ms(ages, 100)),
            ("latency p50 (ms)", f"{np.percentile(latencies, 50):.1f}" if latencies else "n/a"),
            ("latency max (ms)", f"{max(latencies):.1f}" if latencies else "n/a"),
            ("superseded in period", str(superseded)),
            ("dropped in period (other reasons)", str(sum(other_drops.values()))),
            ("dropped in period by reason", ", ".join(f"{r}={n}" for r, n in sorted(drops.items())) or "none"),
            ("drop rate excluding superseded", f"{sum(other_drops.values()) / pairs:.3f}" if pairs else "n/a"),
            ("dropped total", str(counts["dropped"])),
        ]
        report.values += [(f"dropped {r}", str(n)) for r, n in sorted(counts["dropped_by_reason"].items())]
        for label, last in zip(TOPIC_LABELS, last_input, strict=True):
            ago = f"{now - last:.2f}" if last is not None else "never"
            report.values.append((f"{label} last message (s ago)", ago))
        report.values += [
            ("unpaired thermal in period", str(delta("unpaired_thermal"))),
            ("unpaired rgb in period", str(delta("unpaired_rgb"))),
            ("unpaired thermal", str(counts["unpaired_thermal"])),
            ("unpaired rgb", str(counts["unpaired_rgb"])),
            ("received thermal", str(counts["received_thermal"])),
            ("received rgb", str(counts["received_rgb"])),
            ("paired", str(counts["paired"])),
            ("fused", str(counts["fused"])),
            ("time jumps", str(counts["time_jumps"])),
            ("device note", faults.device_note),
            ("consecutive pipeline errors", str(faults.consecutive_errors)),
            ("period (s)", f"{elapsed:.2f}"),
        ]
        return report
