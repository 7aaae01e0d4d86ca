"""Hand-over from the node's synchronizer callback (executor thread) to its worker thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Mailbox", "Pair"]


@dataclass
class Pair:
    thermal: Any  #: sensor_msgs Image or CompressedImage
    rgb: Any
    received: float  #: time.monotonic() when the synchronizer formed the pair (arrival of the later message)
    accounted: bool = False  #: counted as fused or dropped


class Mailbox:
    """One-slot hand-over from the synchronizer callback to the worker; a newer pair replaces a waiting one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Pair | None = None
        self._closed = False

    def put(self, item: Pair) -> Pair | None:
        """Store ``item``; returns the pair it replaced (never processed), if any."""
        with self._cond:
            replaced, self._item = self._item, item
            self._cond.notify()
            return replaced

    def take(self, timeout: float) -> Pair | None:
        """The waiting pair, waiting up to ``timeout`` s for one (not at all once closed)."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def wait_closed(self, timeout: float) -> None:
        with self._cond:
            if not self._closed:
                self._cond.wait_for(lambda: self._closed, timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No more pairs: the worker takes what is waiting, then stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
