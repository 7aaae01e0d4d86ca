"""Stage II losses: mask-guided intensity and gradient terms on the predicted clean image, plus global anchors.

All terms apply to x0_hat mapped to [0, 1] (RGB) and its BT.601 luminance Y. With M_ir, M_vis in [0, 1]:

    intensity = mean_{M_ir}(|Y - IR|)          + mean_{1 - M_ir}(|Y - max(IR, Y_vis)|)
    gradient  = mean_{M_vis}(||grad Y| - |grad Y_vis||) + mean_{1 - M_vis}(||grad Y| - max(|grad IR|, |grad Y_vis|)|)
    chroma    = mean(|CbCr(x0_hat) - CbCr(vis)|)      (colours stay those the visible camera saw)
    anchor    = mean(|x0_hat - F1|)                  (small: keeps the refinement close to Stage I)
    total     = w_int * intensity + w_grad * gradient + w_chroma * chroma + w_anchor * anchor

``mean_M`` is the mask-weighted mean of ``losses.masked_mean`` (sum(M * e) / sum(M) over the batch, 0 for an empty
mask): inside a salient thermal region the fused luminance must follow the thermal intensity (warm targets stay
as bright as the thermal camera shows them, not washed out by a brighter visible background); inside salient
visible structure the fused gradients must follow the visible gradients (texture, not thermal noise); elsewhere
the Stage I max-intensity / max-gradient objectives apply. Normalising each region by its own mask sum gives small
targets the same weight as the background, which is the point of the guidance.

``objective="semantic"`` (``--objective semantic``) changes two targets, the rest is unchanged:

    intensity = mean_{M_ir}(|Y - IR|)          + mean_{1 - M_ir}(|Y - Y_vis|)
    gradient  = mean_{M_vis}(||grad Y| - G_max|) + mean_{1 - M_vis}(||grad Y| - G_max|)
    G_max     = max(|grad IR|, |grad Y_vis|)

Outside the salient thermal regions the background keeps the visible camera's intensities (and so its
contrast: a dark night sky stays dark instead of being lifted to the thermal haze that max(IR, Y_vis) gives);
the thermal intensity is asked for only where the prior says a warm target is. The gradient target is the
strongest edge of either input everywhere; M_vis only re-weights (salient visible structure counts as much as
the rest of the image).

``objective="fidelity"`` (``--objective fidelity``) keeps the paper's mask-guided intensity term (above, "max")
and replaces the gradient target by a floor relative to F1, which is already sharper than either source:

    gradient  = mean_{M_vis}(relu(|grad F1_y| - |grad Y|)) + mean_{1 - M_vis}(relu(|grad F1_y| - |grad Y|))

Stage II may move intensities towards the sources (thermal intensity on salient warm targets, max elsewhere) but
edges may only get stronger, never weaker than in F1 (docs/stage2.md: why).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .imaging import split_luma_chroma
from .losses import masked_mean, sobel_magnitude

__all__ = [
    "Stage2Loss",
    "Stage2LossOutput",
    "chroma_loss",
    "mask_guided_gradient_loss",
    "mask_guided_intensity_loss",
    "fidelity_gradient_loss",
    "OBJECTIVES",
]

OBJECTIVES = ("max", "semantic", "fidelity")


def _check_mask(mask: Tensor, like: Tensor, name: str) -> None:
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != like.shape[0] or mask.shape[-2:] != like.shape[-2:]:
        raise ValueError(f"{name} must be [N,1,H,W] matching {tuple(like.shape)}, got {tuple(mask.shape)}")


def mask_guided_intensity_loss(
    fused_y: Tensor, ir: Tensor, vis_y: Tensor, mask_ir: Tensor, outside_target: str = "max"
) -> Tensor:
    """Thermal intensity inside M_ir; outside, max intensity (default) or the visible luminance.

    Args:
        fused_y: fused luminance [N,1,H,W] in [0,1].
        ir: thermal [N,1,H,W] in [0,1].
        vis_y: visible luminance [N,1,H,W] in [0,1].
        mask_ir: [N,1,H,W] in [0,1], the salient thermal regions.
        outside_target: "max" (max(IR, Y_vis)) or "vis" (Y_vis, the semantic objective).
    Returns:
        Scalar >= 0: mean_{M_ir}|Y - IR| + mean_{1-M_ir}|Y - T| with T = max(IR, Y_vis) or Y_vis.
    """
    _check_mask(mask_ir, fused_y, "mask_ir")
    if outside_target not in ("max", "vis"):
        raise ValueError(f"outside_target must be 'max' or 'vis', got {outside_target!r}")
    inside = masked_mean((fused_y - ir).abs(), mask_ir)
    target = torch.maximum(ir, vis_y) if outside_target == "max" else vis_y
    outside = masked_mean((fused_y - target).abs(), 1.0 - mask_ir)
    return inside + outside


def mask_guided_gradient_loss(
    fused_y: Tensor, ir: Tensor, vis_y: Tensor, mask_vis: Tensor, inside_target: str = "vis"
) -> Tensor:
    """Visible gradients inside M_vis, max gradient outside (Sobel magnitudes, ``losses.sobel_magnitude``).

    Shapes as ``mask_guided_intensity_loss`` with ``mask_vis`` [N,1,H,W] in [0,1]. Returns a scalar >= 0:
    mean_{M_vis}||grad Y| - |grad Y_vis|| + mean_{1-M_vis}||grad Y| - max(|grad IR|, |grad Y_vis|)|.
    ``inside_target="max"`` uses max(|grad IR|, |grad Y_vis|) inside M_vis too: the mask then only re-weights
    (salient visible structure counts as much as the rest of the image) instead of changing the target.
    """
    _check_mask(mask_vis, fused_y, "mask_vis")
    if inside_target not in ("vis", "max"):
        raise ValueError(f"inside_target must be 'vis' or 'max', got {inside_target!r}")
    g_fused, g_ir, g_vis = sobel_magnitude(fused_y), sobel_magnitude(ir), sobel_magnitude(vis_y)
    g_max = torch.maximum(g_ir, g_vis)
    inside = masked_mean((g_fused - (g_vis if inside_target == "vis" else g_max)).abs(), mask_vis)
    outside = masked_mean((g_fused - g_max).abs(), 1.0 - mask_vis)
    return inside + outside


def fidelity_gradient_loss(fused_y: Tensor, f1_y: Tensor, mask_vis: Tensor) -> Tensor:
    """Edges no weaker than F1's: mean over M_vis and over 1 - M_vis of relu(|grad F1_y| - |grad Y|) -> scalar."""
    _check_mask(mask_vis, fused_y, "mask_vis")
    shortfall = torch.relu(sobel_magnitude(f1_y).detach() - sobel_magnitude(fused_y))
    return masked_mean(shortfall, mask_vis) + masked_mean(shortfall, 1.0 - mask_vis)


