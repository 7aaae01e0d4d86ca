"""Weight-free semantic prior, and the per-pixel saliency scores shared with the SAM prior.

Both priors reduce "what stands out in this modality" to a per-pixel *score map* measured in robust
standard deviations of the image itself, so that the same thresholds work for 8-bit RoadScene frames
with a warm road and for dark MSRS night frames:

* IR score = warmth relative to the whole frame plus prominence over the local background:
  ``z_ir = (t - median(t)) / s + w_local * (t - blur_bg(t)) / s``, where ``t`` is the lightly
  smoothed thermal image and ``s = max(1.4826 * MAD(t), ir_scale_floor)``. The floor keeps a flat
  frame (sensor noise only) from being normalised up into spurious targets.
* VIS score = local texture / contrast energy of the luminance Y, in the log domain so that it does
  not depend on exposure: ``e = log(sqrt(blur(|grad Y|^2)) + w_c * local_std(Y) + noise_floor)``,
  ``z_vis = (e - median(e)) / max(1.4826 * MAD(e), vis_scale_floor)``. Flat sky, road and walls
  score low; foliage, people, vehicles, signs and facade detail score high. The additive noise floor
  (~2.5 grey levels) keeps sensor noise on flat areas from reading as texture.

The fallback prior turns a score map into a mask pixel by pixel with :func:`soft_threshold` (a
smoothstep ramp of half-width ``softness`` around the threshold: exactly 0 on typical background,
exactly 1 on clearly salient pixels) and a small grey-scale opening that removes isolated specks.
The SAM prior (``sam.py``) averages the same score maps over each SAM segment and applies the same
soft threshold per segment: the two priors agree on *what* is salient and differ in *where the edges
go* (SAM snaps them to object boundaries).

All computation is torch on the inputs' device, at a reduced working resolution (longest side
``work_size``, default 320), upsampled once (bilinear) to the input size: ~14 ms per 640x480 frame
on one CPU thread (measured with the former benchmarks/prior_latency.py; ``benchmarks/performance.py
--prior fallback`` reports the prior stage per frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tensor_cache import cached_constant
from .base import SemanticPrior

__all__ = [
    "FallbackPrior",
    "SaliencyParams",
    "gaussian_blur",
    "ir_score_map",
    "luminance",
    "robust_stats",
    "soft_threshold",
    "vis_score_map",
]

# BT.601 luma weights (RGB order), the same as the rest of the core uses for Y.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SaliencyParams:
    """Parameters of the score maps and of the soft threshold (shared by both priors).

    Spatial scales are fractions of the longest side of the image they are applied to, so the
    result does not depend on the resolution the maps are computed at.
    """

    #: IR: smoothing before statistics (suppresses sensor noise / JPEG blocks).
    ir_smooth: float = 0.005
    #: IR: scale of the local background that the local-prominence term subtracts.
    ir_background: float = 0.08
    #: IR: weight of the local-prominence term (0 = global warmth only).
    ir_local_weight: float = 1.0
    #: IR: floor of the robust scale, in [0,1] intensity units (flat frames -> no targets).
    ir_scale_floor: float = 0.03
    #: IR: threshold of the soft mask in robust-std units.
    ir_threshold: float = 1.5
    #: VIS: integration scale of the texture energy and local contrast.
    vis_texture: float = 0.015
    #: VIS: weight of the local-contrast (local std) term relative to the gradient energy.
    vis_contrast_weight: float = 0.25
    #: VIS: energy floor in [0,1] intensity units (~2.5 grey levels): structure below it is noise.
    vis_noise_floor: float = 0.01
    #: VIS: floor of the robust scale of the log energy (flat frames -> little structure).
    vis_scale_floor: float = 0.25
    #: VIS: threshold of the soft mask in robust-std units.
    vis_threshold: float = 0.75
    #: Half-width of the soft-threshold ramp in robust-std units (smaller = harder mask edges).
    softness: float = 0.75

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not math.isfinite(v):
                raise ValueError(f"SaliencyParams.{f.name} must be finite, got {v!r}")
        for name in ("ir_smooth", "ir_background", "vis_texture",
                     "ir_scale_floor", "vis_scale_floor", "vis_noise_floor", "softness"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SaliencyParams.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("ir_local_weight", "vis_contrast_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"SaliencyParams.{name} must be >= 0, got {getattr(self, name)!r}")


# --------------------------------------------------------------------------------------------
# Small torch image operations (device-agnostic, deterministic)
# --------------------------------------------------------------------------------------------


@cached_constant(maxsize=32)
def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussian of ``sigma`` px (radius ceil(3 sigma)); made once per (sigma, device, dtype)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding.

    Args:
        x: [N, C, H, W] float.
        sigma: standard deviation in pixels; ``<= 0.3`` returns ``x`` unchanged.
    Returns:
        [N, C, H, W], same dtype/device. Large sigmas (> 4 px) are computed on an area-downsampled
        copy and upsampled bilinearly: the result is smooth anyway and this keeps the cost flat.
    """
    if sigma <= 0.3:
        return x
    n, c, h, w = x.shape
    factor = int(sigma // 2) if sigma > 4.0 else 1
    factor = max(1, min(factor, h // 4 or 1, w // 4 or 1))
    src = F.avg_pool2d(x, factor, ceil_mode=True) if factor > 1 else x
    s = sigma / factor
    k = _gaussian_kernel(s, x.device, x.dtype)
    r = (k.numel() - 1) // 2
    y = src.reshape(n * c, 1, src.shape[-2], src.shape[-1])
    # Reflect padding needs pad < size; replicate covers tiny images.
    mode_w = "reflect" if r < y.shape[-1] else "replicate"
    mode_h = "reflect" if r < y.shape[-2] else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode_w), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode_h), k.view(1, 1, -1, 1))
    y = y.reshape(n, c, y.shape[-2], y.shape[-1])
    if factor > 1:
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return y


