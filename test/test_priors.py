"""Tests of the semantic priors (fallback on the bundled real pairs; SAM path with a tiny random SAM)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.amg import build_point_grid
from segment_anything.utils.transforms import ResizeLongestSide

from sgdfuse_ros.priors import FallbackPrior, SemanticPrior, build_prior
from sgdfuse_ros.priors.fallback import _sobel, ir_score_map, luminance, soft_threshold, vis_score_map
from sgdfuse_ros.priors.sam import (
    SamPrior,
    build_sam_tiny,
    compose_segments,
    load_sam_checkpoint,
    segment_scores,
    select_segments,
)

PAIRS = Path(__file__).resolve().parents[1] / "samples" / "pairs"
PAIR_NAMES = sorted(p.name for p in (PAIRS / "ir").iterdir() if p.suffix.lower() in (".png", ".jpg"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bundled pair as (thermal [1,1,H,W], visible [1,3,H,W]) float in [0,1], RGB."""
    ir = cv2.imread(str(PAIRS / "ir" / name), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(PAIRS / "vi" / name), cv2.IMREAD_COLOR)
    assert ir is not None and vi is not None, name
    vi = cv2.cvtColor(vi, cv2.COLOR_BGR2RGB)
    t = torch.from_numpy(ir).float().div(255.0)[None, None]
    v = torch.from_numpy(vi).float().div(255.0).permute(2, 0, 1)[None].contiguous()
    return t, v


def weighted_means(x: torch.Tensor, m: torch.Tensor) -> tuple[float, float]:
    """Mean of x weighted by the soft mask m, and weighted by (1 - m)."""
    return float((x * m).sum() / m.sum()), float((x * (1 - m)).sum() / (1 - m).sum())


# ---------------------------------------------------------------------------------------------
# Fallback prior on the bundled real pairs
# ---------------------------------------------------------------------------------------------


def test_bundled_pairs_present():
    assert len(PAIR_NAMES) == 7, PAIR_NAMES


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_fallback_on_bundled_pair(name):
    t, v = load_pair(name)
    m_ir, m_vis = FallbackPrior().masks(t, v)
    assert m_ir.shape == t.shape and m_vis.shape == t.shape
    assert m_ir.dtype == torch.float32 and m_vis.dtype == torch.float32

    # Coverage = mean of the soft mask (its area in pixels / image area).
    for what, m in (("M_ir", m_ir), ("M_vis", m_vis)):
        cov = float(m.mean())
        assert 0.05 <= cov <= 0.60, f"{name}: {what} coverage {cov:.3f}"

    # M_ir marks the warm targets: thermal intensity inside is clearly higher than outside
    # (RoadScene frames have a bright road/sky, so ~1.6x is what separating people/cars gives).
    t_in, t_out = weighted_means(t, m_ir)
    assert t_in >= 1.5 * t_out, f"{name}: warm ratio {t_in / t_out:.2f}"
    # ... and the hottest 1 % of the frame is (almost all) inside the mask.
    hot = t >= torch.quantile(t.flatten(), 0.99)
    assert float(m_ir[hot].mean()) >= 0.7, f"{name}: hottest pixels mask {float(m_ir[hot].mean()):.2f}"

    # M_vis marks visible structure: mean gradient magnitude inside >= 2x outside.
    gx, gy = _sobel(luminance(v))
    g_in, g_out = weighted_means((gx * gx + gy * gy).sqrt(), m_vis)
    assert g_in >= 2.0 * g_out, f"{name}: gradient ratio {g_in / g_out:.2f}"


def test_fallback_deterministic_and_batch_consistent():
    t1, v1 = load_pair(PAIR_NAMES[0])
    t2, v2 = load_pair(PAIR_NAMES[1])
    assert t1.shape == t2.shape  # the two MSRS 640x480 pairs sort first
    prior = FallbackPrior()
    a = prior.masks(t1, v1)
    b = prior.masks(t1.clone(), v1.clone())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # A batch gives the per-image results (statistics are per sample, not per batch).
    batch = prior.masks(torch.cat([t1, t2]), torch.cat([v1, v2]))
    single2 = prior.masks(t2, v2)
    torch.testing.assert_close(batch[0][:1], a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch[1][1:], single2[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (37, 53), (7, 301), (333, 17), (481, 641)])
