"""Pairing of the thermal and RGB streams by header stamp, and its accounting, without rclpy.

Shared by the live node (``sgdfuse_ros.ros.node``, which pairs with the real message_filters and
counts with :class:`PairAccounting`) and the offline bag tools (``sgdfuse_ros.bags``, which pair
with :class:`ApproximateSync` and report both :class:`ApproximateSync`'s exact accounting and the
node's :class:`PairAccounting` counters), so that live and offline counts follow one rule.

Topic index 0 is thermal, 1 is RGB throughout; stamps are integer nanoseconds.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RGB", "THERMAL", "TOPIC_LABELS", "ApproximateSync", "PairAccounting", "TimeJumpDetector", "stamp_ns"]

THERMAL, RGB = 0, 1
TOPIC_LABELS = ("thermal", "rgb")


def stamp_ns(header: Any) -> int:
    """Header (rosbags or rclpy) -> stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class PairAccounting:
    """Thread-safe counters of received, paired, unpaired, fused and dropped messages / pairs.

    Unpaired rule (mirrors message_filters.ApproximateTimeSynchronizer, which keeps unmatched
    messages per topic keyed by stamp, at most ``queue_size`` of them, and pairs two messages only
    when their stamps differ by less than ``slop``): a message that has not been part of a pair is
    *pending*. It becomes *unpaired* (counted once, for its topic) when

    1. a message on the other topic arrives with a stamp later than its stamp + slop: with stamps
       increasing per topic, no later partner can be within the slop any more; or
    2. more than ``queue_size`` messages of its topic are pending: the synchronizer evicts the
       oldest stamp of that topic, so the oldest pending one can never pair; or
    3. another message of its topic arrives with the same stamp (the synchronizer's queue is keyed
       by stamp, so the newer one replaces it).

    4. the pairing is reset after a backwards time jump (:meth:`on_time_jump`) or the node is deactivated
       (:meth:`flush_pending`): every pending message of both topics is unpaired.

    Stamps going backwards within the slop can make a message counted as unpaired pair later; the
    counters stay as they are then (documented limitation). Messages still pending are not counted.
    """

    def __init__(self, slop_s: float, queue_size: int) -> None:
        self._slop_ns = int(round(slop_s * 1e9))
        self._queue_size = int(queue_size)
        self._lock = threading.Lock()
        self._pending: tuple[dict[int, None], dict[int, None]] = ({}, {})
        self.received = [0, 0]
        self.unpaired = [0, 0]
        self.paired = 0
        self.fused = 0
        self.time_jumps = 0
        self.dropped: Counter[str] = Counter()

    def on_message(self, topic: int, stamp_ns: int) -> None:
        """A message arrived on ``topic`` (THERMAL or RGB); called before the synchronizer sees it."""
        with self._lock:
            self.received[topic] += 1
            other = 1 - topic
            stale = [s for s in self._pending[other] if stamp_ns > s + self._slop_ns]
            for s in stale:
                del self._pending[other][s]
            self.unpaired[other] += len(stale)
            mine = self._pending[topic]
            if stamp_ns in mine:
                self.unpaired[topic] += 1
            mine[stamp_ns] = None
            while len(mine) > self._queue_size:
                del mine[min(mine)]
                self.unpaired[topic] += 1

    def on_pair(self, thermal_ns: int, rgb_ns: int) -> None:
        """The synchronizer paired these two stamps."""
        with self._lock:
            self.paired += 1
            self._pending[THERMAL].pop(thermal_ns, None)
            self._pending[RGB].pop(rgb_ns, None)

    def on_time_jump(self) -> None:
        """The pairing was reset after a backwards time jump: whatever was pending can never pair."""
        with self._lock:
            self.time_jumps += 1
        self.flush_pending()

    def flush_pending(self) -> None:
        """The synchronizer was replaced (time jump, deactivation): every pending message counts as unpaired."""
        with self._lock:
            for topic in (THERMAL, RGB):
                self.unpaired[topic] += len(self._pending[topic])
                self._pending[topic].clear()

    def on_fused(self) -> None:
        with self._lock:
            self.fused += 1

    def on_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def pending(self) -> tuple[int, int]:
        """(thermal, RGB) messages neither paired nor counted unpaired yet."""
        with self._lock:
            return len(self._pending[THERMAL]), len(self._pending[RGB])

    def snapshot(self) -> dict[str, Any]:
        """Cumulative counters: received/unpaired per topic, paired, fused, time jumps, dropped (total, by reason)."""
        with self._lock:
            return {
                "received_thermal": self.received[THERMAL],
                "received_rgb": self.received[RGB],
                "paired": self.paired,
                "unpaired_thermal": self.unpaired[THERMAL],
                "unpaired_rgb": self.unpaired[RGB],
                "fused": self.fused,
                "time_jumps": self.time_jumps,
                "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped),
            }


