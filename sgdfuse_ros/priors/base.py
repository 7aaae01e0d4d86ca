"""The semantic-prior interface and its factory.

A semantic prior turns a registered thermal / visible pair into one soft mask per modality:
``M_ir`` (warm targets) and ``M_vis`` (salient visible structure). Stage II conditions on
``[F1, M_ir, M_vis]`` and weights its losses with them.

Two implementations: ``"sam:<model_type>"`` (segment_anything with a user checkpoint, ``sam.py``) and
``"fallback"`` (weight-free, ``fallback.py``). ``build_prior`` picks one from configuration.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

__all__ = ["PRIOR_KINDS", "SAM_MODEL_TYPES", "SemanticPrior", "build_prior"]

#: Values accepted by ``build_prior(kind=...)``.
PRIOR_KINDS = ("auto", "sam", "fallback")
#: SAM image-encoder variants accepted by ``build_prior(sam_model_type=...)``.
SAM_MODEL_TYPES = ("vit_h", "vit_l", "vit_b")


class SemanticPrior(abc.ABC):
    """Produces per-modality soft saliency masks for a registered IR / visible pair.

    Attributes:
        name: short identifier reported in ROS diagnostics and stats, e.g. ``"sam:vit_b"`` or
            ``"fallback"``.
        device: the device the prior computes on; inputs must already be there and outputs stay
            there.
    """

    name: str
    device: torch.device

    @abc.abstractmethod
    def masks(self, thermal: Tensor, visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """Compute the two masks.

        Args:
            thermal: [N, 1, H, W] float in [0, 1] on ``self.device``.
            visible_rgb: [N, 3, H, W] float in [0, 1] (RGB order), same N, H, W, same device.
        Returns:
            ``(m_ir, m_vis)``, each [N, 1, H, W] float32 in [0, 1] on ``self.device``.
            Deterministic: the same inputs give the same masks.
        """

    def to(self, device: str | torch.device) -> SemanticPrior:
        """Move the prior to ``device`` (e.g. back to the CPU after a CUDA fault); returns ``self``.

        Subclasses holding modules override this and move them too.
        """
        self.device = torch.device(device)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r})"

    def _check_inputs(self, thermal: Tensor, visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """Validate shapes/devices; returns float32 views. Raises ValueError with the shapes."""
        if thermal.dim() != 4 or thermal.shape[1] != 1:
            raise ValueError(f"thermal must be [N,1,H,W], got {tuple(thermal.shape)}")
        if visible_rgb.dim() != 4 or visible_rgb.shape[1] != 3:
            raise ValueError(f"visible_rgb must be [N,3,H,W], got {tuple(visible_rgb.shape)}")
        if thermal.shape[0] != visible_rgb.shape[0] or thermal.shape[-2:] != visible_rgb.shape[-2:]:
            raise ValueError(
                f"thermal {tuple(thermal.shape)} and visible_rgb {tuple(visible_rgb.shape)} must share N, H, W"
            )
        if thermal.shape[0] == 0 or min(thermal.shape[-2:]) < 1:
            raise ValueError(f"empty input {tuple(thermal.shape)}")
        for t, what in ((thermal, "thermal"), (visible_rgb, "visible_rgb")):
            if t.device.type != self.device.type or (
                self.device.index is not None and t.device.index != self.device.index
            ):
                raise ValueError(f"{what} is on {t.device}, prior {self.name!r} runs on {self.device}")
        return thermal.float(), visible_rgb.float()


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
        **fallback_opts: options of :class:`~sgdfuse_ros.priors.fallback.FallbackPrior`
            (``work_size``, ``open_radius`` and the :class:`SaliencyParams` fields). The saliency
            fields are also used by the SAM prior to score its segments.
    Raises:
        ValueError: unknown ``kind`` / ``sam_model_type`` / option, ``kind="sam"`` without a
            checkpoint, or an unreadable / mismatching checkpoint (the message names the path).
        FileNotFoundError: the checkpoint path does not exist (the message names the path).
    """
    if not isinstance(kind, str) or kind not in PRIOR_KINDS:
        raise ValueError(f"unknown prior kind {kind!r}; allowed: {list(PRIOR_KINDS)}")
    if sam_model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"unknown SAM model type {sam_model_type!r}; allowed: {list(SAM_MODEL_TYPES)}")
    checkpoint = str(sam_checkpoint or "").strip()
    use_sam = kind == "sam" or (kind == "auto" and checkpoint != "")
    if not use_sam:
        from .fallback import FallbackPrior

        return FallbackPrior(device, **fallback_opts)
    if checkpoint == "":
        raise ValueError("prior kind 'sam' needs sam_checkpoint (path to a SAM .pth state dict); "
                         "use kind 'fallback' or 'auto' to run without one")
    from .sam import SamPrior

    return SamPrior.from_checkpoint(
        checkpoint,
        model_type=sam_model_type,
        device=device,
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        **fallback_opts,
    )