def test_fallback_odd_sizes(size):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 1, *size, generator=g)
    v = torch.rand(2, 3, *size, generator=g)
    m_ir, m_vis = FallbackPrior().masks(t, v)
    for m in (m_ir, m_vis):
        assert m.shape == (2, 1, *size)
        assert torch.isfinite(m).all()
        assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0


def test_fallback_flat_frame_has_no_targets():
    # A flat frame (plus sensor-level noise) has no warm target and no structure: the scale
    # floors keep noise from being normalised up into "salient" pixels.
    g = torch.Generator().manual_seed(1)
    t = 0.5 + 0.003 * torch.randn(1, 1, 120, 160, generator=g)
    v = 0.4 + 0.003 * torch.randn(1, 3, 120, 160, generator=g)
    m_ir, m_vis = FallbackPrior().masks(t, v)
    assert float(m_ir.max()) < 0.05
    assert float(m_vis.mean()) < 0.05


def test_fallback_marks_a_synthetic_warm_target():
    t = torch.full((1, 1, 120, 160), 0.3)
    t[..., 40:80, 70:90] = 0.8  # a warm "person"
    v = torch.full((1, 3, 120, 160), 0.5)
    v[..., 20:60, 20:60] = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))  # texture patch
    m_ir, m_vis = FallbackPrior().masks(t, v)
    assert float(m_ir[..., 45:75, 73:87].min()) > 0.9
    assert float(m_ir[..., :20, :40].max()) < 0.05
    assert float(m_vis[..., 25:55, 25:55].mean()) > 0.8
    assert float(m_vis[..., 80:, 100:].max()) < 0.05


