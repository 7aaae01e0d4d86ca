"""Reading and writing the shipped checkpoint files (shared by Stage I and Stage II)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["cpu_state_dict", "read_checkpoint"]


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: float32 CPU tensor}: the form weights are shipped in (device- and precision-independent)."""
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}


def read_checkpoint(path: str | Path, device: str | torch.device, what: str) -> dict:
    """The dict saved at ``path``, loaded with ``weights_only=True`` onto ``device``.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names ``what`` and the path).
        ValueError: the file is unreadable or does not hold a dict with a ``state_dict`` (names the path).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types (pickle, zip, runtime) for a bad file
        raise ValueError(f"cannot read {what} weights {path}: {exc}") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a {what} checkpoint (expected a dict with a 'state_dict')")
    return checkpoint
