"""``build_prior``: a :class:`~sgdfuse_ros.priors.base.SemanticPrior` from configuration.

Apart from base.py so that the priors import the interface and the builder imports the priors, never the
other way round (no import cycle).
"""

from __future__ import annotations

import torch

from .base import PRIOR_KINDS, SAM_MODEL_TYPES, SemanticPrior
from .fallback import FallbackPrior
from .keyframes import KeyframePrior

__all__ = ["build_prior"]


def build_prior(
    kind: str,
    *,
    device: str | torch.device = "cpu",
    sam_checkpoint: str = "",
    sam_model_type: str = "vit_b",
    points_per_side: int = 16,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.8,
    stability_score_thresh: float = 0.9,
    keyframe_interval: int = 1,
    precision: str = "fp32",
    compile: bool = False,
    **fallback_opts,
) -> SemanticPrior:
    """Build a semantic prior from configuration.

    Args:
        kind: ``"auto"`` (SAM if ``sam_checkpoint`` is non-empty, else fallback), ``"sam"`` or
            ``"fallback"``.
        device: torch device for the prior.
        sam_checkpoint: path to an official SAM checkpoint (state dict) matching ``sam_model_type``.
        sam_model_type: ``"vit_h"``, ``"vit_l"`` or ``"vit_b"``.
        points_per_side: the SAM point grid has ``points_per_side**2`` prompts per image.
        points_per_batch: prompts decoded per mask-decoder call (bounds memory; results do not
            depend on it).
        pred_iou_thresh: keep SAM masks whose predicted IoU is >= this.
        stability_score_thresh: keep SAM masks whose stability score is >= this.
        keyframe_interval: with SAM, run it every ``keyframe_interval`` frames and propagate its masks
            by optical flow in between (:class:`~sgdfuse_ros.priors.keyframes.KeyframePrior`);
            1 = every frame. Ignored by the fallback prior, which always runs on every frame.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``: autocast dtype of the SAM encoder and decoder on
            CUDA (ignored by the fallback and on the CPU).
        compile: ``torch.compile`` the SAM image encoder (ignored by the fallback).
        **fallback_opts: options of :class:`~sgdfuse_ros.priors.fallback.FallbackPrior`
            (``work_size``, ``open_radius`` and the :class:`SaliencyParams` fields). The saliency
            fields are also used by the SAM prior to score its segments.
    Raises:
        ValueError: unknown ``kind`` / ``sam_model_type`` / option, ``kind="sam"`` without a
            checkpoint, or an unreadable / mismatching checkpoint (the message names the path).
        FileNotFoundError: the checkpoint path does not exist (the message names the path).
    """
    interval_ok = isinstance(keyframe_interval, int) and not isinstance(keyframe_interval, bool)
    if not interval_ok or not 1 <= keyframe_interval <= 100:
        raise ValueError(f"keyframe_interval must be an integer in [1, 100], got {keyframe_interval!r}")
    if not isinstance(kind, str) or kind not in PRIOR_KINDS:
        raise ValueError(f"unknown prior kind {kind!r}; allowed: {list(PRIOR_KINDS)}")
    if sam_model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown SAM model type {sam_model_type!r}; allowed: {list(SAM_MODEL_TYPES)}")
    checkpoint = str(sam_checkpoint or "").strip()
    use_sam = kind == "sam" or (kind == "auto" and checkpoint != "")
    if not use_sam:
        return FallbackPrior(device, **fallback_opts)
    if checkpoint == "":
        raise ValueError("prior kind 'sam' needs sam_checkpoint (path to a SAM .pth state dict); "
                         "use kind 'fallback' or 'auto' to run without one")
    from .sam import SamPrior  # segment_anything is imported only when a SAM prior is built

    sam = SamPrior.from_checkpoint(
        checkpoint,
        model_type=sam_model_type,
        device=device,
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        precision=precision,
        compile=compile,
        **fallback_opts,
    )
    return sam if keyframe_interval == 1 else KeyframePrior(sam, keyframe_interval)
