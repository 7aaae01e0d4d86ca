"""Pieces both training stages share: the learning-rate schedule and crash-safe checkpoint writes."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch

__all__ = ["atomic_save", "describe_device", "lr_at", "relative_arguments"]


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``args.lr`` then cosine decay to ``args.min_lr`` at ``args.iters``; ``step`` counts from 1."""
    if step <= args.warmup:
        return args.lr * step / max(1, args.warmup)
    progress = (step - args.warmup) / max(1, args.iters - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def relative_arguments(argv: list[str], base: Path | None = None) -> list[str]:
    """``argv`` with every absolute path written relative to ``base`` (default: the working directory).

    Provenance records must not name one machine's absolute paths (a record says ``../shared/data/roadscene``,
    not where this checkout happened to live).
    """
    base = Path.cwd() if base is None else base
    return [os.path.relpath(a, base) if os.path.isabs(a) else a for a in argv]


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted run never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def describe_device(device: torch.device, cpu_note: str = "threads") -> str:
    """'cuda:0 (NVIDIA H100 ...)' or 'cpu (2 threads)' for the provenance JSON of exported weights."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} {cpu_note})"
