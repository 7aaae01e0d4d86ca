"""``torch.compile`` of a network, with the compile time logged once (``compute.compile``)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

__all__ = ["LoggedCompile"]

_LOG = logging.getLogger(__name__)


class LoggedCompile:
    """Calls ``torch.compile(module, **options)``; the first call's wall time (compilation + one run) is logged once.

    The module itself is not replaced: move it with ``module.to(...)`` as usual (the compiled function
    recompiles for the new device on its next call).

    Args:
        module: the network to compile.
        label: name in the log line, e.g. ``"SAM image encoder"``.
        **options: passed to ``torch.compile`` (e.g. ``backend="eager"`` in tests, ``mode=...``).

    Attributes:
        first_call_s: seconds the first call took (None before it).
    """

    def __init__(self, module: torch.nn.Module, label: str, **options: Any) -> None:
        self.module = module
        self.label = label
        self.compiled = torch.compile(module, **options)
        self.first_call_s: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.first_call_s is not None:
            return self.compiled(*args, **kwargs)
        start = time.perf_counter()
        out = self.compiled(*args, **kwargs)
        self.first_call_s = time.perf_counter() - start
        _LOG.info("torch.compile of %s: first call (compilation + run) took %.1f s", self.label, self.first_call_s)
        return out