class TimeJumpDetector:
    """Detects a backwards jump of either stream's stamps by more than ``slop`` (bag loop, clock reset, a
    ``/clock`` jump under use_sim_time).

    After such a jump the synchronizer's queues hold later, unmatched stamps: every new (older) message is
    evicted on arrival and no pair forms until the stamps pass the stale ones. The remedy is a reset of the
    pairing; this class only says when. Jitter within the slop (out-of-order delivery) is not a jump.
    """

    def __init__(self, slop_s: float) -> None:
        self._slop_ns = int(slop_s * 1_000_000_000)
        self._last: list[int | None] = [None, None]
        self.jumps = 0

    def check(self, topic: int, stamp_ns: int) -> bool:
        """Record ``stamp_ns`` on ``topic`` (THERMAL or RGB); True when it jumped backwards beyond the slop.

        On a jump the other topic's last stamp is forgotten too (it belongs to the old time line).
        """
        last = self._last[topic]
        jumped = last is not None and stamp_ns < last - self._slop_ns
        if jumped:
            self.jumps += 1
            self._last = [None, None]
        self._last[topic] = stamp_ns
        return jumped


@dataclass
class _TopicCount:
    received: int = 0
    paired: int = 0
    unpaired: dict[str, int] = field(default_factory=dict)  # reason -> count
    backwards: int = 0
    repeated: int = 0
    last_stamp: int | None = None
    seen: set = field(default_factory=set)

    def unpaired_total(self) -> int:
        return sum(self.unpaired.values())


