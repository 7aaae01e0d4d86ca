"""No wasted work per frame, without changing a result: F1 reaches the host only when asked for, Stage II's seeded
start noise is drawn once per (size, seed, device), and constant tensors (kernels, frequency tables, masks) are
made once and work under inference mode and autograd alike."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros.config import FuseConfig
from sgdfuse_ros.frame_core import FrameCore
from sgdfuse_ros.models import diffusion
from sgdfuse_ros.models.diffusion import NoiseSchedule, ddim_step, seeded_noise
from sgdfuse_ros.models.stage1 import _key_mask
from sgdfuse_ros.models.stage2 import DiffusionRefiner, Stage2Config, build_stage2, to_signed, to_unit
from sgdfuse_ros.models.unet import timestep_embedding
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.priors.fallback import gaussian_blur
from sgdfuse_ros.sync import PairAccounting

PAIRS = Path(__file__).resolve().parents[1] / "samples" / "pairs"
SMALL = Stage2Config(base_channels=8, channel_mults=(1, 2, 2), attn_heads=2, hfah_width=4, hfah_hidden=8)


class _Image:
    """The sensor_msgs/Image fields FrameCore decodes."""

    def __init__(self, image: np.ndarray, encoding: str) -> None:
        class _Header:
            class stamp:  # noqa: N801 - mirrors the message field
                sec, nanosec = 1, 0

            frame_id = "camera"

        self.header = _Header()
        self.height, self.width = image.shape[:2]
        self.encoding, self.is_bigendian, self.step = encoding, 0, int(image.strides[0])
        self.data = image.tobytes()


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    ir = cv2.resize(cv2.imread(str(PAIRS / "ir" / "FLIR_08835.jpg"), cv2.IMREAD_GRAYSCALE), (80, 64))
    vi = cv2.resize(cv2.imread(str(PAIRS / "vi" / "FLIR_08835.jpg"), cv2.IMREAD_COLOR), (80, 64))[:, :, ::-1]
    return ir, np.ascontiguousarray(vi)


def _randomised(seed: int = 0) -> torch.nn.Module:
    model = build_stage2(SMALL)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def test_preliminary_comes_back_only_when_asked_for(pair) -> None:
    thermal, rgb = pair
    pipeline = FusionPipeline.from_config(FuseConfig().updated({"prior.kind": "fallback"}))
    plain = pipeline.fuse(thermal, rgb)
    assert plain.preliminary is None
    kept = pipeline.fuse(thermal, rgb, keep_preliminary=True)
    # Without Stage II the fused image is F1; the copy is not the same array.
    assert np.array_equal(kept.preliminary, kept.fused) and kept.preliminary is not kept.fused
    assert np.array_equal(kept.fused, plain.fused) and np.array_equal(kept.mask_ir, plain.mask_ir)
    # The frame core asks for it when its adapter does (the node with node.publish_preliminary).
    for keep in (False, True):
        core = FrameCore(pipeline, PairAccounting(0.05, 10), keep_preliminary=keep)
        outcome = core.process(_Image(thermal, "mono8"), _Image(rgb, "rgb8"), received=0.0)
        assert (outcome.result.preliminary is not None) is keep


def test_preliminary_with_stage2_is_f1_not_the_refined_image(pair) -> None:
    thermal, rgb = pair
    pipeline = FusionPipeline.from_config(FuseConfig().updated({"prior.kind": "fallback"}))
    reference = pipeline.fuse(thermal, rgb, keep_preliminary=True)
    pipeline.refiner = DiffusionRefiner(_randomised(), NoiseSchedule(), steps=2, strength=0.4)
    refined = pipeline.fuse(thermal, rgb, keep_preliminary=True)
    assert np.array_equal(refined.preliminary, reference.fused)
    assert not np.array_equal(refined.fused, refined.preliminary)
    assert pipeline.fuse(thermal, rgb).preliminary is None


def _old_refine(refiner: DiffusionRefiner, f1: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """DiffusionRefiner.refine as it was before the start noise was cached: noise drawn afresh on every call."""
    cond = torch.cat([f1, masks], dim=1)
    x_start = to_signed(f1)
    sampler = refiner.sampler
    abar = [float(a) for a in refiner.schedule.alphas_cumprod]
    noise = seeded_noise(tuple(x_start.shape), refiner.seed, x_start.device, torch.float32)
    t0 = sampler.timesteps[0]
    x = abar[t0] ** 0.5 * x_start + (1.0 - abar[t0]) ** 0.5 * noise
    x0_hat = x_start
    for i, t in enumerate(sampler.timesteps):
        x0_hat = refiner.model(x, torch.full((1,), t, dtype=torch.long), cond).float()
        if i + 1 < len(sampler.timesteps):
            x = ddim_step(x, x0_hat, abar[t], abar[sampler.timesteps[i + 1]])
    return to_unit(x0_hat)


def test_stage2_start_noise_is_drawn_once_and_outputs_stay_bit_identical(monkeypatch) -> None:
    generator = torch.Generator().manual_seed(3)
    f1 = torch.rand(1, 3, 40, 56, generator=generator)
    masks = torch.rand(1, 2, 40, 56, generator=generator)
    refiner = DiffusionRefiner(_randomised(), NoiseSchedule(), steps=3, strength=0.5, seed=7)
    with torch.inference_mode():
        expected = _old_refine(refiner, f1, masks)
    draws = []

    def counting(*args, **kwargs):
        draws.append(args[0])
        return seeded_noise(*args, **kwargs)

    monkeypatch.setattr(diffusion, "seeded_noise", counting)
    with torch.inference_mode():
        first = refiner.refine(f1, masks[:, :1], masks[:, 1:])
        second = refiner.refine(f1, masks[:, :1], masks[:, 1:])
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert draws == [(1, 3, 40, 56)]
    # Outside inference mode too (the cached noise is an ordinary tensor), and a new size draws anew.
    with torch.no_grad():
        assert torch.equal(refiner.refine(f1, masks[:, :1], masks[:, 1:]), expected)
        refiner.refine(f1[..., :32], masks[:, :1, :, :32], masks[:, 1:, :, :32])
    assert draws == [(1, 3, 40, 56), (1, 3, 40, 32)]
    refiner.to("cpu")  # a device move drops the cache
    with torch.no_grad():
        refiner.refine(f1, masks[:, :1], masks[:, 1:])
    assert len(draws) == 3


def test_cached_constants_equal_the_formulas_and_serve_autograd_after_inference() -> None:
    t = torch.tensor([0, 10, 999])
    half = 8
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    with torch.inference_mode():
        cached = timestep_embedding(t, 2 * half)
    assert torch.equal(cached, torch.cat([torch.cos(args), torch.sin(args)], dim=1))
    assert _key_mask(1, 12, 16, 8, torch.device("cpu")) is _key_mask(1, 12, 16, 8, torch.device("cpu"))
    assert _key_mask(1, 16, 16, 8, torch.device("cpu")) is None
    # A blur first run under inference mode (the pipeline), then with autograd (training): the cached kernel
    # is no inference tensor, so backward works.
    image = torch.rand(1, 1, 32, 32)
    with torch.inference_mode():
        reference = gaussian_blur(image, 1.5)
    x = image.clone().requires_grad_(True)
    blurred = gaussian_blur(x, 1.5)
    blurred.sum().backward()
    assert torch.equal(blurred.detach(), reference) and x.grad is not None
