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
    "ssim_map",
    "structure_loss",
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


def gradient_loss(
    fused: Tensor, ir: Tensor, vis: Tensor, mask: Tensor | None = None, gain: float = 1.0
) -> Tensor:
    """L1 between |Sobel(fused)| and ``gain`` * max(|Sobel(ir)|, |Sobel(vis)|) (the strongest edge of either input).

    Shapes and ranges as ``intensity_loss``; ``gain`` > 1 asks for edges stronger than either source's (detail
    the fused image should make more visible, not merely keep). Returns a scalar tensor >= 0; 0 when the fused
    gradient magnitude equals the target everywhere on the weighted region.
    """
    target = gain * torch.maximum(sobel_magnitude(ir), sobel_magnitude(vis))
    return masked_mean((sobel_magnitude(fused) - target).abs(), mask)


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2.0
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # [1,1,size,size]


def ssim_map(x: Tensor, y: Tensor, size: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity map of two [N,1,H,W] images in [0,1] (Gaussian window, valid region).

    Returns [N,1,H-size+1,W-size+1] with values in [-1, 1]; 1 where the local means, contrasts and structure agree.
    """
    c1, c2 = 0.01**2, 0.03**2
    window = _gaussian_window(size, sigma, x)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x * mu_x
    var_y = F.conv2d(y * y, window) - mu_y * mu_y
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


def structure_loss(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """1 − mean of SSIM(fused, ir) and SSIM(fused, vis): keeps the local structure of both sources.

    Args: [N,1,H,W] in [0,1] each (H, W >= 11). Returns a scalar tensor in [0, 2].
    """
    return 1.0 - 0.5 * (ssim_map(fused, ir).mean() + ssim_map(fused, vis).mean())


class Stage1LossOutput(NamedTuple):
    """Scalar tensors: ``total`` = w_int * ``intensity`` + w_grad * ``gradient`` + w_struct * ``structure``."""

    total: Tensor
    intensity: Tensor
    gradient: Tensor
    structure: Tensor


class Stage1Loss(nn.Module):
    """Stage I objective: intensity (to max), gradient (to ``gradient_gain`` × the strongest edge), structure (SSIM).

    forward(fused, ir, vis, mask=None) -> Stage1LossOutput; inputs as ``intensity_loss``. The structure term is
    computed over the whole image (the mask does not apply to it) and only when its weight is > 0.
    """

    def __init__(
        self,
        intensity_weight: float = 1.0,
        gradient_weight: float = 1.0,
        structure_weight: float = 0.0,
        gradient_gain: float = 1.0,
    ) -> None:
        super().__init__()
        if min(intensity_weight, gradient_weight, structure_weight) < 0 or gradient_gain <= 0:
            raise ValueError("loss weights must be >= 0 and gradient_gain > 0")
        self.intensity_weight = float(intensity_weight)
        self.gradient_weight = float(gradient_weight)
        self.structure_weight = float(structure_weight)
        self.gradient_gain = float(gradient_gain)

    def forward(self, fused: Tensor, ir: Tensor, vis: Tensor, mask: Tensor | None = None) -> Stage1LossOutput:
        l_int = intensity_loss(fused, ir, vis, mask)
        l_grad = gradient_loss(fused, ir, vis, mask, gain=self.gradient_gain)
        total = self.intensity_weight * l_int + self.gradient_weight * l_grad
        l_struct = fused.new_zeros(())
        if self.structure_weight > 0:
            l_struct = structure_loss(fused, ir, vis)
            total = total + self.structure_weight * l_struct
        return Stage1LossOutput(total, l_int, l_grad, l_struct)

    def extra_repr(self) -> str:
        return (
            f"intensity_weight={self.intensity_weight}, gradient_weight={self.gradient_weight}, "
            f"structure_weight={self.structure_weight}, gradient_gain={self.gradient_gain}"
        )
