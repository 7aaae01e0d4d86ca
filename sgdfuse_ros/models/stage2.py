"""Stage II of SGDFuse: SAM-guided conditional diffusion refinement of F1 (x0 parameterisation).

Network (``Stage2Model``): a compact time-conditioned U-Net (``unet.UNet``) whose input is the noisy image x_t
(3 channels, [-1, 1] scale) concatenated with the condition (mapped to [-1, 1]): the paper's [F1 (3), M_ir (1),
M_vis (1)], or with ``Stage2Config.condition = "f1_masks_sources"`` also the sources [IR (1), Y_vis (1)],
and a Hierarchical Feature Aggregation Head (``hfah``) over all decoder levels (or, for the ablation, a plain
head on the finest level). The head's Tanh output is the predicted clean image x0_hat in [-1, 1]; with
``output_skip`` the head adds atanh(F1) inside the Tanh, so an all-zero last layer predicts F1 itself and the
network learns the correction of F1 (see docs/stage2.md for the full formulation).

Inference (``DiffusionRefiner``, the pipeline's Refiner): noise F1 to the start timestep given by ``strength``
with a generator seeded by ``seed``, run ``steps`` deterministic DDIM updates (eta = 0), return the last x0
estimate mapped to [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import cpu_state_dict, read_checkpoint
from .diffusion import DDIMSampler, NoiseSchedule, ScheduleConfig
from .hfah import HierarchicalFeatureAggregationHead, PlainHead
from .unet import UNet

__all__ = [
    "COND_CHANNELS",
    "CONDITIONS",
    "DiffusionRefiner",
    "Stage2Config",
    "Stage2Model",
    "build_stage2",
    "default_stage2_weights_path",
    "load_refiner",
    "load_stage2",
    "stage2_checkpoint",
]

#: Condition channels per ``Stage2Config.condition``: the paper's F1 (RGB) + M_ir + M_vis, or those plus the
#: sources (thermal IR and visible luminance Y_vis), which let the network correct F1 towards what the cameras saw.
COND_CHANNELS = {"f1_masks": 5, "f1_masks_sources": 7}
CONDITIONS = tuple(COND_CHANNELS)
#: F1 is clamped to [-1 + eps, 1 - eps] before atanh in the output skip (atanh(+-1) is infinite).
_SKIP_CLAMP = 1.0 - 1e-3
CHECKPOINT_FORMAT = "sgdfuse_ros stage2 checkpoint v1"


@dataclass
class Stage2Config:
    """Architecture of the Stage II network (saved in every checkpoint).

    The default is a compact model (3.0 M parameters) instead of the authors' 62 M configuration
    (base 64, multipliers 1,2,4,8, 2 residual blocks per level): real-time use needs few and cheap steps.
    """

    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    attn_heads: int = 4
    groups: int = 8
    dropout: float = 0.0
    use_hfah: bool = True
    hfah_width: int = 16
    hfah_hidden: int = 32
    output_skip: bool = True
    #: The U-Net runs on the pixel-unshuffled input (factor 2: H/2 x W/2 with 4x the channels, lossless) and the
    #: head predicts each 2x2 output block: 4x fewer full-resolution convolutions, which dominate CPU latency.
    stem_factor: int = 2
    #: "f1_masks" (the paper: [F1, M_ir, M_vis]) or "f1_masks_sources" (also [IR, Y_vis]).
    condition: str = "f1_masks"

    def __post_init__(self) -> None:
        if self.condition not in COND_CHANNELS:
            raise ValueError(f"Stage2Config.condition must be one of {CONDITIONS}, got {self.condition!r}")
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        for name in (
            "base_channels", "num_res_blocks", "attn_heads", "groups", "hfah_width", "hfah_hidden", "stem_factor"
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Stage2Config.{name} must be >= 1, got {getattr(self, name)!r}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise ValueError(f"Stage2Config.channel_mults must be positive integers, got {self.channel_mults!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Stage2Config.dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        return data

    @property
    def cond_channels(self) -> int:
        return COND_CHANNELS[self.condition]

    @property
    def uses_sources(self) -> bool:
        return self.condition == "f1_masks_sources"

    @classmethod
    def from_dict(cls, data: dict) -> Stage2Config:
        """Rebuild from ``to_dict`` output; unknown keys are an error (they mean a different architecture)."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown Stage2Config keys: {sorted(unknown)}")
        return cls(**data)


