"""Stage II: network shapes, time conditioning, HFAH, refiner, mask-guided losses, training (resume, DDP)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros.imaging import merge_luma_chroma, split_luma_chroma
from sgdfuse_ros.losses import sobel_magnitude
from sgdfuse_ros.losses_stage2 import (
    Stage2Loss,
    chroma_loss,
    mask_guided_gradient_loss,
    mask_guided_intensity_loss,
)
from sgdfuse_ros.models.diffusion import NoiseSchedule
from sgdfuse_ros.models.hfah import HierarchicalFeatureAggregationHead, PlainHead
from sgdfuse_ros.models.stage2 import DiffusionRefiner, Stage2Config, build_stage2, load_refiner, load_stage2
from sgdfuse_ros.models.unet import UNet, timestep_embedding
from sgdfuse_ros.priors import FallbackPrior

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "samples" / "pairs"
TRAIN_PAIRS = ("FLIR_04598", "FLIR_08835")
SMALL = Stage2Config(base_channels=8, channel_mults=(1, 2, 2), attn_heads=2, hfah_width=4, hfah_hidden=8)


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with small random values (the zero-initialised layers hide conditioning)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def real_crop(stem: str = "FLIR_04598", size: tuple[int, int] = (45, 61)):
    """A real IR / visible crop as tensors in [0, 1]: ir [1,1,h,w], vis [1,3,h,w]."""
    ir = cv2.imread(str(PAIRS / "ir" / f"{stem}.jpg"), cv2.IMREAD_GRAYSCALE)
    vis = cv2.imread(str(PAIRS / "vi" / f"{stem}.jpg"), cv2.IMREAD_COLOR)[..., ::-1]
    h, w = size
    top, left = 120, 200
    ir_t = torch.from_numpy(ir[top : top + h, left : left + w].astype(np.float32) / 255.0)[None, None]
    vis_t = torch.from_numpy(np.ascontiguousarray(vis[top : top + h, left : left + w]).astype(np.float32) / 255.0)
    return ir_t, vis_t.permute(2, 0, 1)[None].contiguous()


# --------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (1, 1), (50, 33)])
def test_stage2_output_shape_and_range_for_odd_sizes(size):
    model = randomise(build_stage2(SMALL), std=0.3).eval()
    n = 2
    x_t = torch.randn(n, 3, *size)
    cond = torch.rand(n, 5, *size)
    with torch.no_grad():
        out = model(x_t, torch.tensor([3, 700]), cond)
    assert out.shape == (n, 3, *size)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out.std() > 0.01  # not a constant image


def test_untrained_model_predicts_f1_itself():
    # Zero last layer + output skip: the starting point of training is the identity on F1 (not a random image).
    model = build_stage2(SMALL).eval()
    ir, vis = real_crop()
    f1 = merge_luma_chroma(torch.maximum(ir, split_luma_chroma(vis)[0]), split_luma_chroma(vis)[1])
    cond = torch.cat([f1, ir, 1 - ir], dim=1)
    with torch.no_grad():
        out = model(torch.randn_like(f1), torch.tensor([500]), cond)
    assert (out - (2 * f1 - 1)).abs().max() <= 2e-3


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    freqs = 10000.0 ** (-torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


def test_unet_output_depends_on_the_timestep():
    unet = randomise(UNet(in_channels=8, base_channels=8, channel_mults=(1, 2), attn_heads=2)).eval()
    x = torch.randn(1, 8, 16, 24)
    with torch.no_grad():
        a = unet(x, torch.tensor([10]))
        b = unet(x, torch.tensor([10]))
        c = unet(x, torch.tensor([900]))
    assert [f.shape[-2:] for f in a] == [(8, 12), (16, 24)]  # coarse to fine
    assert [f.shape[1] for f in a] == [16, 8]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert all((p - q).abs().mean() > 1e-3 for p, q in zip(a, c, strict=True))


def test_hfah_shapes_range_and_residual():
    head = randomise(HierarchicalFeatureAggregationHead((32, 16, 8), width=4, hidden=8, upscale=2), std=1.0)
    feats = [torch.randn(2, 32, 5, 7), torch.randn(2, 16, 10, 14), torch.randn(2, 8, 20, 28)]
    out = head(feats)
    assert out.shape == (2, 3, 40, 56)
    assert out.min() >= -1 and out.max() <= 1 and out.abs().max() > 0.9  # Tanh saturates with large weights
    fresh = HierarchicalFeatureAggregationHead((32, 16, 8), width=4, hidden=8)
    logits = torch.randn(2, 3, 20, 28)
    torch.testing.assert_close(fresh(feats, logits), torch.tanh(logits))  # zero last layer: tanh(residual)
    with pytest.raises(ValueError, match="levels"):
        fresh(feats[1:])
    plain = randomise(PlainHead(8, upscale=2), std=1.0)
    assert plain(feats).shape == (2, 3, 40, 56)


def test_model_without_hfah_uses_the_plain_head():
    with_hfah, without = build_stage2(SMALL), build_stage2(SMALL, use_hfah=False)
    assert isinstance(with_hfah.head, HierarchicalFeatureAggregationHead)
    assert isinstance(without.head, PlainHead)
    assert sum(p.numel() for p in without.parameters()) < sum(p.numel() for p in with_hfah.parameters())
    out = randomise(without).eval()(torch.randn(1, 3, 20, 20), torch.tensor([1]), torch.rand(1, 5, 20, 20))
    assert out.shape == (1, 3, 20, 20)


def test_default_model_is_compact():
    params = sum(p.numel() for p in build_stage2().parameters())
    assert 1_000_000 < params < 4_000_000


# --------------------------------------------------------------------------------------------------------
# Refiner
# --------------------------------------------------------------------------------------------------------


def refiner_tensors():
    """A real crop's (F1 = max(IR, Y) with the visible colour, M_ir, M_vis, IR, Y_vis), all [1,C,48,64] in [0, 1]."""
    ir, vis = real_crop(size=(48, 64))
    m_ir, m_vis = FallbackPrior(work_size=0).masks(ir, vis)
    y, chroma = split_luma_chroma(vis)
    f1 = merge_luma_chroma(torch.maximum(ir, y), chroma)
    return f1, m_ir, m_vis, ir, y


