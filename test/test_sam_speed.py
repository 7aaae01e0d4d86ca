"""SAM speed-ups (sgdfuse_ros/priors/sam_speed.py, SamPrior options): same results as the stock modules.

- SDPA encoder attention == stock attention (fp32 tolerance) for the tiny SAM and for a windowed (with
  padding) + global-attention configuration with and without relative positions.
- ``decode_shared`` (all images x all prompts in one call, image-side work shared) == the stock
  ``MaskDecoder`` per image, at fp32 ``assert_close`` defaults.
- bf16 autocast (CPU autocast as the stand-in for CUDA) vs fp32: mask IoU on synthetic scenes.
- ``compile`` (eager backend here: inductor takes ~30 s on this CPU), ``keep_segments``, and the wiring of
  ``compute.precision`` / ``compute.compile`` through ``FusionPipeline.from_config``.
"""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from sgdfuse_ros.config import FuseConfig
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.priors.sam import SamPrior, build_sam_tiny, select_segments
from sgdfuse_ros.priors.sam_speed import decode_shared, use_sdpa

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_sam():
    return build_sam_tiny(img_size=128, seed=0)


def _encoder_windowed_global(use_rel_pos: bool) -> ImageEncoderViT:
    """img 160 -> 10x10 tokens; windows of 4 (padded to 12x12), global attention in block 1, 3 heads."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        enc = ImageEncoderViT(
            img_size=160, patch_size=16, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0, out_chans=32,
            qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=use_rel_pos,
            window_size=4, global_attn_indexes=(1,),
        )
        for name, p in enc.named_parameters():
            if "rel_pos" in name:
                torch.nn.init.normal_(p, std=0.05)
    return enc.eval()


@pytest.mark.parametrize("which", ["tiny", "windowed_global_rel_pos", "windowed_global_no_rel_pos"])
def test_sdpa_encoder_equals_stock(tiny_sam, which):
    if which == "tiny":
        enc, size = tiny_sam.image_encoder, 128
    else:
        enc, size = _encoder_windowed_global(use_rel_pos=which == "windowed_global_rel_pos"), 160
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    keys = list(enc.state_dict())
    try:
        use_sdpa(enc, False)
        with torch.no_grad():
            stock = enc(x)
        assert use_sdpa(enc, True) == len(enc.blocks)
        with torch.no_grad():
            fast = enc(x)
        torch.testing.assert_close(fast, stock)
        assert list(enc.state_dict()) == keys  # parameters untouched: checkpoints still load
        use_sdpa(enc, False)
        with torch.no_grad():
            assert torch.equal(enc(x), stock)  # the stock forward is back
    finally:
        use_sdpa(enc, False)


def test_prior_uses_sdpa_by_default():
    model = build_sam_tiny()
    SamPrior(model)
    assert all("forward" in blk.attn.__dict__ for blk in model.image_encoder.blocks)
    SamPrior(model, sdpa=False)
    assert not any("forward" in blk.attn.__dict__ for blk in model.image_encoder.blocks)


@pytest.mark.parametrize("prompts", [1, 7, 64])
def test_shared_decoder_equals_stock_per_image(tiny_sam, prompts):
    g = torch.Generator().manual_seed(prompts)
    with torch.no_grad():
        emb = tiny_sam.image_encoder(torch.randn(3, 3, 128, 128, generator=g))  # 3 images
        pe = tiny_sam.prompt_encoder
        coords = torch.rand(prompts, 1, 2, generator=g) * 128
        sparse, _ = pe(points=(coords, torch.ones(prompts, 1, dtype=torch.int)), boxes=None, masks=None)
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
        for multimask in (True, False):
            logits, iou = decode_shared(tiny_sam.mask_decoder, emb, pe.get_dense_pe(), sparse, dense, multimask)
            k = 3 if multimask else 1
            assert logits.shape == (3 * prompts, k, 32, 32) and iou.shape == (3 * prompts, k)
            for b in range(3):
                ref_logits, ref_iou = tiny_sam.mask_decoder(
                    image_embeddings=emb[b:b + 1], image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense.expand(prompts, -1, -1, -1), multimask_output=multimask,
                )
                rows = slice(b * prompts, (b + 1) * prompts)
                torch.testing.assert_close(logits[rows], ref_logits)
                torch.testing.assert_close(iou[rows], ref_iou)


def test_prior_shared_decoder_equals_stock_decoder(tiny_sam):
    g = torch.Generator().manual_seed(3)
    t, v = torch.rand(2, 1, 50, 70, generator=g), torch.rand(2, 3, 50, 70, generator=g)
    opts = dict(points_per_side=5, points_per_batch=8, pred_iou_thresh=0.0, stability_score_thresh=0.5,
                stability_score_offset=0.02)
    new, old = SamPrior(tiny_sam, **opts), SamPrior(tiny_sam, shared_decoder=False, **opts)
    new.profile = old.profile = True
    a, b = new.masks(t, v), old.masks(t, v)
    assert new.last_timings["decoder_calls"] == 4 and old.last_timings["decoder_calls"] == 16
    assert new.last_kept == old.last_kept and all(0 < k < 75 for k in new.last_kept)
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# Precision: bf16 autocast (CPU stand-in for CUDA) against fp32
# ---------------------------------------------------------------------------------------------


def synthetic_scene(seed: int, h: int = 120, w: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    """Textured background with 3 warm discs (thermal [1,1,H,W]) and 3 flat-coloured rectangles (visible [1,3,H,W])."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    texture = 0.25 + 0.08 * torch.rand(h, w, generator=g) + 0.05 * torch.sin(xx / 3.0) * torch.cos(yy / 5.0)
    ir, vis = texture.clone(), texture[None].repeat(3, 1, 1) * 1.2
    for _ in range(3):
        cy, cx = (int(torch.randint(15, n - 15, (1,), generator=g)) for n in (h, w))
        r = int(torch.randint(6, 14, (1,), generator=g))
        ir[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0.9
        y0, x0 = int(torch.randint(0, h - 30, (1,), generator=g)), int(torch.randint(0, w - 40, (1,), generator=g))
        vis[:, y0:y0 + 25, x0:x0 + 35] = torch.rand(3, 1, 1, generator=g)
    return ir.clamp(0, 1)[None, None], vis.clamp(0, 1)[None]


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of ``a > 0.5`` and ``b > 0.5`` (1 when both are empty)."""
    a, b = a > 0.5, b > 0.5
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def test_bf16_autocast_candidate_masks_match_fp32(tiny_sam):
    """Every decoder candidate (sigmoid(logit) > 0.5, low resolution) of bf16 encoder + decoder vs fp32."""
    fp32 = SamPrior(tiny_sam, points_per_side=8)
    bf16 = SamPrior(tiny_sam, points_per_side=8, precision="bf16", cpu_autocast=True)
    with bf16._autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    for seed in range(3):
        t, v = synthetic_scene(seed)
        x = fp32.preprocess(torch.cat([v, t.expand(-1, 3, -1, -1)]))
        sparse, dense, pe = fp32._prompts(*fp32.input_size(*t.shape[-2:]))
        with torch.no_grad():
            emb32 = fp32.model.image_encoder(x)
            with bf16._autocast():
                emb16 = bf16.model.image_encoder(x)
            assert not torch.equal(emb16, emb32)  # autocast took effect (the neck's LayerNorm2d returns fp32)
            l32, i32, _ = fp32.decode_chunk(emb32, sparse, dense, pe)
            l16, i16, _ = bf16.decode_chunk(emb16, sparse, dense, pe)
        assert l16.dtype == torch.float32 and i16.dtype == torch.float32  # the merge stays fp32
        a, b = (l32[..., :24, :32] > 0).flatten(0, 2), (l16[..., :24, :32] > 0).flatten(0, 2)  # [2*64*3, 24, 32]
        per = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)
        assert float(per.mean()) >= 0.95 and float(per.min()) >= 0.9, (seed, float(per.mean()), float(per.min()))
        assert float((i32 - i16).abs().max()) < 0.01


def test_bf16_autocast_prior_masks_match_fp32(tiny_sam):
    """Merged prior masks (> 0.5) of bf16 vs fp32, with a selection that keeps some candidates and drops others.

    Saliency thresholds 0 make the random segments count (coverage ~0.4-0.6). With the default saliency
    thresholds random segments score inside the soft-threshold ramp, whole segments sit near 0.5 and the
    0.5 cut flips on tiny differences (docs/priors.md): there the soft masks are compared instead.
    """
    sel = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5, stability_score_offset=0.02)
    for params in (dict(ir_threshold=0.0, vis_threshold=0.0), {}):
        fp32 = SamPrior(tiny_sam, **sel, **params)
        bf16 = SamPrior(tiny_sam, precision="bf16", cpu_autocast=True, **sel, **params)
        for seed in range(3):
            t, v = synthetic_scene(seed)
            for m32, m16 in zip(fp32.masks(t, v), bf16.masks(t, v), strict=True):
                assert float((m32 - m16).abs().mean()) < 0.02
                if params:
                    assert 0.2 < float((m32 > 0.5).float().mean()) < 0.8
                    assert mask_iou(m32, m16) >= 0.95, (seed, mask_iou(m32, m16))


def test_precision_is_validated_and_off_on_cpu_by_default(tiny_sam):
    with pytest.raises(ValueError, match="precision"):
        SamPrior(tiny_sam, precision="fp8")
    prior = SamPrior(tiny_sam, precision="bf16")
    with prior._autocast():
        assert not torch.is_autocast_enabled("cpu")  # the CPU runs fp32 unless cpu_autocast


# ---------------------------------------------------------------------------------------------
# keep_segments, compile, configuration wiring
# ---------------------------------------------------------------------------------------------


def test_keep_segments_records_the_kept_segments(tiny_sam):
    g = torch.Generator().manual_seed(7)
    t, v = torch.rand(2, 1, 40, 64, generator=g), torch.rand(2, 3, 40, 64, generator=g)
    opts = dict(points_per_side=5, points_per_batch=7, pred_iou_thresh=0.0, stability_score_thresh=0.5,
                stability_score_offset=0.02)
    off = SamPrior(tiny_sam, **opts)
    off.masks(t, v)
    assert off.last_segments == []
    on = SamPrior(tiny_sam, keep_segments=True, **opts)
    on.profile = True
    on.masks(t, v)
    hl, wl = 20, 32  # 40x64 -> input 80x128 -> low-res 32x32 cropped to 20x32
    assert [s.shape[0] for s in on.last_segments] == on.last_kept and len(on.last_segments) == 4
    assert all(s.dtype == torch.bool and s.shape[1:] == (hl, wl) for s in on.last_segments)
    # the first image's segments are the kept candidates (logits > 0) of the VIS image, in prompt order
    with torch.no_grad():
        emb = on.model.image_encoder(on.preprocess(torch.cat([v, t.expand(-1, 3, -1, -1)])))
        sparse, dense, pe = on._prompts(*on.input_size(40, 64))
        logits, iou, _ = on.decode_chunk(emb, sparse, dense, pe)
    logits = logits[0, :, :, :hl, :wl].flatten(0, 1)
    keep = select_segments(logits, iou[0].flatten(), pred_iou_thresh=0.0, stability_score_thresh=0.5,
                           stability_score_offset=0.02)
    assert torch.equal(on.last_segments[0], (logits > 0)[keep])


def test_compile_gives_the_same_masks_and_logs_once(tiny_sam, caplog):
    t, v = torch.rand(1, 1, 60, 80), torch.rand(1, 3, 60, 80)
    ref = SamPrior(tiny_sam, points_per_side=4).masks(t, v)
    torch._dynamo.reset()
    prior = SamPrior(tiny_sam, points_per_side=4, compile=True, compile_options={"backend": "eager"})
    with caplog.at_level(logging.INFO, logger="sgdfuse_ros.compiled"):
        first, second = prior.masks(t, v), prior.masks(t, v)
    lines = [r.getMessage() for r in caplog.records if "torch.compile of SAM image encoder" in r.getMessage()]
    assert len(lines) == 1 and prior._encoder.first_call_s > 0
    for out in (first, second):
        torch.testing.assert_close(out, ref)


def test_config_precision_and_compile_reach_the_prior_and_stage1(monkeypatch, caplog):
    captured = {}

    def fake_from_checkpoint(checkpoint, *, model_type, device, **kwargs):
        captured.update(kwargs, checkpoint=checkpoint)
        return SamPrior(build_sam_tiny(), device=device, **{**kwargs, "points_per_side": 2})

    compiled = []
    monkeypatch.setattr(SamPrior, "from_checkpoint", staticmethod(fake_from_checkpoint))
    monkeypatch.setattr(torch, "compile", lambda module, **options: compiled.append(type(module).__name__) or module)
    config = FuseConfig().updated({"prior.kind": "sam", "prior.sam_checkpoint": "sam.pth", "compute.precision": "bf16",
                                   "compute.compile": True, "compute.torch_threads": 1})
    pipeline = FusionPipeline.from_config(config)
    assert captured["precision"] == "bf16" and captured["compile"] is True
    assert pipeline.prior.precision == "bf16"
    assert sorted(compiled) == sorted(["ImageEncoderViT", type(pipeline.stage1).__name__])
    thermal = (torch.rand(48, 64) * 255).byte().numpy()
    rgb = (torch.rand(48, 64, 3) * 255).byte().numpy()
    with caplog.at_level(logging.INFO, logger="sgdfuse_ros.compiled"):
        pipeline.fuse(thermal, rgb)
        pipeline.fuse(thermal, rgb)
    labels = sorted(r.getMessage().split(":")[0] for r in caplog.records if "torch.compile of" in r.getMessage())
    assert labels == ["torch.compile of SAM image encoder", "torch.compile of Stage I"]
    assert FuseConfig().compute.compile is False
