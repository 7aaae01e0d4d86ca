"""Training entry points (``python -m sgdfuse_ros.training <stage> ...``) and the held-out pair list."""

from .data import HELD_OUT_NAMES

__all__ = ["HELD_OUT_NAMES"]