class ApproximateSync:
    """message_filters.ApproximateTimeSynchronizer.add for two inputs, re-stated with accounting.

    Index 0 is thermal, 1 is RGB. Each input keeps a dict {stamp ns: item}. On ``add`` (stamp t):

    1. store the item under t (a repeated stamp overwrites the queued item: that one is lost);
    2. while the queue holds more than ``queue_size`` items, delete the one with the smallest stamp
       (possibly the new one, when t is older than everything in a full queue);
    3. candidates = the other queue's stamps s with |s - t| <= slop, sorted by |s - t| (a stable
       sort: ties keep queue insertion order); none -> no pair;
    4. the first candidate with |s - t| < slop (strictly) while the new item and the candidate are
       both still queued forms the pair; both leave their queues. Nothing else is ever removed.

    ``slop`` becomes integer nanoseconds as rclpy's Duration(seconds=slop) does (truncation).
    slop 0 means identical stamps (the node then uses message_filters.TimeSynchronizer): a pair
    forms when the other queue holds the same stamp.

    Accounting (message_filters itself counts nothing): per input received, paired and unpaired by
    reason (``duplicate_stamp`` overwritten, ``queue_overflow`` evicted, ``left_in_queue`` still
    queued at :meth:`finish`, ``time_jump`` dropped by a reset), and stamps that went backwards or repeated.
    These are exact: received = paired + unpaired after :meth:`finish`.

    ``reset_on_time_jump``: when a stamp jumps backwards by more than the slop on either input
    (:class:`TimeJumpDetector`), both queues are emptied before the message is queued, as the node swaps in
    a fresh message_filters synchronizer; ``time_jumps`` counts the resets. Off, the synchronizer keeps its
    stale queues, as message_filters does.
    """

    NAMES = TOPIC_LABELS

    def __init__(self, queue_size: int, slop: float, reset_on_time_jump: bool = False) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = int(queue_size)
        self.slop_ns = int(slop * 1_000_000_000)
        self.queues: tuple[dict[int, Any], dict[int, Any]] = ({}, {})
        self.counts = (_TopicCount(), _TopicCount())
        self.jump_detector = TimeJumpDetector(slop) if reset_on_time_jump else None

    def add(self, index: int, stamp: int, item: Any) -> tuple[Any, Any] | None:
        """Queue ``item`` (stamp in ns) on input ``index``; return (thermal item, RGB item) when a pair forms."""
        count = self.counts[index]
        count.received += 1
        if count.last_stamp is not None and stamp < count.last_stamp:
            count.backwards += 1
        if stamp in count.seen:
            count.repeated += 1
        count.seen.add(stamp)
        count.last_stamp = stamp
        if self.jump_detector is not None and self.jump_detector.check(index, stamp):
            self.reset("time_jump")

        queue, other = self.queues[index], self.queues[1 - index]
        if stamp in queue:
            self._lose(index, "duplicate_stamp")
        queue[stamp] = item
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self._lose(index, "queue_overflow")
        if self.slop_ns == 0:  # TimeSynchronizer: identical stamps only
            if stamp in queue and stamp in other:
                return self._emit(index, stamp, stamp)
            return None
        candidates = [(s, abs(s - stamp)) for s in other if abs(s - stamp) <= self.slop_ns]
        candidates.sort(key=lambda c: c[1])
        for other_stamp, delta in candidates:
            if delta < self.slop_ns and stamp in queue and other_stamp in other:
                return self._emit(index, stamp, other_stamp)
        return None

    def _emit(self, index: int, stamp: int, other_stamp: int) -> tuple[Any, Any]:
        mine, theirs = self.queues[index].pop(stamp), self.queues[1 - index].pop(other_stamp)
        self.counts[0].paired += 1
        self.counts[1].paired += 1
        return (mine, theirs) if index == 0 else (theirs, mine)

    def _lose(self, index: int, reason: str) -> None:
        unpaired = self.counts[index].unpaired
        unpaired[reason] = unpaired.get(reason, 0) + 1

    def reset(self, reason: str) -> None:
        """Empty both queues; each queued item counts as unpaired for ``reason``."""
        for index, queue in enumerate(self.queues):
            for _ in range(len(queue)):
                self._lose(index, reason)
            queue.clear()

    def finish(self) -> None:
        """End of input: whatever is still queued will never pair."""
        self.reset("left_in_queue")

    @property
    def time_jumps(self) -> int:
        return self.jump_detector.jumps if self.jump_detector is not None else 0

    @property
    def pairs(self) -> int:
        return self.counts[0].paired

    def accounting(self) -> dict:
        """JSON-ready counters; received = paired + unpaired per input once :meth:`finish` ran."""
        out: dict[str, Any] = {
            "pairs": self.pairs,
            "received": {},
            "unpaired": {},
            "unpaired_by_reason": {},
            "stamps_backwards": {},
            "stamps_repeated": {},
            "time_jumps": self.time_jumps,
        }
        for name, count in zip(self.NAMES, self.counts, strict=True):
            out["received"][name] = count.received
            out["unpaired"][name] = count.unpaired_total()
            out["unpaired_by_reason"][name] = dict(sorted(count.unpaired.items()))
            out["stamps_backwards"][name] = count.backwards
            out["stamps_repeated"][name] = count.repeated
        return out