@pytest.fixture(scope="module")
def refiner_inputs():
    return refiner_tensors()[:3]


def test_refiner_output_range_shape_and_determinism(refiner_inputs):
    f1, m_ir, m_vis = refiner_inputs
    model = randomise(build_stage2(SMALL), std=0.05)
    refiner = DiffusionRefiner(model, NoiseSchedule(), steps=3, strength=0.5, seed=0)
    out = refiner.refine(f1, m_ir, m_vis)
    assert out.shape == f1.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, refiner.refine(f1, m_ir, m_vis))  # same frame, same seed: bit-identical
    other_seed = DiffusionRefiner(model, NoiseSchedule(), steps=3, strength=0.5, seed=1)
    assert not torch.equal(out, other_seed.refine(f1, m_ir, m_vis))
    assert refiner.name == "diffusion(ddim3,strength=0.5,hfah)"


def test_refiner_without_masks_equals_zero_masks(refiner_inputs):
    f1, m_ir, m_vis = refiner_inputs
    model = randomise(build_stage2(SMALL), std=0.05)
    plain = DiffusionRefiner(model, NoiseSchedule(), steps=2, strength=0.4)
    ablated = DiffusionRefiner(model, NoiseSchedule(), steps=2, strength=0.4, use_masks=False)
    zeros = torch.zeros_like(m_ir)
    assert torch.equal(ablated.refine(f1, m_ir, m_vis), plain.refine(f1, zeros, zeros))
    assert not torch.equal(plain.refine(f1, m_ir, m_vis), plain.refine(f1, zeros, zeros))
    assert "no-masks" in ablated.name


def test_untrained_refiner_returns_f1(refiner_inputs):
    f1, m_ir, m_vis = refiner_inputs
    out = DiffusionRefiner(build_stage2(SMALL), NoiseSchedule(), steps=4, strength=0.8).refine(f1, m_ir, m_vis)
    assert (out - f1).abs().max() <= 1e-3