def chroma_loss(fused_rgb: Tensor, vis_rgb: Tensor) -> Tensor:
    """L1 between the BT.601 Cb/Cr of ``fused_rgb`` and ``vis_rgb`` (both [N,3,H,W] in [0,1]); scalar >= 0."""
    return (split_luma_chroma(fused_rgb)[1] - split_luma_chroma(vis_rgb)[1]).abs().mean()


class Stage2LossOutput(NamedTuple):
    """Scalar tensors; ``total`` is the weighted sum of the four terms."""

    total: Tensor
    intensity: Tensor
    gradient: Tensor
    chroma: Tensor
    anchor: Tensor


class Stage2Loss(nn.Module):
    """Stage II objective on the predicted clean image (weights: the authors' 1.5 / 1.0 for intensity / gradient).

    ``objective``: "max" (default; max(IR, Y_vis) intensity target outside M_ir), "semantic" (Y_vis outside
    M_ir) or "fidelity" ("max" intensity, gradients never below F1's; see the module docstring).
    ``vis_gradient_target`` is passed to ``mask_guided_gradient_loss`` as ``inside_target`` (not used by
    "fidelity"); None means "vis" for the "max" objective and "max" for the "semantic" one.

    forward(x0_rgb [N,3,H,W] in [0,1], ir [N,1,H,W], vis_rgb [N,3,H,W], f1 [N,3,H,W], mask_ir, mask_vis
    [N,1,H,W], all in [0,1]) -> Stage2LossOutput.
    """

    def __init__(
        self,
        intensity_weight: float = 1.5,
        gradient_weight: float = 1.0,
        chroma_weight: float = 1.0,
        anchor_weight: float = 0.1,
        vis_gradient_target: str | None = None,
        objective: str = "max",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        self.objective = objective
        if vis_gradient_target is None:
            vis_gradient_target = "max" if objective == "semantic" else "vis"
        if vis_gradient_target not in ("vis", "max"):
            raise ValueError(f"vis_gradient_target must be 'vis' or 'max', got {vis_gradient_target!r}")
        self.vis_gradient_target = vis_gradient_target
        weights = (intensity_weight, gradient_weight, chroma_weight, anchor_weight)
        if min(weights) < 0:
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        self.intensity_weight, self.gradient_weight, self.chroma_weight, self.anchor_weight = map(float, weights)

    def forward(
        self, x0_rgb: Tensor, ir: Tensor, vis_rgb: Tensor, f1: Tensor, mask_ir: Tensor, mask_vis: Tensor
    ) -> Stage2LossOutput:
        fused_y = split_luma_chroma(x0_rgb)[0]
        vis_y = split_luma_chroma(vis_rgb)[0]
        outside = "vis" if self.objective == "semantic" else "max"
        l_int = mask_guided_intensity_loss(fused_y, ir, vis_y, mask_ir, outside)
        if self.objective == "fidelity":
            l_grad = fidelity_gradient_loss(fused_y, split_luma_chroma(f1)[0], mask_vis)
        else:
            l_grad = mask_guided_gradient_loss(fused_y, ir, vis_y, mask_vis, self.vis_gradient_target)
        l_chroma = chroma_loss(x0_rgb, vis_rgb)
        l_anchor = (x0_rgb - f1).abs().mean()
        total = (
            self.intensity_weight * l_int
            + self.gradient_weight * l_grad
            + self.chroma_weight * l_chroma
            + self.anchor_weight * l_anchor
        )
        return Stage2LossOutput(total, l_int, l_grad, l_chroma, l_anchor)

    def extra_repr(self) -> str:
        return (
            f"intensity_weight={self.intensity_weight}, gradient_weight={self.gradient_weight}, "
            f"chroma_weight={self.chroma_weight}, anchor_weight={self.anchor_weight}, "
            f"vis_gradient_target={self.vis_gradient_target!r}, objective={self.objective!r}"
        )
