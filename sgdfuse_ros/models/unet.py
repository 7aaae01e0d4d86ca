"""Compact conditional U-Net backbone of Stage II (DDPM-style blocks, decoder features for a multi-level head).

Layout for ``channel_mults = (1, 2, 4, 4)``, base width B, input [N, C_in, H, W] with H, W multiples of 8::

    conv_in 3x3 (C_in -> B)
    encoder level l (l = 0..3, resolution H / 2^l, width B * mult_l): res blocks -> skip_l -> 3x3 stride-2 conv
    middle (lowest resolution): res block -> multi-head self-attention -> res block
    decoder level l (3..0): 2x nearest upsample + 3x3 conv (not at the lowest level) -> concat skip_l -> res blocks

Every residual block is GroupNorm -> SiLU -> 3x3 conv -> (+ time embedding) -> GroupNorm -> SiLU -> dropout ->
3x3 conv, plus the (1x1-projected) input. The timestep enters through a sinusoidal embedding and an MLP, added
as a per-channel bias in every residual block. Self-attention runs only at the lowest resolution (global over
H/8 x W/8 tokens; 80x60 = 4800 tokens at 640x480). ``forward`` returns the decoder output of every level, coarse
to fine, for the Hierarchical Feature Aggregation Head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensor_cache import cached_constant

__all__ = ["AttentionBlock", "ResBlock", "UNet", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal timestep embedding (Transformer / DDPM): t [N] (int or float) -> [N, dim] float32.

    The first half holds cos(t * f_k), the second sin(t * f_k), with f_k = max_period^(-k / (dim/2)).
    """
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    args = t.float()[:, None] * _frequencies(dim // 2, float(max_period), t.device)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


@cached_constant()
def _frequencies(half: int, max_period: float, device: torch.device) -> Tensor:
    """f_k = max_period^(-k / half), k = 0 .. half-1, float32 on ``device`` (made once per network and device)."""
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block with GroupNorm and an additive time embedding: [N,C_in,H,W], [N,E] -> [N,C_out,H,W]."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, groups: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        # Zero-initialised last conv: every block starts as the identity (stable start, as in DDPM).
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Global multi-head self-attention over all positions, pre-GroupNorm, residual: [N,C,H,W] -> [N,C,H,W]."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        # [N, heads, tokens, head_dim]; SDPA picks a memory-efficient kernel where one exists.
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


class UNet(nn.Module):
    """Time-conditioned U-Net returning decoder features per level.

    forward(x [N, in_channels, H, W], t [N] long) -> list of [N, base * mult_l, H / 2^l, W / 2^l], coarse to
    fine (l = L-1 .. 0). H and W must be multiples of ``self.size_multiple`` (= 2^(L-1)); pad before.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 1,
        attn_heads: int = 4,
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channel_mults or num_res_blocks < 1:
            raise ValueError("need at least one level and one residual block per level")
        self.base_channels = base_channels
        self.size_multiple = 2 ** (len(channel_mults) - 1)
        temb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim)
        )
        widths = [base_channels * m for m in channel_mults]
        self.widths = tuple(widths)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        ch = base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, width, temb_dim, groups, dropout))
                ch = width
            self.down_blocks.append(blocks)
            last = level == len(widths) - 1
            self.downsamples.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, stride=2, padding=1))

        self.mid1 = ResBlock(ch, ch, temb_dim, groups, dropout)
        self.mid_attn = AttentionBlock(ch, attn_heads, groups)
        self.mid2 = ResBlock(ch, ch, temb_dim, groups, dropout)

        self.upsamples = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            lowest = level == len(widths) - 1
            self.upsamples.append(nn.Identity() if lowest else nn.Conv2d(ch, width, 3, padding=1))
            ch = ch if lowest else width
            blocks = nn.ModuleList()
            in_ch = ch + width  # upsampled features + skip
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(in_ch, width, temb_dim, groups, dropout))
                in_ch = width
            self.up_blocks.append(blocks)
            ch = width

    def forward(self, x: Tensor, t: Tensor) -> list[Tensor]:
        h_in, w_in = x.shape[-2:]
        if h_in % self.size_multiple or w_in % self.size_multiple:
            raise ValueError(f"input size {(h_in, w_in)} must be a multiple of {self.size_multiple}")
        temb = self.time_mlp(timestep_embedding(t, self.base_channels))
        h = self.conv_in(x)
        skips = []
        for blocks, down in zip(self.down_blocks, self.downsamples, strict=True):
            for block in blocks:
                h = block(h, temb)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        features = []
        for up, blocks, skip in zip(self.upsamples, self.up_blocks, reversed(skips), strict=True):
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, temb)
            features.append(h)
        return features