def robust_stats(x: Tensor, scale_floor: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-sample median and robust standard deviation (1.4826 x MAD), floored.

    Args:
        x: [N, C, H, W]. Statistics are over C, H, W of each sample.
        scale_floor: lower bound of the returned scale (> 0 avoids division by ~0 on flat images).
    Returns:
        (median [N,1,1,1], scale [N,1,1,1]).
    """
    flat = x.reshape(x.shape[0], -1)
    # Statistics on a strided subsample: the maps are smooth, and the median of ~20k values is
    # as good as that of 300k but much cheaper.
    step = max(1, flat.shape[1] // 20000)
    sub = flat[:, ::step]
    med = sub.median(dim=1).values
    mad = (sub - med[:, None]).abs().median(dim=1).values
    scale = (1.4826 * mad).clamp_min(scale_floor if scale_floor > 0 else 1e-6)
    return med.view(-1, 1, 1, 1), scale.view(-1, 1, 1, 1)


@cached_constant(maxsize=16)
def _constants(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(sobel_x [1,1,3,3], sobel_y [1,1,3,3], luma [1,3,1,1]) on ``device``; cached so that a GPU
    frame does not pay host-to-device copies for them."""
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=dtype) / 8.0
    luma = torch.tensor(_LUMA, dtype=dtype).view(1, 3, 1, 1)
    return (k.view(1, 1, 3, 3).to(device), k.t().contiguous().view(1, 1, 3, 3).to(device), luma.to(device))


