"""Fusion networks. Stage I (preliminary fusion) lives in ``stage1``."""

from .stage1 import (
    Stage1Config,
    StageOneFusion,
    build_stage1,
    default_stage1_weights_path,
    load_stage1,
)

__all__ = ["Stage1Config", "StageOneFusion", "build_stage1", "default_stage1_weights_path", "load_stage1"]