def to_signed(x: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


class Stage2Model(nn.Module):
    """Conditional x0-predicting denoiser.

    forward(x_t [N,3,H,W] (diffusion scale, x0 in [-1,1]), t [N] long in [0, T-1],
            cond [N,C,H,W] = [F1 RGB, M_ir, M_vis] (C = 5) or [F1 RGB, M_ir, M_vis, IR, Y_vis] (C = 7, per
            ``config.condition``), all in [0, 1]) -> x0_hat [N,3,H,W] in [-1, 1].
    Any H, W >= 1: inputs are replicate-padded to a multiple of ``size_multiple`` = stem_factor * 2^(levels-1)
    (16 by default) and the output is cropped back.
    """

    def __init__(self, config: Stage2Config | None = None) -> None:
        super().__init__()
        cfg = config or Stage2Config()
        self.config = cfg
        s = cfg.stem_factor
        self.unet = UNet(
            in_channels=(3 + cfg.cond_channels) * s * s,
            base_channels=cfg.base_channels,
            channel_mults=cfg.channel_mults,
            num_res_blocks=cfg.num_res_blocks,
            attn_heads=cfg.attn_heads,
            groups=cfg.groups,
            dropout=cfg.dropout,
        )
        if cfg.use_hfah:
            # Decoder features arrive coarse to fine (the finest last), as the head expects.
            self.head: nn.Module = HierarchicalFeatureAggregationHead(
                tuple(reversed(self.unet.widths)), cfg.hfah_width, cfg.hfah_hidden, 3, cfg.groups, upscale=s
            )
        else:
            self.head = PlainHead(self.unet.widths[0], 3, cfg.groups, upscale=s)
        self.size_multiple = s * self.unet.size_multiple

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if x_t.dim() != 4 or x_t.shape[1] != 3:
            raise ValueError(f"x_t must be [N,3,H,W], got {tuple(x_t.shape)}")
        c = self.config.cond_channels
        if cond.shape != (x_t.shape[0], c, *x_t.shape[-2:]):
            raise ValueError(f"cond must be [N,{c},H,W] matching x_t, got {tuple(cond.shape)}")
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be [N] with N = {x_t.shape[0]}, got {tuple(t.shape)}")
        h, w = x_t.shape[-2:]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        cond_signed = to_signed(cond)
        x = torch.cat([x_t, cond_signed], dim=1)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        if self.config.stem_factor > 1:
            x = F.pixel_unshuffle(x, self.config.stem_factor)
        # Channels-last runs these thin convolutions faster on the CPU (oneDNN) and on CUDA tensor cores.
        x = x.contiguous(memory_format=torch.channels_last)
        residual = None
        if self.config.output_skip:
            f1 = cond_signed[:, :3].clamp(-_SKIP_CLAMP, _SKIP_CLAMP)
            residual = torch.atanh(f1)
            if pad_h or pad_w:
                residual = F.pad(residual, (0, pad_w, 0, pad_h), mode="replicate")
        out = self.head(self.unet(x, t), residual)
        return out[..., :h, :w].contiguous()


def build_stage2(config: Stage2Config | None = None, **overrides: object) -> Stage2Model:
    """Untrained Stage II network; ``overrides`` replace Stage2Config fields (e.g. ``use_hfah=False``)."""
    cfg = config or Stage2Config()
    if overrides:
        cfg = Stage2Config.from_dict({**cfg.to_dict(), **overrides})
    return Stage2Model(cfg)


def default_stage2_weights_path() -> Path:
    """Path of the Stage II weights shipped with the package (trained on RoadScene only)."""
    return Path(__file__).resolve().parent.parent / "weights" / "stage2_roadscene.pt"


def stage2_checkpoint(model: Stage2Model, schedule: NoiseSchedule, extra: dict | None = None) -> dict:
    """The shipped checkpoint format: {"format", "config", "schedule", "state_dict" (float32 CPU), "meta"}."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "schedule": schedule.config.to_dict(),
        "state_dict": cpu_state_dict(model),
        "meta": dict(extra or {}),
    }


def load_stage2(path: str | Path, device: str | torch.device = "cpu") -> tuple[Stage2Model, NoiseSchedule]:
    """Load a Stage II checkpoint -> (model in eval mode on ``device``, its training noise schedule).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: unreadable file or not a matching Stage II checkpoint (the message names the path).
    """
    ckpt = read_checkpoint(path, device, "Stage II")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a Stage II checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    try:
        model = Stage2Model(Stage2Config.from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        schedule = NoiseSchedule(ScheduleConfig.from_dict(ckpt["schedule"]))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} does not match the Stage II network: {exc}") from exc
    return model.to(device).eval(), schedule


class DiffusionRefiner:
    """The pipeline's Stage II Refiner: few-step deterministic DDIM from a noised F1.

    Args:
        model: Stage II network (put in eval mode here).
        schedule: the noise schedule it was trained with.
        steps: network evaluations per frame (>= 1).
        strength: start timestep as a fraction of T, in (0, 1]; larger = more noise, more freedom to change F1.
        seed: seed of the start noise, drawn from a CPU generator seeded with it (once per image size and
            device, then reused), so the same frame gives the same output (no temporal flicker from the sampler).
        use_masks: False zeroes M_ir and M_vis in the condition (ablation "without semantic prior").
    """

    def __init__(
        self,
        model: Stage2Model,
        schedule: NoiseSchedule,
        steps: int = 4,
        strength: float = 0.5,
        seed: int = 0,
        use_masks: bool = True,
    ) -> None:
        self.model = model.eval()
        self.schedule = schedule
        self.sampler = DDIMSampler(schedule, steps=steps, strength=strength)
        self.steps, self.strength, self.seed, self.use_masks = int(steps), float(strength), int(seed), bool(use_masks)
        head = "hfah" if model.config.use_hfah else "plain-head"
        masks = "" if use_masks else ",no-masks"
        sources = ",sources" if model.config.uses_sources else ""
        self.name = f"diffusion(ddim{self.steps},strength={self.strength:g},{head}{sources}{masks})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> DiffusionRefiner:
        """Move the network to ``device`` (the sampler's cached start noise for the old device is dropped)."""
        self.model.to(device)
        self.sampler.clear_cache()
        return self

    @torch.no_grad()
    def refine(
        self,
        preliminary: Tensor,
        mask_ir: Tensor,
        mask_vis: Tensor,
        thermal: Tensor | None = None,
        visible_y: Tensor | None = None,
    ) -> Tensor:
        """F1 [N,3,H,W], M_ir [N,1,H,W], M_vis [N,1,H,W], IR [N,1,H,W], Y_vis [N,1,H,W], all in [0, 1] ->
        refined RGB [N,3,H,W] in [0, 1]. The sources are needed only by a model conditioned on them (ValueError
        when they are missing then) and ignored otherwise."""
        if preliminary.dim() != 4 or preliminary.shape[1] != 3:
            raise ValueError(f"preliminary must be [N,3,H,W], got {tuple(preliminary.shape)}")
        f1 = preliminary.float()
        masks = torch.cat([mask_ir, mask_vis], dim=1).to(f1.dtype)
        if not self.use_masks:
            masks = torch.zeros_like(masks)
        parts = [f1, masks]
        if self.model.config.uses_sources:
            if thermal is None or visible_y is None:
                raise ValueError("this Stage II model is conditioned on the sources: pass thermal and visible_y")
            parts += [thermal.to(f1.dtype), visible_y.to(f1.dtype)]
        cond = torch.cat(parts, dim=1)
        x0 = self.sampler.sample(lambda x_t, t: self.model(x_t, t, cond), to_signed(f1), seed=self.seed)
        return to_unit(x0)

    def __repr__(self) -> str:
        return f"DiffusionRefiner({self.name}, seed={self.seed}, device={self.device})"


def load_refiner(
    path: str | Path,
    device: str | torch.device = "cpu",
    steps: int = 4,
    strength: float = 0.5,
    seed: int = 0,
    use_masks: bool = True,
) -> DiffusionRefiner:
    """Load Stage II weights and wrap them in a ``DiffusionRefiner`` (errors as ``load_stage2``)."""
    model, schedule = load_stage2(path, device)
    return DiffusionRefiner(model, schedule, steps=steps, strength=strength, seed=seed, use_masks=use_masks)
