"""Stage I of SGDFuse: preliminary fusion of thermal and visible luminance.

Layout (strides relative to the input; C = embed_dim, D = attn_dim, K = head_dim)::

    IR  [N,1,H,W] -> conv s2 (1->C) -> MSFEM  = ir2  [N,C,H/2,W/2] -> conv s2 (C->D)                = ir4
    VIS [N,1,H,W] -> conv s2 (1->C)          = vis2 [N,C,H/2,W/2] -> conv s2 (C->D) -> Transformer = vis4
    windowed cross-attention (IR <-> VIS, merged)                      (ir4, vis4) -> f4 [N,H/4,W/4,D]
    decoder at H/2: [1x1 (D->C) of f4, upsampled x2] ++ ir2 ++ vis2 -> 2 convs -> 1x1 (C->K) -> upsample x2
    full-resolution head: [context (K), IR, VIS] -> conv 3x3 (K+2->K) -> conv 3x3 (K->2) = (w logit, residual r)
    fused luminance = clip(w * IR + (1 - w) * VIS + r, 0, 1)  [N,1,H,W]

Why this shape: the paper gives the module types (MSFEM on IR, a Transformer block on VIS, cross-attention),
not sizes. The encoder is small enough for CPU use at 640x480: the multi-scale convolutions and the decoder run
at half resolution, attention at quarter resolution inside non-overlapping windows (8x8 tokens = 32x32 pixels).
The head is what makes the picture (docs/training.md, "causes"): a network that synthesises every output pixel
from half-resolution features through a sigmoid was soft (it cannot carry full-resolution detail), hazy out of
domain (black needs a logit of -5.5 it never learned on daylight RoadScene) and banded (zero padding of centred
inputs is mid-grey). Here the context decides, per pixel, how much of each source to keep, the sources' own
full-resolution pixels carry the detail, and a learned residual adds what neither source shows alone. Two thin
full-resolution convolutions with replicate padding cost about 15 ms at 640x480 on two CPU threads. Any
H, W >= 16 works: strided convolutions round up, the attention pads its token grid to whole windows with the
padded keys masked out, and the upsampled context is cropped back to H x W.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensor_cache import cached_constant
from .checkpoint import cpu_state_dict, read_checkpoint

__all__ = [
    "MSFEM",
    "CrossAttentionFusion",
    "Stage1Config",
    "StageOneFusion",
    "TransformerBlock",
    "WindowAttention",
    "build_stage1",
    "compose_fused",
    "default_stage1_weights_path",
    "load_stage1",
    "window_partition",
    "window_unpartition",
]

MIN_SIZE = 16


@dataclass
class Stage1Config:
    """Architecture of the Stage I network (everything needed to rebuild it from a checkpoint).

    Attributes:
        embed_dim: channels at half resolution (C): embeddings, MSFEM width, decoder width.
        branch_dim: channels of each MSFEM branch (1x1, 3x3, 5x5, 7x7).
        attn_dim: token width at quarter resolution (D) for the Transformer and cross-attention.
        num_heads: attention heads (attn_dim must be divisible by it).
        window_size: side of the square attention windows, in quarter-resolution tokens.
        mlp_ratio: hidden width of the Transformer MLPs relative to attn_dim.
        head_dim: channels of the full-resolution head (upsampled context features).
    """

    embed_dim: int = 16
    branch_dim: int = 16
    attn_dim: int = 32
    num_heads: int = 4
    window_size: int = 8
    mlp_ratio: float = 2.0
    head_dim: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Stage1Config.{f.name} must be a positive number, got {value!r}")
        if self.attn_dim % self.num_heads:
            raise ValueError(f"attn_dim {self.attn_dim} is not divisible by num_heads {self.num_heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Stage1Config:
        """Rebuild from ``to_dict`` output; unknown keys are an error (they mean a different architecture)."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Stage1Config keys: {sorted(unknown)}")
        return cls(**data)


# ----------------------------------------------------------------------------------------------------------
# IR branch: Multi-Scale Feature Enhancement Module
# ----------------------------------------------------------------------------------------------------------


