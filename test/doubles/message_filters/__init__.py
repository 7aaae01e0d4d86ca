"""TEST DOUBLE — not the real package; written from the public documentation/source of message_filters for CI only.

message_filters (ros2/message_filters, src/message_filters/__init__.py) is not on PyPI, so this
stand-in lets the node and its tests run here. It reproduces the behaviour of the real Python
implementation that the node relies on, not its code:

* ``SimpleFilter.registerCallback(cb, *args)`` stores callbacks in registration order and
  ``signalMessage(*msg)`` calls ``cb(*(msg + args))`` for each of them.
* ``Subscriber(node, msg_type, topic, **kwargs)`` calls
  ``node.create_subscription(msg_type, topic, self.callback, **kwargs)`` with
  ``qos_profile`` defaulting to 10 (reliable, depth 10), so ``qos_profile``,
  ``qos_overriding_options`` and ``callback_group`` reach rclpy unchanged, as in the real one.
* ``ApproximateTimeSynchronizer(fs, queue_size, slop, allow_headerless=False)`` keeps one dict per
  input keyed by the header stamp in nanoseconds (a duplicate stamp replaces the earlier message),
  evicts the oldest stamp when a queue holds more than ``queue_size``, and on each arrival looks
  in the other queues for stamps within ``slop`` of the new one (closest first; a stable sort on the
  distance, so ties keep queue insertion order); a combination whose spread is strictly below
  ``slop`` is emitted (one message per input, in ``fs`` order) and removed from the queues.
  Unmatched messages yield nothing and are not reported. The user callback runs while the
  synchronizer's lock is held. Headerless messages are ignored unless ``allow_headerless``.
  ``slop`` becomes integer nanoseconds as the real code's ``rclpy.duration.Duration(seconds=slop)``
  does: ``int(slop * 10**9)``, truncating.

Only what sgdfuse_ros uses is provided (no Cache, Chain, TimeSequencer).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

__all__ = ["ApproximateTimeSynchronizer", "SimpleFilter", "Subscriber", "TimeSynchronizer"]


class SimpleFilter:
    """Base of all filters: a list of output callbacks."""

    def __init__(self) -> None:
        self.callbacks: dict[int, tuple[Any, tuple]] = {}

    def registerCallback(self, cb: Any, *args: Any) -> int:  # noqa: N802 - real API name
        connection = len(self.callbacks)
        self.callbacks[connection] = (cb, args)
        return connection

    def unregisterCallback(self, connection: int) -> None:  # noqa: N802 - real API name
        self.callbacks.pop(connection, None)

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802 - real API name
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class Subscriber(SimpleFilter):
    """Source filter wrapping ``node.create_subscription``; extra keyword arguments go to rclpy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.node = args[0]
        self.topic = args[2]
        kwargs.setdefault("qos_profile", 10)
        self.sub = self.node.create_subscription(*args[1:], self.callback, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)

    def getTopic(self) -> str:  # noqa: N802 - real API name
        return self.topic

    def __getattr__(self, key: str) -> Any:
        return getattr(self.sub, key)


def _stamp_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    if hasattr(stamp, "nanoseconds"):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class TimeSynchronizer(SimpleFilter):
    """Emits one message per input when all inputs have a message with exactly the same stamp."""

    def __init__(self, fs: list, queue_size: int) -> None:
        super().__init__()
        self.queue_size = queue_size
        self.lock = threading.Lock()
        self.connectInput(fs)

    def connectInput(self, fs: list) -> None:  # noqa: N802 - real API name
        self.queues: list[dict[int, Any]] = [{} for _ in fs]
        self.input_connections = [
            f.registerCallback(self.add, q, i) for i, (f, q) in enumerate(zip(fs, self.queues, strict=True))
        ]

    def _store(self, queue: dict[int, Any], stamp: int, msg: Any) -> None:
        queue[stamp] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]

    def add(self, msg: Any, my_queue: dict[int, Any], my_queue_index: int | None = None) -> None:
        stamp = _stamp_ns(msg)
        if stamp is None:
            return
        with self.lock:
            self._store(my_queue, stamp, msg)
            common = set.intersection(*(set(q) for q in self.queues))
            for t in sorted(common):
                msgs = [q[t] for q in self.queues]
                self.signalMessage(*msgs)
                for q in self.queues:
                    del q[t]


class ApproximateTimeSynchronizer(TimeSynchronizer):
    """Emits one message per input when their stamps all lie within ``slop`` seconds."""

    def __init__(self, fs: list, queue_size: int, slop: float, allow_headerless: bool = False) -> None:
        super().__init__(fs, queue_size)
        # As the real code's rclpy Duration(seconds=slop): int(seconds * 10**9), truncating.
        self.slop_ns = int(slop * 1_000_000_000)
        self.allow_headerless = allow_headerless

    def add(self, msg: Any, my_queue: dict[int, Any], my_queue_index: int | None = None) -> None:
        stamp = _stamp_ns(msg)
        if stamp is None:
            if not self.allow_headerless:
                return
            import time

            stamp = time.time_ns()
        with self.lock:
            self._store(my_queue, stamp, msg)
            others = [i for i in range(len(self.queues)) if i != my_queue_index]
            candidates = []
            for i in others:
                near = [s for s in self.queues[i] if abs(s - stamp) <= self.slop_ns]
                if not near:
                    return
                # Stable sort by distance only, as the real code: ties keep queue insertion order.
                candidates.append(sorted(near, key=lambda s: abs(s - stamp)))
            for combination in itertools.product(*candidates):
                stamps = list(combination)
                if my_queue_index is not None:
                    stamps.insert(my_queue_index, stamp)
                if max(stamps) - min(stamps) < self.slop_ns and all(
                    t in q for q, t in zip(self.queues, stamps, strict=True)
                ):
                    msgs = [q[t] for q, t in zip(self.queues, stamps, strict=True)]
                    self.signalMessage(*msgs)
                    for q, t in zip(self.queues, stamps, strict=True):
                        del q[t]
                    break