def test_fallback_input_validation():
    prior = FallbackPrior()
    with pytest.raises(ValueError, match=r"\[N,1,H,W\]"):
        prior.masks(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        prior.masks(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="share"):
        prior.masks(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="unknown fallback prior option.*'bogus'"):
        FallbackPrior(bogus=1.0)
    with pytest.raises(ValueError, match="softness"):
        FallbackPrior(softness=0.0)


def test_score_maps_units():
    # Score maps are in robust stds of the frame: a target 10 robust stds above a noisy background
    # scores ~10 (global term) and the background median ~0.
    g = torch.Generator().manual_seed(0)
    t = 0.3 + 0.05 * torch.randn(1, 1, 100, 100, generator=g)
    t[..., 45:55, 45:55] += 0.5
    z = ir_score_map(t)
    assert abs(float(z.median())) < 0.3
    assert float(z[..., 48:52, 48:52].mean()) > 5.0
    assert vis_score_map(torch.rand(1, 3, 50, 50)).shape == (1, 1, 50, 50)


# ---------------------------------------------------------------------------------------------
# build_prior
# ---------------------------------------------------------------------------------------------


def test_build_prior_kinds():
    p = build_prior("auto")
    assert isinstance(p, SemanticPrior) and isinstance(p, FallbackPrior)
    assert p.name == "fallback" and p.device == torch.device("cpu")
    assert build_prior("fallback", ir_threshold=2.5).params.ir_threshold == 2.5
    with pytest.raises(ValueError, match=r"'segmenter'.*\['auto', 'sam', 'fallback'\]"):
        build_prior("segmenter")
    with pytest.raises(ValueError, match=r"'vit_xl'.*\['vit_h', 'vit_l', 'vit_b'\]"):
        build_prior("auto", sam_checkpoint="/x.pth", sam_model_type="vit_xl")
    with pytest.raises(ValueError, match="sam_checkpoint"):
        build_prior("sam")
    with pytest.raises(ValueError, match="bogus"):
        build_prior("fallback", bogus=3)


@pytest.mark.parametrize("kind", ["auto", "sam"])
def test_build_prior_missing_checkpoint(tmp_path, kind):
    missing = tmp_path / "nope" / "sam_vit_b.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_prior(kind, sam_checkpoint=str(missing))


def test_build_prior_garbage_checkpoint(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match=str(garbage)):
        build_prior("sam", sam_checkpoint=str(garbage))
    with pytest.raises(ValueError, match="is not a file"):
        build_prior("sam", sam_checkpoint=str(tmp_path))


def test_build_prior_wrong_architecture_checkpoint(tmp_path):
    # A readable state dict of another architecture (the tiny SAM) for vit_b: error names the
    # path and the model type. This builds the real vit_b skeleton (~2 s on CPU).
    path = tmp_path / "tiny.pth"
    torch.save(build_sam_tiny().state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path}.*'vit_b'"):
        build_prior("auto", sam_checkpoint=str(path), sam_model_type="vit_b")


# ---------------------------------------------------------------------------------------------
# SAM path with a tiny random SAM built from the real segment_anything modules
# ---------------------------------------------------------------------------------------------

KEEP_ALL = dict(pred_iou_thresh=-1e9, stability_score_thresh=0.0)


@pytest.fixture(scope="module")
def tiny_sam():
    return build_sam_tiny(img_size=128)


def test_checkpoint_roundtrip(tmp_path, tiny_sam):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    other = build_sam_tiny(img_size=128, seed=123)
    assert not torch.equal(other.mask_decoder.iou_token.weight, tiny_sam.mask_decoder.iou_token.weight)
    load_sam_checkpoint(other, path)
    theirs = other.state_dict()
    assert theirs.keys() == tiny_sam.state_dict().keys()
    for k, a in tiny_sam.state_dict().items():
        assert torch.equal(a, theirs[k]), k
    # wrapped {"model": state_dict} is accepted too
    torch.save({"model": tiny_sam.state_dict()}, tmp_path / "wrapped.pth")
    load_sam_checkpoint(build_sam_tiny(img_size=128, seed=5), tmp_path / "wrapped.pth")


def test_checkpoint_errors_name_the_path(tmp_path, tiny_sam):
    missing = tmp_path / "missing.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_sam_checkpoint(tiny_sam, missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=str(garbage)):
        load_sam_checkpoint(tiny_sam, garbage)
    # a pickle with a non-tensor object: refused by weights_only, reported as unreadable
    evil = tmp_path / "object.pth"
    torch.save({"w": torch.zeros(1), "obj": Path("x")}, evil)
    with pytest.raises(ValueError, match=str(evil)):
        load_sam_checkpoint(tiny_sam, evil)
    # a readable state dict of a different (tiny) architecture
    wrong = tmp_path / "wrong.pth"
    torch.save(build_sam_tiny(img_size=128, embed_dim=48).state_dict(), wrong)
    with pytest.raises(ValueError, match=str(wrong)):
        load_sam_checkpoint(tiny_sam, wrong)


def _encoder_inputs(model):
    calls = []
    handle = model.image_encoder.register_forward_pre_hook(lambda mod, args: calls.append(args[0].detach().clone()))
    return calls, handle


def test_sam_encodes_both_modalities_in_one_batch(tiny_sam):
    prior = SamPrior(tiny_sam, points_per_side=4, **KEEP_ALL)
    g = torch.Generator().manual_seed(0)
    n = 3
    t, v = torch.rand(n, 1, 45, 70, generator=g), torch.rand(n, 3, 45, 70, generator=g)
    calls, handle = _encoder_inputs(tiny_sam)
    try:
        m_ir, m_vis = prior.masks(t, v)
    finally:
        handle.remove()
    assert len(calls) == 1
    x = calls[0]
    assert x.shape == (2 * n, 3, 128, 128)
    # order: VIS images then IR images; the IR ones are the thermal image replicated to 3 channels
    raw = x * tiny_sam.pixel_std + tiny_sam.pixel_mean
    nh, nw = ResizeLongestSide.get_preprocess_shape(45, 70, 128)
    ir_raw = raw[n:, :, :nh, :nw]
    torch.testing.assert_close(ir_raw[:, 0], ir_raw[:, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(ir_raw[:, 0], ir_raw[:, 2], atol=1e-3, rtol=0)
    assert not torch.allclose(raw[:n, 0, :nh, :nw], raw[:n, 1, :nh, :nw], atol=1.0)
    assert torch.equal(x[:, :, nh:, :], torch.zeros_like(x[:, :, nh:, :]))  # zero padding
    assert m_ir.shape == t.shape and m_vis.shape == t.shape


def test_sam_preprocess_matches_sampredictor(tiny_sam):
    _, v = load_pair("FLIR_06307.jpg")
    prior = SamPrior(tiny_sam)
    ours = prior.preprocess(v)
    img = (v[0].permute(1, 2, 0) * 255).round().byte().numpy()
    calls, handle = _encoder_inputs(tiny_sam)
    try:
        SamPredictor(tiny_sam).set_image(img)
    finally:
        handle.remove()
    ref = calls[0]
    assert ours.shape == ref.shape
    # the predictor resizes uint8 with PIL: differences are ~1 grey level (1/57 after normalising)
    assert float((ours - ref).abs().max()) < 0.03
    assert float((ours - ref).abs().mean()) < 0.005


def test_sam_grid_prompts_match_automatic_generator(tiny_sam):
    # Our cached grid prompts decode to the same logits as the AMG's transformed point grid
    # through SamPredictor.predict_torch.
    h, w = 50, 80
    prior = SamPrior(tiny_sam, points_per_side=4)
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(3))
    x_resized = torch.nn.functional.interpolate(
        img * 255, size=prior.input_size(h, w), mode="bilinear", align_corners=False, antialias=True
    )
    pred = SamPredictor(tiny_sam)
    pred.set_torch_image(x_resized, (h, w))
    pts = pred.transform.apply_coords(build_point_grid(4) * np.array([[w, h]]), (h, w))
    pts_t = torch.as_tensor(pts, dtype=torch.float32)[:, None, :]
    _, iou_ref, low_ref = pred.predict_torch(pts_t, torch.ones(len(pts), 1, dtype=torch.int), multimask_output=True)
    with torch.no_grad():
        sparse, dense, pe = prior._prompts(*prior.input_size(h, w))
        logits, iou = prior.decode(pred.features, sparse, dense, pe)
    torch.testing.assert_close(logits, low_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, iou_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared_decoder", [True, False])
def test_sam_chunking_does_not_change_the_result(tiny_sam, shared_decoder):
    g = torch.Generator().manual_seed(1)
    t, v = torch.rand(2, 1, 40, 64, generator=g), torch.rand(2, 3, 40, 64, generator=g)
    # random weights give logits of ~0.03: a small stability offset makes the selection non-trivial
    opts = dict(points_per_side=5, pred_iou_thresh=0.0, stability_score_thresh=0.5, stability_score_offset=0.02,
                shared_decoder=shared_decoder)
    counted = []
    handle = tiny_sam.mask_decoder.register_forward_pre_hook(
        lambda mod, args, kwargs: counted.append(kwargs["sparse_prompt_embeddings"].shape[0]), with_kwargs=True
    )
    try:
        small = SamPrior(tiny_sam, points_per_batch=7, **opts)
        small.profile = True
        a = small.masks(t, v)
        n_small = list(counted)
        counted.clear()
        big = SamPrior(tiny_sam, points_per_batch=1000, **opts)
        big.profile = True
        b = big.masks(t, v)
        n_big = list(counted)
    finally:
        handle.remove()
    if shared_decoder:  # one call per chunk for the 4 images, not through MaskDecoder.forward
        assert n_small == n_big == []
        assert small.last_timings["decoder_calls"] == 4 and big.last_timings["decoder_calls"] == 1
    else:  # stock decoder: one call per chunk and image; 25 prompts per image in chunks of 7
        assert n_small == [7] * 12 + [4] * 4
        assert n_big == [25] * 4
    # the thresholds are set so that the selection is not trivial (some kept, some dropped)
    assert small.last_kept == big.last_kept
    assert all(0 < k < 75 for k in small.last_kept), small.last_kept
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (17, 9), (45, 70), (128, 128), (200, 130)])
def test_sam_output_shape_range_determinism(tiny_sam, size):
    g = torch.Generator().manual_seed(2)
    t, v = torch.rand(2, 1, *size, generator=g), torch.rand(2, 3, *size, generator=g)
    prior = SamPrior(tiny_sam, points_per_side=3, **KEEP_ALL)
    m_ir, m_vis = prior.masks(t, v)
    for m in (m_ir, m_vis):
        assert m.shape == (2, 1, *size) and m.dtype == torch.float32
        assert torch.isfinite(m).all() and float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    again = prior.masks(t, v)
    assert torch.equal(again[0], m_ir) and torch.equal(again[1], m_vis)


def test_sam_empty_selection_uses_fallback_map(tiny_sam):
    _, v = load_pair("00537D.png")
    t, _ = load_pair("00537D.png")
    none_kept = dict(pred_iou_thresh=1e9, stability_score_thresh=1.0, points_per_side=3)
    prior = SamPrior(tiny_sam, **none_kept)
    m_ir, m_vis = prior.masks(t, v)
    # equals the per-pixel soft threshold of the score map on the low-res grid, upsampled
    hl, wl = 24, 32  # 480x640 -> input 96x128 -> low-res 32x32 grid cropped to 24x32
    ir_small = torch.nn.functional.interpolate(t, size=(hl, wl), mode="area")
    p = prior.params
    ref = soft_threshold(ir_score_map(ir_small, p), p.ir_threshold, p.softness)
    ref = torch.nn.functional.interpolate(ref, size=t.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(m_ir, ref, atol=1e-5, rtol=0)
    assert float(m_vis.mean()) > 0.02
    off = SamPrior(tiny_sam, empty_fallback=False, **none_kept).masks(t, v)
    assert float(off[0].max()) == 0.0 and float(off[1].max()) == 0.0


def test_sam_merge_with_ideal_segments(tiny_sam):
    """Stand-in decoder returning perfect segments: the merged channels are the right segments, aligned.

    A non-square frame checks the crop of the padded low-res grid and the upsampling back to H x W.
    """
    H, W = 90, 150
    g = torch.Generator().manual_seed(4)
    warm = torch.zeros(H, W, dtype=torch.bool)
    warm[30:70, 60:90] = True  # a warm target
    textured = torch.zeros(H, W, dtype=torch.bool)
    textured[5:35, 5:55] = True  # a textured object in the visible image
    thermal = (0.3 + 0.01 * torch.randn(1, 1, H, W, generator=g)).clamp(0, 1)
    thermal[..., warm] = 0.8
    visible = torch.full((1, 3, H, W), 0.5) + 0.005 * torch.randn(1, 3, H, W, generator=g)
    visible[..., textured] = torch.rand(1, 3, int(textured.sum()), generator=g)

    # the stand-in replaces the per-image stock decode, used with shared_decoder=False
    prior = SamPrior(tiny_sam, points_per_side=3, points_per_batch=4, shared_decoder=False)
    nh, nw = prior.input_size(H, W)
    S, L = prior.img_size, tiny_sam.prompt_encoder.mask_input_size[0]

    def to_logits(m: torch.Tensor) -> torch.Tensor:  # full-res mask -> padded low-res logits, as SAM's
        x = torch.nn.functional.interpolate(m[None, None].float(), size=(nh, nw), mode="bilinear")
        x = torch.nn.functional.pad(x, (0, S - nw, 0, S - nh))
        x = torch.nn.functional.interpolate(x, size=(L, L), mode="area")[0, 0]
        return torch.where(x > 0.5, 10.0, -10.0)

    rest = ~(warm | textured)  # the background segment (~73 % of the frame)
    cands = torch.stack([to_logits(warm), to_logits(textured), to_logits(rest)])

    def ideal_decode(embedding, sparse, dense, image_pe):
        p = sparse.shape[0]
        return cands.expand(p, -1, -1, -1).clone(), torch.full((p, 3), 0.95)

    prior.decode = ideal_decode
    m_ir, m_vis = prior.masks(thermal, visible)

    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a & b).sum() / (a | b).sum())

    assert iou(m_ir[0, 0] > 0.5, warm) > 0.85
    assert iou(m_vis[0, 0] > 0.5, textured) > 0.85
    # background segment (large, not salient) and the other modality's segment stay out
    assert float(m_ir[0, 0][textured].max()) < 0.05 and float(m_vis[0, 0][warm].max()) < 0.05
    assert float(m_ir[0, 0, 0:3, 100:150].max()) == 0.0


