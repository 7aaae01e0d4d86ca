"""Hierarchical Feature Aggregation Head (HFAH) of the Stage II decoder, and the plain head used for ablation.

HFAH (paper, Stage II; the authors' repository reduces 64/128/256/512 channels to 64 each, head 64 -> 32 -> 3):
for every decoder level, channel attention (squeeze-and-excitation: global average pool -> 1x1 -> SiLU -> 1x1
-> sigmoid, multiplied with the features) and a 1x1 reduction to a common width; bilinear upsampling to the
finest level; concatenation; a 3x3 conv stack; a 3-channel output squashed by Tanh. Our U-Net runs on a
pixel-unshuffled input (half resolution), so the last conv predicts each 2x2 block of output pixels and a pixel
shuffle restores the full resolution before the Tanh.

Both heads accept an optional additive ``residual_logits`` [N,3,H,W] inside the Tanh (Stage II passes
atanh(F1) there, so that a zero last layer outputs F1 itself; see docs/stage2.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ChannelAttention", "HierarchicalFeatureAggregationHead", "PlainHead"]


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention: [N,C,H,W] -> [N,C,H,W] (features times per-channel gates)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return x * gate


def _shuffle(x: Tensor, upscale: int) -> Tensor:
    return F.pixel_shuffle(x, upscale) if upscale > 1 else x


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class HierarchicalFeatureAggregationHead(nn.Module):
    """Multi-level decoder features -> 3-channel image in [-1, 1].

    Args:
        in_channels: channels of each input level, in the order ``forward`` receives them.
        width: common width after the 1x1 reduction (per level).
        hidden: channels of the 3x3 conv stack.
        out_channels: output channels (3, RGB).
        upscale: the last conv predicts ``upscale`` x ``upscale`` output pixels per position (pixel shuffle),
            for a U-Net that runs on a pixel-unshuffled input.
    forward(features: list of [N, C_l, H_l, W_l] whose LAST entry is the finest level, residual_logits=None)
        -> [N, out_channels, upscale * H_finest, upscale * W_finest] in [-1, 1].
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        width: int = 16,
        hidden: int = 32,
        out_channels: int = 3,
        groups: int = 8,
        upscale: int = 1,
    ) -> None:
        super().__init__()
        self.upscale = upscale
        self.attention = nn.ModuleList(ChannelAttention(c) for c in in_channels)
        self.reduce = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        cat = width * len(in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(cat, hidden, 3, padding=1),
            _norm(hidden, groups),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
        )
        self.out = nn.Conv2d(hidden, out_channels * upscale**2, 3, padding=1)
        # Zero output layer: the head starts at tanh(residual_logits), i.e. at the conditioning image.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: list[Tensor], residual_logits: Tensor | None = None) -> Tensor:
        if len(features) != len(self.reduce):
            raise ValueError(f"expected {len(self.reduce)} feature levels, got {len(features)}")
        size = features[-1].shape[-2:]
        levels = []
        for feat, attend, reduce in zip(features, self.attention, self.reduce, strict=True):
            x = reduce(attend(feat))
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            levels.append(x)
        logits = _shuffle(self.out(self.fuse(torch.cat(levels, dim=1))), self.upscale)
        if residual_logits is not None:
            logits = logits + residual_logits
        return torch.tanh(logits)


class PlainHead(nn.Module):
    """Ablation head (no HFAH): finest decoder level only, GroupNorm -> SiLU -> 3x3 conv -> Tanh.

    forward(features, residual_logits=None) uses ``features[-1]`` [N, C, H, W]
        -> [N, out_channels, upscale * H, upscale * W].
    """

    def __init__(self, in_channels: int, out_channels: int = 3, groups: int = 8, upscale: int = 1) -> None:
        super().__init__()
        self.upscale = upscale
        self.norm = _norm(in_channels, groups)
        self.out = nn.Conv2d(in_channels, out_channels * upscale**2, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: list[Tensor], residual_logits: Tensor | None = None) -> Tensor:
        logits = _shuffle(self.out(F.silu(self.norm(features[-1]))), self.upscale)
        if residual_logits is not None:
            logits = logits + residual_logits
        return torch.tanh(logits)