def test_checkpoint_round_trip(tmp_path, refiner_inputs):
    from sgdfuse_ros.models.stage2 import stage2_checkpoint

    model = randomise(build_stage2(SMALL, use_hfah=False), std=0.05)
    path = tmp_path / "s2.pt"
    torch.save(stage2_checkpoint(model, NoiseSchedule()), path)
    loaded, schedule = load_stage2(path)
    assert loaded.config == model.config and not loaded.training
    assert schedule.num_timesteps == 1000
    f1, m_ir, m_vis = refiner_inputs
    a = DiffusionRefiner(model, schedule, steps=2).refine(f1, m_ir, m_vis)
    b = load_refiner(path, steps=2).refine(f1, m_ir, m_vis)
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_stage2(tmp_path / "nope.pt")
    torch.save({"config": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_stage2(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------------------
# Losses (hand-made tensors)
# --------------------------------------------------------------------------------------------------------


def test_intensity_loss_follows_ir_inside_the_mask_and_max_outside():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0  # left half is a warm target
    ir = torch.full((1, 1, 4, 4), 0.2)
    ir[..., :2] = 0.8
    vis_y = torch.full((1, 1, 4, 4), 0.5)
    target = torch.where(mask > 0, ir, torch.maximum(ir, vis_y))  # 0.8 left, 0.5 right
    assert mask_guided_intensity_loss(target, ir, vis_y, mask).item() == pytest.approx(0.0)
    darker_target = target.clone()
    darker_target[..., :2] = 0.6  # the warm target washed out by 0.2
    assert mask_guided_intensity_loss(darker_target, ir, vis_y, mask).item() == pytest.approx(0.2)
    one_pixel = target.clone()
    one_pixel[0, 0, 0, 3] += 0.4  # one of the 8 background pixels off by 0.4
    assert mask_guided_intensity_loss(one_pixel, ir, vis_y, mask).item() == pytest.approx(0.05)
    # Without the mask the left half's target is max(IR, VIS) = 0.8 too, but inside it IR wins even when VIS is
    # brighter: a visible glare (0.9) over the warm target is not copied into it.
    glare = vis_y.clone()
    glare[..., :2] = 0.9
    assert mask_guided_intensity_loss(target, ir, glare, mask).item() == pytest.approx(0.0)
    assert mask_guided_intensity_loss(target, ir, glare, torch.zeros_like(mask)).item() == pytest.approx(0.05)



def test_semantic_intensity_target_outside_the_thermal_mask_is_the_visible_luminance():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0  # left half is a warm target
    ir = torch.full((1, 1, 4, 4), 0.6)  # thermal haze over the whole background, brighter than the night scene
    ir[..., :2] = 0.9
    vis_y = torch.full((1, 1, 4, 4), 0.1)
    vis_y[..., 3] = 0.3  # some visible structure in the background
    semantic = torch.where(mask > 0, ir, vis_y)  # 0.9 on the target, the visible 0.1 / 0.3 elsewhere
    assert mask_guided_intensity_loss(semantic, ir, vis_y, mask, "vis").item() == pytest.approx(0.0, abs=1e-7)
    # The default objective wants the thermal haze (max = 0.6) there: the visible-luminance image is 0.5 / 0.3 off.
    assert mask_guided_intensity_loss(semantic, ir, vis_y, mask).item() == pytest.approx(0.4)
    hazy = torch.where(mask > 0, ir, torch.maximum(ir, vis_y))
    assert mask_guided_intensity_loss(hazy, ir, vis_y, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert mask_guided_intensity_loss(hazy, ir, vis_y, mask, "vis").item() == pytest.approx(0.4)
    # Inside M_ir the target is still the thermal intensity, whatever the objective.
    washed = semantic.clone()
    washed[..., :2] = 0.7
    assert mask_guided_intensity_loss(washed, ir, vis_y, mask, "vis").item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="outside_target"):
        mask_guided_intensity_loss(semantic, ir, vis_y, mask, "ir")

    # Through Stage2Loss: a grey RGB image with luminance `semantic` has zero intensity loss with
    # objective="semantic", and the gradient term then uses the max target inside M_vis too.
    rgb = semantic.expand(1, 3, 4, 4)
    vis_rgb = vis_y.expand(1, 3, 4, 4)
    sem_loss = Stage2Loss(objective="semantic")
    assert sem_loss.vis_gradient_target == "max" and Stage2Loss().vis_gradient_target == "vis"
    out = sem_loss(rgb, ir, vis_rgb, rgb, mask, torch.zeros_like(mask))
    assert out.intensity.item() == pytest.approx(0.0, abs=1e-6)
    assert Stage2Loss()(rgb, ir, vis_rgb, rgb, mask, torch.zeros_like(mask)).intensity.item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="objective"):
        Stage2Loss(objective="sharp")

def test_gradient_loss_ignores_ir_edges_inside_the_visible_mask():
    vis_y = torch.full((1, 1, 8, 8), 0.5)
    ir = torch.zeros(1, 1, 8, 8)
    ir[..., 2:] = 1.0  # a thermal edge between columns 1 and 2 (Sobel response only in columns 1-2)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1.0  # salient visible structure covers the thermal edge
    fused = vis_y.clone()  # the fused image keeps the visible (flat) gradients
    assert mask_guided_gradient_loss(fused, ir, vis_y, mask).item() == pytest.approx(0.0, abs=1e-6)
    # With an empty mask the thermal edge is wanted everywhere: the loss is the mean missing gradient.
    expected = (sobel_magnitude(ir) - sobel_magnitude(vis_y)).mean().item()
    assert mask_guided_gradient_loss(fused, ir, vis_y, torch.zeros_like(mask)).item() == pytest.approx(expected)
    assert expected > 0.5
    # inside_target="max": the mask only re-weights, the thermal edge is wanted inside it as well. The edge lies
    # wholly inside the mask, so the loss is its mean over the 32 masked pixels (the outside term is 0).
    inside_mean = ((sobel_magnitude(ir) - sobel_magnitude(vis_y)) * mask).sum().item() / mask.sum().item()
    assert mask_guided_gradient_loss(fused, ir, vis_y, mask, "max").item() == pytest.approx(inside_mean)
    assert inside_mean == pytest.approx(2 * expected)


def test_stage2_loss_is_the_weighted_sum_and_chroma_follows_the_visible_colours():
    torch.manual_seed(0)
    vis = torch.rand(2, 3, 8, 8)
    ir = torch.rand(2, 1, 8, 8)
    f1 = torch.rand(2, 3, 8, 8)
    x0 = torch.rand(2, 3, 8, 8)
    m_ir, m_vis = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    loss = Stage2Loss(1.5, 1.0, 2.0, 0.1)(x0, ir, vis, f1, m_ir, m_vis)
    expected = 1.5 * loss.intensity + 1.0 * loss.gradient + 2.0 * loss.chroma + 0.1 * loss.anchor
    torch.testing.assert_close(loss.total, expected)
    torch.testing.assert_close(loss.anchor, (x0 - f1).abs().mean())
    # Same chroma, different luminance: no chroma loss.
    y, chroma = split_luma_chroma(vis * 0.5 + 0.25)
    assert chroma_loss(merge_luma_chroma(y * 0.9, chroma), vis * 0.5 + 0.25).item() == pytest.approx(0, abs=1e-6)
    assert chroma_loss(x0, vis).item() > 0.05


# --------------------------------------------------------------------------------------------------------
# Training: cache, resume, DDP
# --------------------------------------------------------------------------------------------------------


def train_args(tmp: Path, out: str, **overrides) -> argparse.Namespace:
    from sgdfuse_ros.training.stage2 import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp / out)])
    defaults = dict(
        data=str(tmp / "data"),
        exclude=[],
        stage1_weights=str(tmp / "stage1.pt"),
        cache=str(tmp / "cache"),
        iters=4,
        batch=2,
        crop=32,
        base_channels=8,
        channel_mults=[1, 2],
        log_every=1,
        save_every=1,
        warmup=2,
    )
    defaults.update(overrides)
    for key, value in defaults.items():
        setattr(args, key, value)
    return args