class MSFEM(nn.Module):
    """Multi-Scale Feature Enhancement Module (paper, Stage I IR branch).

    [N,C,H,W] -> [N,C,H,W]. Parallel 1x1 / 3x3 / 5x5 / 7x7 convolutions; the 3/5/7 outputs are concatenated
    and enhanced by depthwise -> pointwise -> depthwise convolutions, concatenated with the 1x1 branch, passed
    through the additive channel-attention gate, projected back to C channels and added to the input.
    """

    def __init__(self, dim: int, branch_dim: int) -> None:
        super().__init__()
        b = branch_dim
        self.conv1 = nn.Conv2d(dim, b, 1)
        self.conv3 = nn.Conv2d(dim, b, 3, padding=1)
        self.conv5 = nn.Conv2d(dim, b, 5, padding=2)
        self.conv7 = nn.Conv2d(dim, b, 7, padding=3)
        self.enhance = nn.Sequential(
            nn.Conv2d(3 * b, 3 * b, 3, padding=1, groups=3 * b),  # depthwise
            nn.Conv2d(3 * b, b, 1),  # pointwise, 3b -> b
            nn.Conv2d(b, b, 3, padding=1, groups=b),  # depthwise
        )
        self.gate = nn.Conv2d(2 * b, 2 * b, 1)
        self.proj = nn.Conv2d(2 * b, dim, 1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        shallow = self.conv1(x)
        multi = torch.cat([self.conv3(x), self.conv5(x), self.conv7(x)], dim=1)
        feats = torch.cat([self.enhance(self.act(multi)), shallow], dim=1)
        # Channel attention as the authors' repository implements it (MSFEM.py): a sigmoid of a 1x1
        # projection that is ADDED to the features, not multiplied with them. We keep that behaviour on
        # purpose; the learned projection that follows lets the residual branch use any range.
        feats = feats + torch.sigmoid(self.gate(feats))
        return x + self.proj(feats)


# ----------------------------------------------------------------------------------------------------------
# Windowed attention (VIS Transformer block and cross-attention)
# ----------------------------------------------------------------------------------------------------------


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, int]]:
    """Split a channels-last map into non-overlapping windows, zero-padding bottom/right to whole windows.

    Args:
        x: [N, H, W, C].
        window_size: window side ws.
    Returns:
        windows [N * nH * nW, ws * ws, C] (batch-major, then row-major windows) and the padded size (Hp, Wp).
    """
    n, h, w, c = x.shape
    ws = window_size
    pad_h, pad_w = (-h) % ws, (-w) % ws
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(n, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c), (hp, wp)


