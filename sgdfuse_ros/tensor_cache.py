"""Per-frame constant tensors made once: kernels, frequency tables, masks, start noise.

A tensor that depends only on shapes, a seed and the device (a Gaussian kernel, a timestep table, an attention
mask, the seeded Stage II start noise) is the same on every frame; building it each time costs a host-to-device
copy or a kernel launch per use. :func:`cached_constant` memoises such a factory per argument tuple.

The factory runs with inference mode and autograd off, whatever the caller's mode: the cached tensor is an
ordinary tensor (not an inference tensor), so code that first runs under ``torch.inference_mode`` (the
pipeline) and later with autograd on (training) can share it, and it never carries a graph. Cached tensors are
shared: callers must not modify them in place.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

__all__ = ["cached_constant"]

P = ParamSpec("P")
T = TypeVar("T")


def cached_constant(maxsize: int = 16) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator: ``functools.lru_cache(maxsize)`` around a factory of constant tensors (hashable arguments,
    e.g. ints, floats, ``torch.device``, ``torch.dtype``), built outside inference mode and without autograd."""

    def decorate(factory: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(factory)
        def build(*args: P.args, **kwargs: P.kwargs) -> T:
            with torch.inference_mode(False), torch.no_grad():
                return factory(*args, **kwargs)

        return functools.lru_cache(maxsize=maxsize)(build)  # type: ignore[return-value]

    return decorate