def make_train_dir(tmp: Path) -> Path:
    """Two bundled pairs (copied: the bundled RoadScene pairs are held out of real training) + random Stage I."""
    from sgdfuse_ros.models.stage1 import build_stage1, stage1_checkpoint

    for sub in ("ir", "vi"):
        (tmp / "data" / sub).mkdir(parents=True)
        for stem in TRAIN_PAIRS:
            shutil.copy(PAIRS / sub / f"{stem}.jpg", tmp / "data" / sub / f"{stem}.jpg")
    torch.manual_seed(0)
    torch.save(stage1_checkpoint(build_stage1()), tmp / "stage1.pt")
    return tmp


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return make_train_dir(tmp_path_factory.mktemp("stage2_train"))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_builds_the_cache_resumes_and_exports(train_dir):
    from sgdfuse_ros.training.stage2 import train_stage2

    assert train_stage2(train_args(train_dir, "run", stop_at=2)) is None
    manifest = json.loads((train_dir / "cache" / "manifest.json").read_text())
    assert manifest["names"] == list(TRAIN_PAIRS) and manifest["prior"] == "fallback"
    with np.load(train_dir / "cache" / f"{TRAIN_PAIRS[0]}.npz") as npz:
        assert npz["f1"].shape == (*npz["ir"].shape, 3) and npz["m_ir"].shape == npz["ir"].shape
        assert npz["m_ir"].min() >= 0 and npz["m_vis"].max() <= 1
    assert [r["step"] for r in read_log(train_dir / "run" / "losses.jsonl")] == [1, 2]
    with pytest.raises(SystemExit, match="--resume"):
        train_stage2(train_args(train_dir, "run"))

    record = train_stage2(train_args(train_dir, "run", resume=True, data=None))
    log = read_log(train_dir / "run" / "losses.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(np.isfinite(r["total"]) for r in log)
    assert torch.load(train_dir / "run" / "last.pt", weights_only=True)["step"] == 4
    assert record["training"]["iterations"] == 4 and len(record["resumed_with"]) == 1
    assert record["prior"] == {"kind": "fallback", "name": "fallback", "masks_used": True}
    assert record["excluded_names"] == []
    model, _ = load_stage2(train_dir / "run" / "stage2.pt")
    assert model.config.channel_mults == (1, 2) and model.config.base_channels == 8

    # A resumed run continues exactly where an uninterrupted one would be: same losses at steps 3-4.
    assert train_stage2(train_args(train_dir, "straight")) is not None
    straight = read_log(train_dir / "straight" / "losses.jsonl")
    assert [r["total"] for r in straight] == pytest.approx([r["total"] for r in log], rel=1e-5)


def test_training_refuses_a_cache_built_from_other_weights(train_dir):
    from sgdfuse_ros.models.stage1 import build_stage1, stage1_checkpoint
    from sgdfuse_ros.training.stage2 import train_stage2

    ensure_cache(train_dir)
    torch.manual_seed(1)
    torch.save(stage1_checkpoint(build_stage1()), train_dir / "other_stage1.pt")
    with pytest.raises(SystemExit, match="stage1_sha256"):
        train_stage2(train_args(train_dir, "other", stage1_weights=str(train_dir / "other_stage1.pt")))


def test_training_needs_neither_segment_anything_nor_rosbags(train_dir):
    train_stage2_args = [
        "--out",
        str(train_dir / "no_sam"),
        "--cache",
        str(train_dir / "cache"),
        "--iters",
        "1",
        "--batch",
        "1",
        "--crop",
        "32",
        "--base-channels",
        "8",
        "--channel-mults",
        "1",
        "2",
    ]
    code = (
        "import sys; sys.modules.update({'segment_anything': None, 'rosbags': None, 'rosbags.image': None});"
        "from sgdfuse_ros.training.stage2 import main; main(sys.argv[1:])"
    )
    ensure_cache(train_dir)
    result = subprocess.run(
        [sys.executable, "-c", code, *train_stage2_args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (train_dir / "no_sam" / "stage2.pt").is_file()


def ensure_cache(train_dir: Path) -> None:
    from sgdfuse_ros.training.stage2 import train_stage2

    train_stage2(train_args(train_dir, "cache_only", cache_only=True))


def test_ddp_two_gloo_processes(train_dir):
    ensure_cache(train_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sgdfuse_ros.training.stage2",
        "--out",
        str(train_dir / "ddp"),
        "--cache",
        str(train_dir / "cache"),
        "--iters",
        "2",
        "--batch",
        "2",
        "--crop",
        "32",
        "--base-channels",
        "8",
        "--channel-mults",
        "1",
        "2",
        "--log-every",
        "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "world size 2" in result.stdout
    assert [r["step"] for r in read_log(train_dir / "ddp" / "losses.jsonl")] == [1, 2]
    record = json.loads((train_dir / "ddp" / "stage2.json").read_text())
    assert record["training"]["world_size"] == 2 and record["command"].startswith("torchrun --nproc_per_node=2")
    load_stage2(train_dir / "ddp" / "stage2.pt")


# --------------------------------------------------------------------------------------------------------
# Pipeline wiring
# --------------------------------------------------------------------------------------------------------


def test_pipeline_builds_the_refiner_from_the_configuration(tmp_path):
    from sgdfuse_ros.config import FuseConfig
    from sgdfuse_ros.models.stage2 import stage2_checkpoint
    from sgdfuse_ros.pipeline import FusionPipeline

    path = tmp_path / "s2.pt"
    torch.save(stage2_checkpoint(build_stage2(SMALL), NoiseSchedule()), path)  # untrained: returns F1
    config = FuseConfig().updated(
        {"stage2.enabled": True, "stage2.weights": str(path), "stage2.steps": 2, "stage2.strength": 0.3}
    )
    pipeline = FusionPipeline.from_config(config)
    assert isinstance(pipeline.refiner, DiffusionRefiner)
    assert pipeline.refiner.sampler.timesteps == [299, 149]
    thermal = cv2.imread(str(PAIRS / "ir" / "FLIR_08835.jpg"), cv2.IMREAD_GRAYSCALE)
    visible = cv2.imread(str(PAIRS / "vi" / "FLIR_08835.jpg"), cv2.IMREAD_COLOR)
    result = pipeline.fuse(thermal, visible, "mono8", "bgr8", keep_preliminary=True)
    assert "stage2" in result.timings_ms
    assert np.abs(result.fused.astype(int) - result.preliminary.astype(int)).max() <= 1
    assert FusionPipeline.from_config(FuseConfig()).refiner is None  # disabled by default
    missing = FuseConfig().updated({"stage2.enabled": True, "stage2.weights": str(tmp_path / "none.pt")})
    with pytest.raises(FileNotFoundError, match="none.pt"):
        FusionPipeline.from_config(missing)


def test_shipped_weights_load_and_refine_a_held_out_pair(refiner_inputs):
    from sgdfuse_ros.models.stage2 import default_stage2_weights_path

    path = default_stage2_weights_path()
    assert path.stat().st_size < 16 * 2**20
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["prior"]["name"] == "fallback" and "FLIR_04598" in record["excluded_names"]
    # Trained on the F1 of the shipped Stage I (the training cache is keyed on its weights).
    import hashlib

    from sgdfuse_ros.models.stage1 import default_stage1_weights_path

    assert record["stage1"]["sha256"] == hashlib.sha256(default_stage1_weights_path().read_bytes()).hexdigest()
    assert not any(str(v).startswith("/") for v in (record["stage1"]["weights"], record["dataset"]["root"]))
    f1, m_ir, m_vis = refiner_inputs  # a crop of held-out FLIR_04598
    refiner = load_refiner(path, steps=2, strength=0.5)
    out = refiner.refine(f1, m_ir, m_vis)
    assert torch.equal(out, refiner.refine(f1, m_ir, m_vis))
    change = (out - f1).abs().mean().item()
    assert 0 < change < 0.05  # a refinement of F1, not a different image
    no_masks = load_refiner(path, steps=2, strength=0.5, use_masks=False).refine(f1, m_ir, m_vis)
    assert (no_masks - out).abs().mean().item() > 1e-4  # the trained model reads the masks