def _sobel(y: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel derivatives (normalised by 8: unit step -> 0.5) of y [N,1,H,W], replicate borders."""
    kx, ky, _ = _constants(y.device, y.dtype)
    yp = F.pad(y, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(yp, kx), F.conv2d(yp, ky)


def luminance(rgb: Tensor) -> Tensor:
    """BT.601 luma. rgb [N,3,H,W] in [0,1] -> [N,1,H,W] in [0,1]."""
    return (rgb * _constants(rgb.device, rgb.dtype)[2]).sum(dim=1, keepdim=True)


def ir_score_map(thermal: Tensor, params: SaliencyParams | None = None) -> Tensor:
    """Warm-target score of every pixel, in robust standard deviations of the frame.

    Args:
        thermal: [N, 1, H, W] in [0, 1].
        params: scales, floor (see :class:`SaliencyParams`).
    Returns:
        [N, 1, H, W] float, unbounded; ~0 for typical background, > ``params.ir_threshold`` for
        warm targets.
    """
    p = params or SaliencyParams()
    side = float(max(thermal.shape[-2:]))
    t = gaussian_blur(thermal, p.ir_smooth * side)
    med, scale = robust_stats(t, p.ir_scale_floor)
    z = (t - med) / scale
    if p.ir_local_weight > 0:
        bg = gaussian_blur(t, p.ir_background * side)
        z = z + p.ir_local_weight * (t - bg) / scale
    return z


def vis_score_map(visible_rgb: Tensor, params: SaliencyParams | None = None) -> Tensor:
    """Salient-structure score of every pixel of the visible image, in robust stds of the frame.

    Args:
        visible_rgb: [N, 3, H, W] in [0, 1] (RGB).
        params: scales, floor (see :class:`SaliencyParams`).
    Returns:
        [N, 1, H, W] float, unbounded; high on textured / high-contrast structure.
    """
    p = params or SaliencyParams()
    side = float(max(visible_rgb.shape[-2:]))
    sigma = p.vis_texture * side
    y = luminance(visible_rgb)
    gx, gy = _sobel(y)
    # Texture: RMS gradient magnitude over the integration window.
    energy = gaussian_blur(gx * gx + gy * gy, sigma).clamp_min(0).sqrt()
    # Contrast: local standard deviation over the same window; catches uniform objects (a dark
    # car body, clothing) that differ from their surroundings but have little inner texture.
    mean = gaussian_blur(y, sigma)
    local_std = (gaussian_blur(y * y, sigma) - mean * mean).clamp_min(0).sqrt()
    # The additive floor (a few grey levels) makes sensor noise on flat areas read as "no
    # structure" instead of being normalised up into texture by the relative statistics.
    e = torch.log(energy + p.vis_contrast_weight * local_std + p.vis_noise_floor)
    med, scale = robust_stats(e, p.vis_scale_floor)
    return (e - med) / scale


def soft_threshold(score: Tensor, threshold: float, softness: float) -> Tensor:
    """Soft mask from a score: a smoothstep ramp from ``threshold - softness`` (0) to
    ``threshold + softness`` (1), value 0.5 at ``threshold``.

    Compact support (unlike a sigmoid): typical background (score ~0) is exactly 0, so the mask's
    area measures the salient regions and not a floor spread over the whole frame.

    Args:
        score: any shape, in robust-std units. threshold, softness (> 0): same units.
    Returns:
        same shape, in [0, 1].
    """
    u = ((score - (threshold - softness)) / (2.0 * softness)).clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _grey_opening(m: Tensor, radius: int) -> Tensor:
    """Grey-scale opening (erosion then dilation) with a (2r+1)^2 square; removes specks."""
    if radius <= 0:
        return m
    k = 2 * radius + 1
    eroded = -F.max_pool2d(-m, k, stride=1, padding=radius)
    return F.max_pool2d(eroded, k, stride=1, padding=radius)


def _to_work_size(x: Tensor, work_size: int) -> Tensor:
    h, w = x.shape[-2:]
    if work_size <= 0 or max(h, w) <= work_size:
        return x
    s = work_size / max(h, w)
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    return F.interpolate(x, size=size, mode="area")


class FallbackPrior(SemanticPrior):
    """Weight-free prior: per-pixel soft thresholds of the IR / VIS score maps.

    ``M_ir = open(soft_threshold(z_ir, ir_threshold, softness))`` marks warm targets (people, cars,
    engines); ``M_vis = open(soft_threshold(z_vis, vis_threshold, softness))`` marks textured /
    high-contrast visible structure. See the module docstring for the score maps.

    Args:
        device: where the computation runs (inputs must already be there).
        work_size: longest side of the working resolution (0 = full resolution).
        open_radius: radius in working pixels of the grey-scale opening (0 disables it).
        **params: overrides of :class:`SaliencyParams` fields (e.g. ``ir_threshold=2.0``).
    """

    def __init__(self, device: str | torch.device = "cpu", *, work_size: int = 320, open_radius: int = 1,
                 **params: float) -> None:
        allowed = sorted(f.name for f in fields(SaliencyParams))
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"unknown fallback prior option(s) {unknown}; allowed: "
                             f"{sorted(['work_size', 'open_radius', *allowed])}")
        if int(work_size) < 0:
            raise ValueError(f"work_size must be >= 0, got {work_size!r}")
        if int(open_radius) < 0:
            raise ValueError(f"open_radius must be >= 0, got {open_radius!r}")
        self.name = "fallback"
        self.device = torch.device(device)
        self.work_size = int(work_size)
        self.open_radius = int(open_radius)
        self.params = SaliencyParams(**{k: float(v) for k, v in params.items()})

    @torch.no_grad()
    def masks(self, thermal: Tensor, visible_rgb: Tensor) -> tuple[Tensor, Tensor]:
        """See :meth:`SemanticPrior.masks`. thermal [N,1,H,W], visible_rgb [N,3,H,W] in [0,1]
        -> (m_ir, m_vis), each [N,1,H,W] float32 in [0,1] on ``self.device``."""
        thermal, visible_rgb = self._check_inputs(thermal, visible_rgb)
        h, w = thermal.shape[-2:]
        p = self.params
        t = _to_work_size(thermal, self.work_size)
        v = _to_work_size(visible_rgb, self.work_size)
        m_ir = soft_threshold(ir_score_map(t, p), p.ir_threshold, p.softness)
        m_vis = soft_threshold(vis_score_map(v, p), p.vis_threshold, p.softness)
        m = _grey_opening(torch.cat([m_ir, m_vis], dim=1), self.open_radius)
        if m.shape[-2:] != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        m = m.clamp(0.0, 1.0)
        return m[:, 0:1].contiguous(), m[:, 1:2].contiguous()
