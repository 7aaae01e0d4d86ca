"""Log rate limiting keyed by reason, shared by every call site of the node.

rclpy's ``logger.info(..., throttle_duration_sec=...)`` throttles per *call site*: every rejection
of an input image goes through the same logging line in the worker, so one noisy reason (say a
camera that always sends NaN pixels) would silence every other reason for the whole period. This
helper keeps one window per reason key instead, and counts what it suppressed so the next line
that does get through can say how many similar ones were hidden.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["ReasonThrottle"]


class ReasonThrottle:
    """Allows one log line per reason key every ``period_s`` seconds.

    Thread-safe. ``period_s`` may be changed at run time (the ``node.log_throttle`` parameter);
    0 disables throttling.
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._period = float(period_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @property
    def period(self) -> float:
        """Seconds between two log lines of the same reason."""
        return self._period

    @period.setter
    def period(self, value: float) -> None:
        self._period = float(value)

    def allow(self, reason: str) -> tuple[bool, int]:
        """Whether a line for ``reason`` may be logged now, and how many were suppressed before it.

        Returns:
            (allowed, suppressed): ``suppressed`` is the number of calls for this reason that were
            refused since the last allowed one (0 when ``allowed`` is False).
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._period:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return False, 0
            self._last[reason] = now
            return True, self._suppressed.pop(reason, 0)
