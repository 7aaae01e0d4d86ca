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

__all__ = ["PRIOR_KINDS", "SAM_MODEL_TYPES", "SemanticPrior"]

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

    def set_selection_thresholds(self, pred_iou_thresh: float, stability_score_thresh: float) -> None:
        """Run-time ``prior.pred_iou_thresh`` / ``prior.stability_score_thresh`` (SAM's segment selection).

        Priors without segment selection ignore them (this default); call between frames.
        """
        return None

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