def window_unpartition(windows: Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of ``window_partition``: [N * nH * nW, ws * ws, C] -> [N, H, W, C], cropping the padding."""
    hp, wp = padded_hw
    h, w = hw
    ws = window_size
    c = windows.shape[-1]
    n = windows.shape[0] // ((hp // ws) * (wp // ws))
    x = windows.view(n, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, c)
    return x[:, :h, :w, :]


def _key_mask(n: int, h: int, w: int, window_size: int, device: torch.device) -> Tensor | None:
    """Boolean attention mask [N * nWin, 1, 1, ws*ws] that is False on padded keys; None when nothing is padded."""
    if h % window_size == 0 and w % window_size == 0:
        return None
    return _padded_key_mask(n, h, w, window_size, device)


@cached_constant()
def _padded_key_mask(n: int, h: int, w: int, window_size: int, device: torch.device) -> Tensor:
    """:func:`_key_mask` for a padded grid, made once per (batch, size, window, device)."""
    valid = torch.ones(1, h, w, 1, device=device)
    windows, _ = window_partition(valid, window_size)  # [nWin, T, 1]
    mask = windows[..., 0] > 0.5
    return mask.repeat(n, 1)[:, None, None, :]


class WindowAttention(nn.Module):
    """Multi-head attention inside non-overlapping windows.

    Queries come from ``x``; keys and values from ``context`` (self-attention when ``context`` is None).
    Both are channels-last [N, H, W, D] on the same grid; output [N, H, W, D]. Any H, W: the grid is padded
    to whole windows and padded keys are masked out, so results at real positions do not depend on padding.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        n, h, w, d = x.shape
        context = x if context is None else context
        if context.shape != x.shape:
            raise ValueError(f"context shape {tuple(context.shape)} differs from query shape {tuple(x.shape)}")
        ws = self.window_size
        qw, padded = window_partition(x, ws)
        cw, _ = window_partition(context, ws) if context is not x else (qw, padded)
        b, t, _ = qw.shape
        heads = self.num_heads
        q = self.q(qw).view(b, t, heads, d // heads).transpose(1, 2)
        k, v = self.kv(cw).view(b, t, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        mask = _key_mask(n, h, w, ws, x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return window_unpartition(out, ws, padded, (h, w))


class Mlp(nn.Module):
    """Token MLP: Linear -> GELU -> Linear, [..., D] -> [..., D]."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block with windowed multi-head self-attention. [N,H,W,D] -> [N,H,W,D]."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(round(dim * mlp_ratio)))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttentionFusion(nn.Module):
    """Symmetric windowed cross-attention between IR and VIS tokens, merged into one stream.

    IR tokens query VIS tokens (pick up the visible texture that lines up with thermal structure) and VIS
    tokens query IR tokens (pick up thermal saliency behind visible structure). Both directions read the same
    normalised inputs, so neither modality is privileged; a linear layer then merges the two updated streams
    and an MLP refines the result. Inputs [N,H,W,D] each; output [N,H,W,D].
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_ir = nn.LayerNorm(dim)
        self.norm_vis = nn.LayerNorm(dim)
        self.ir_from_vis = WindowAttention(dim, num_heads, window_size)
        self.vis_from_ir = WindowAttention(dim, num_heads, window_size)
        self.merge = nn.Linear(2 * dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(round(dim * mlp_ratio)))

    def forward(self, ir: Tensor, vis: Tensor) -> Tensor:
        a, b = self.norm_ir(ir), self.norm_vis(vis)
        ir = ir + self.ir_from_vis(a, b)
        vis = vis + self.vis_from_ir(b, a)
        x = self.merge(torch.cat([ir, vis], dim=-1))
        return x + self.mlp(self.norm_out(x))


# ----------------------------------------------------------------------------------------------------------
# Full network
# ----------------------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GELU())


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1)


def _nchw(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def _up_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class StageOneFusion(nn.Module):
    """Stage I fusion network: (IR, VIS luminance) -> fused luminance Y_f = clip(w·IR + (1−w)·VIS + r, 0, 1).

    forward(ir [N,1,H,W] in [0,1], vis_y [N,1,H,W] in [0,1]) -> [N,1,H,W] in [0,1]; any H, W >= 16. The
    per-pixel weight w and residual r are the network's prediction (``compose_fused``).
    """

    def __init__(self, config: Stage1Config | None = None) -> None:
        super().__init__()
        cfg = config or Stage1Config()
        self.config = cfg
        c, d = cfg.embed_dim, cfg.attn_dim
        # IR branch: shallow embedding (stride 2 keeps every pixel inside some 3x3 window, C >= 4 channels
        # can carry the 2x2 block losslessly), then MSFEM.
        self.ir_embed = _conv(1, c, stride=2)
        self.msfem = MSFEM(c, cfg.branch_dim)
        self.ir_tokens = nn.Conv2d(c, d, 3, stride=2, padding=1)
        # VIS branch: embedding, then a windowed Transformer block on quarter-resolution tokens.
        self.vis_embed = _conv(1, c, stride=2)
        self.vis_tokens = nn.Conv2d(c, d, 3, stride=2, padding=1)
        self.vis_transformer = TransformerBlock(d, cfg.num_heads, cfg.window_size, cfg.mlp_ratio)
        # Cross-attention fusion, then a decoder at half resolution that gives the head its context.
        self.cross = CrossAttentionFusion(d, cfg.num_heads, cfg.window_size, cfg.mlp_ratio)
        self.fused_reduce = nn.Conv2d(d, c, 1)
        self.decoder = nn.Sequential(_conv(3 * c, c), _conv(c, c))
        # Full-resolution head: the half-resolution context (upsampled) meets the full-resolution inputs, and two
        # 3x3 convolutions predict, per pixel, how much of each source to keep and a detail residual. Replicate
        # padding: the image edge is not an edge (zero padding made a bright frame).
        k = cfg.head_dim
        self.to_full = nn.Conv2d(c, k, 1)
        self.head = nn.Sequential(
            nn.Conv2d(k + 2, k, 3, padding=1, padding_mode="replicate"),
            nn.GELU(),
            nn.Conv2d(k, 2, 3, padding=1, padding_mode="replicate"),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.groups > 1:  # depthwise: fan_out counts one input channel, keep the scale moderate
                    m.weight.data.mul_(1.0 / math.sqrt(m.kernel_size[0] * m.kernel_size[1]))
                nn.init.zeros_(m.bias)
        # Start as the pixel average of the sources (weight sigmoid(0) = 0.5, no residual), not random contrast.
        nn.init.normal_(self.head[-1].weight, std=1e-3)

    def forward(self, ir: Tensor, vis_y: Tensor) -> Tensor:
        if ir.dim() != 4 or ir.shape[1] != 1 or vis_y.shape != ir.shape:
            raise ValueError(
                f"expected ir and vis_y of the same shape [N,1,H,W], got {tuple(ir.shape)} and {tuple(vis_y.shape)}"
            )
        h, w = ir.shape[-2:]
        if min(h, w) < MIN_SIZE:
            raise ValueError(f"images must be at least {MIN_SIZE}x{MIN_SIZE}, got {(h, w)}")
        # Channels-last is markedly faster for these thin convolutions on CPU (oneDNN); centre inputs to [-1, 1].
        cl = torch.channels_last
        ir_in = (ir * 2.0 - 1.0).contiguous(memory_format=cl)
        vis_in = (vis_y * 2.0 - 1.0).contiguous(memory_format=cl)

        ir2 = self.msfem(self.ir_embed(ir_in))  # [N,C,H/2,W/2]
        vis2 = self.vis_embed(vis_in)  # [N,C,H/2,W/2]
        ir4 = _nhwc(self.ir_tokens(ir2))  # [N,H/4,W/4,D]
        vis4 = self.vis_transformer(_nhwc(self.vis_tokens(vis2)))
        fused4 = _nchw(self.cross(ir4, vis4))  # [N,D,H/4,W/4]

        x = _up_to(self.fused_reduce(fused4), ir2)
        x = self.decoder(torch.cat([x, ir2, vis2], dim=1))  # [N,C,H/2,W/2]
        context = F.interpolate(self.to_full(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        head = self.head(torch.cat([context[..., :h, :w], ir_in, vis_in], dim=1))  # [N,2,H,W]
        return compose_fused(head, ir, vis_y)


def compose_fused(head: Tensor, ir: Tensor, vis_y: Tensor) -> Tensor:
    """Per-pixel composition of the sources that the Stage I head predicts.

    Args:
        head: [N,2,H,W]: channel 0 the logit of the thermal weight w, channel 1 the detail residual r.
        ir, vis_y: [N,1,H,W] in [0,1].
    Returns:
        w * ir + (1 - w) * vis_y + r, clipped to [0,1]: [N,1,H,W]. The sources' full-resolution detail reaches
        the output through w unchanged; r is whatever the network adds (contrast, edges where the two disagree).
    """
    weight = torch.sigmoid(head[:, :1])
    fused = weight * ir + (1.0 - weight) * vis_y + head[:, 1:2]
    return fused.clamp(0.0, 1.0).contiguous()


def build_stage1(config: Stage1Config | None = None) -> StageOneFusion:
    """Build an untrained Stage I network (default architecture when ``config`` is None)."""
    return StageOneFusion(config)


def default_stage1_weights_path() -> Path:
    """Path of the Stage I weights shipped with the package (trained on RoadScene only)."""
    return Path(__file__).resolve().parent.parent / "weights" / "stage1_roadscene.pt"


def stage1_checkpoint(model: StageOneFusion) -> dict:
    """The shipped checkpoint format: {"config": dict, "state_dict": {name: float32 CPU tensor}}."""
    return {"config": model.config.to_dict(), "state_dict": cpu_state_dict(model)}


def load_stage1(path: str | Path, device: str | torch.device = "cpu") -> StageOneFusion:
    """Load Stage I weights saved as {"config": dict, "state_dict": ...}; returns the model in eval mode.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file is unreadable or does not hold a matching Stage I checkpoint (names the path).
    """
    ckpt = read_checkpoint(path, device, "Stage I")
    if not isinstance(ckpt.get("config"), dict):
        raise ValueError(f"{path} is not a Stage I checkpoint (expected a dict with 'config' and 'state_dict')")
    try:
        model = StageOneFusion(Stage1Config.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} does not match the Stage I network: {exc}") from exc
    return model.to(device).eval()
