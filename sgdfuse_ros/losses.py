"""Fusion losses: intensity and gradient terms (Stage I), with optional region weighting for Stage II.

Every loss takes an optional ``mask`` [N,1,H,W] with values in [0, 1]: the per-pixel error is averaged over
channels and then over pixels weighted by the mask, so ``mask`` restricts (or softly re-weights) the mean to a
region. Stage II's mask-guided variants pass the SAM-derived saliency maps here. Without a mask the mean runs
over every pixel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Stage1Loss",
    "Stage1LossOutput",
    "gradient_loss",
    "intensity_loss",
    "masked_mean",
    "sobel_magnitude",
]

# Inside the square root of the gradient magnitude: keeps d|g|/dg bounded (|g| / sqrt(g^2 + eps) <= 1) and
# finite at g = 0. It shifts flat-region magnitudes by sqrt(eps) = 1e-4, the same shift on every image.
_GRAD_EPS = 1e-8
# Floor of the mask sum: a mask that is empty everywhere gives a loss of 0, not NaN.
_MASK_EPS = 1e-8


def masked_mean(error: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``error`` [N,C,H,W] over channels, then over pixels weighted by ``mask`` [N,1,H,W] in [0,1].

    Returns a scalar tensor. With ``mask`` None this is ``error.mean()``; with a mask it is
    sum(mask * mean_c(error)) / sum(mask) over the whole batch (0 when the mask is empty).
    """
    if mask is None:
        return error.mean()
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != error.shape[0] or mask.shape[-2:] != error.shape[-2:]:
        raise ValueError(f"mask must be [N,1,H,W] matching error {tuple(error.shape)}, got {tuple(mask.shape)}")
    per_pixel = error.mean(dim=1, keepdim=True)
    mask = mask.to(per_pixel.dtype)
    return (per_pixel * mask).sum() / mask.sum().clamp_min(_MASK_EPS)


def sobel_magnitude(image: Tensor) -> Tensor:
    """Sobel gradient magnitude per channel: [N,C,H,W] -> [N,C,H,W], sqrt(gx^2 + gy^2 + 1e-8).

    Unnormalised 3x3 Sobel kernels ([-1,0,1],[-2,0,2],[-1,0,1]), so an ideal step of height 1 gives a
    magnitude of 4. Borders are replicate-padded: the image edge itself is not an edge.
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=image.dtype, device=image.device)
    kernel = torch.stack([kx, kx.t()])[:, None]  # [2,1,3,3]: d/dx, d/dy
    n, c, h, w = image.shape
    flat = F.pad(image.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(flat, kernel)  # [N*C,2,H,W]
    return torch.sqrt(g.pow(2).sum(dim=1) + _GRAD_EPS).view(n, c, h, w)


def intensity_loss(fused: Tensor, ir: Tensor, vis: Tensor, mask: Tensor | None = None) -> Tensor:
    """L1 between ``fused`` and the element-wise max of the inputs (keeps warm thermal targets bright).

    Args:
        fused: [N,C,H,W] in [0,1] (C = 1 for Stage I luminance, 3 for RGB).
        ir: [N,1,H,W] or [N,C,H,W] in [0,1]; broadcast over channels.
        vis: [N,1,H,W] or [N,C,H,W] in [0,1].
        mask: optional [N,1,H,W] weights in [0,1] restricting the mean (see ``masked_mean``).
    Returns:
        Scalar tensor >= 0; 0 when ``fused == max(ir, vis)`` on the weighted region.
    """
    return masked_mean((fused - torch.maximum(ir, vis)).abs(), mask)


def gradient_loss(fused: Tensor, ir: Tensor, vis: Tensor, mask: Tensor | None = None) -> Tensor:
    """L1 between |Sobel(fused)| and max(|Sobel(ir)|, |Sobel(vis)|) (keeps the strongest edge of either input).

    Shapes and ranges as ``intensity_loss``. Returns a scalar tensor >= 0; 0 when the fused gradient
    magnitude equals the larger input gradient magnitude everywhere on the weighted region.
    """
    target = torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis))
    return masked_mean((sobel_magnitude(fused) - target).abs(), mask)


class Stage1LossOutput(NamedTuple):
    """Scalar tensors: ``total`` = w_int * ``intensity`` + w_grad * ``gradient``."""

    total: Tensor
    intensity: Tensor
    gradient: Tensor


class Stage1Loss(nn.Module):
    """Stage I objective: ``intensity_weight * intensity_loss + gradient_weight * gradient_loss``.

    forward(fused, ir, vis, mask=None) -> Stage1LossOutput; inputs as ``intensity_loss``.
    """

    def __init__(self, intensity_weight: float = 1.0, gradient_weight: float = 1.0) -> None:
        super().__init__()
        if intensity_weight < 0 or gradient_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.intensity_weight = float(intensity_weight)
        self.gradient_weight = float(gradient_weight)

    def forward(self, fused: Tensor, ir: Tensor, vis: Tensor, mask: Tensor | None = None) -> Stage1LossOutput:
        l_int = intensity_loss(fused, ir, vis, mask)
        l_grad = gradient_loss(fused, ir, vis, mask)
        total = self.intensity_weight * l_int + self.gradient_weight * l_grad
        return Stage1LossOutput(total, l_int, l_grad)

    def extra_repr(self) -> str:
        return f"intensity_weight={self.intensity_weight}, gradient_weight={self.gradient_weight}"