def test_sam_profile_timings(tiny_sam):
    prior = SamPrior(tiny_sam, points_per_side=4, points_per_batch=5, **KEEP_ALL)
    prior.profile = True
    prior.masks(torch.rand(1, 1, 30, 40), torch.rand(1, 3, 30, 40))
    tm = prior.last_timings
    assert tm["decoder_calls"] == math.ceil(16 / 5)  # one call per chunk for both images
    assert all(tm[k] >= 0 for k in ("preprocess", "encoder", "decoder", "merge", "upsample", "total"))
    assert prior.last_kept == [48, 48]


def test_sam_offline_amg_helper(tiny_sam):
    prior = SamPrior(tiny_sam, points_per_side=4, **KEEP_ALL)
    t, v = torch.rand(1, 1, 40, 48), torch.rand(1, 3, 40, 48)
    m_ir, m_vis = prior.masks_offline_amg(t, v, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    for m in (m_ir, m_vis):
        assert m.shape == (1, 1, 40, 48) and float(m.min()) >= 0 and float(m.max()) <= 1


# ---------------------------------------------------------------------------------------------
# Segment selection and composition (unit tests with hand-made segments)
# ---------------------------------------------------------------------------------------------


def test_select_segments():
    crisp = torch.full((10, 10), -10.0)
    crisp[2:6, 2:6] = 10.0  # stability 1
    ramp = torch.linspace(-3, 3, 10).expand(10, 10).clone()  # > +1: 3 columns, > -1: 6-7 columns
    logits = torch.stack([crisp, ramp, crisp, torch.full((10, 10), -5.0)])
    iou = torch.tensor([0.9, 0.95, 0.5, 0.99])
    keep = select_segments(logits, iou, pred_iou_thresh=0.8, stability_score_thresh=0.9)
    assert keep.tolist() == [True, False, False, False]  # ramp unstable, low IoU, empty
    keep = select_segments(logits, iou, pred_iou_thresh=0.8, stability_score_thresh=0.4)
    assert keep.tolist() == [True, True, False, False]


def test_segment_scores_and_compose():
    h, w = 10, 10
    s_small = torch.zeros(h, w)
    s_small[0:2, 0:5] = 1  # 10 % of the image
    s_mid = torch.zeros(h, w)
    s_mid[5:10, 0:10] = 1  # 50 %
    s_big = torch.ones(h, w)
    s_big[0:2, 0:5] = 0  # 90 %
    segs = torch.stack([s_small, s_mid, s_big])
    score_map = torch.zeros(h, w)
    score_map[0:2, 0:5] = 4.0
    score_map[5:10, :] = 2.0
    scores = segment_scores(segs, score_map)
    torch.testing.assert_close(scores, torch.tensor([4.0, 2.0, 100.0 / 90.0]))
    assert float(segment_scores(torch.zeros(1, h, w), score_map)[0]) == 0.0

    thr, soft = 1.5, 1.0

    def sig(s: float) -> float:  # smoothstep from thr - soft (0) to thr + soft (1)
        u = min(max((s - (thr - soft)) / (2 * soft), 0.0), 1.0)
        return u * u * (3 - 2 * u)

    assert (sig(4.0), sig(1.5), sig(0.2)) == (1.0, 0.5, 0.0)
    m = compose_segments(segs, scores, threshold=thr, softness=soft, large_segment_frac=0.6)
    # small: full weight; mid (50 % <= 60 %): full weight; big (90 %): weight (1-0.9)/(1-0.6) = 0.25
    assert m[0, 0].item() == pytest.approx(sig(4.0), abs=1e-6)
    assert m[7, 3].item() == pytest.approx(max(sig(2.0), 0.25 * sig(100 / 90)), abs=1e-6)
    assert m[3, 3].item() == pytest.approx(0.25 * sig(100 / 90), abs=1e-6)
    # max, not sum: a duplicate segment changes nothing
    m_dup = compose_segments(torch.cat([segs, segs[:1]]), torch.cat([scores, scores[:1]]), threshold=thr, softness=soft)
    torch.testing.assert_close(m_dup, m)
    # keep mask drops segments; merging chunks with max equals merging all at once
    m_keep = compose_segments(segs, scores, threshold=thr, softness=soft, keep=torch.tensor([False, True, True]))
    assert m_keep[0, 0].item() == pytest.approx(0.0)
    parts = torch.maximum(
        compose_segments(segs[:1], scores[:1], threshold=thr, softness=soft),
        compose_segments(segs[1:], scores[1:], threshold=thr, softness=soft),
    )
    torch.testing.assert_close(parts, m)
    assert compose_segments(torch.zeros(0, h, w), torch.zeros(0), threshold=thr, softness=soft).shape == (h, w)
