"""FusionPipeline end to end on the bundled real pairs (CPU): outputs, determinism, faults, quality."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros.cli import find_pairs, read_thermal, read_visible
from sgdfuse_ros.config import FuseConfig
from sgdfuse_ros.imaging import InvalidImageError
from sgdfuse_ros.metrics import evaluate
from sgdfuse_ros.models.stage1 import load_stage1
from sgdfuse_ros.pipeline import FusionPipeline, resolve_device
from sgdfuse_ros.priors.sam import SamPrior, build_sam_tiny

PAIRS = Path(__file__).resolve().parents[1] / "samples" / "pairs"
HELD_OUT = ["FLIR_04269", "FLIR_04598", "FLIR_06307", "FLIR_06570", "FLIR_08835"]


@pytest.fixture(scope="module")
def pipeline() -> FusionPipeline:
    return FusionPipeline.from_config(FuseConfig())


def load_pair(stem: str):
    suffix = ".jpg" if stem.startswith("FLIR") else ".png"
    thermal, thermal_encoding = read_thermal(PAIRS / "ir" / f"{stem}{suffix}")
    visible, visible_encoding = read_visible(PAIRS / "vi" / f"{stem}{suffix}")
    return thermal, visible, thermal_encoding, visible_encoding


def test_outputs_live_on_the_rgb_grid_and_timings_are_reported(pipeline):
    thermal, visible, te, ve = load_pair("FLIR_04598")
    result = pipeline.fuse(thermal, visible, te, ve, keep_preliminary=True)
    height, width = visible.shape[:2]
    assert result.fused.shape == (height, width, 3) and result.fused.dtype == np.uint8
    assert result.preliminary.shape == (height, width, 3)
    assert result.mask_ir.shape == (height, width) and result.mask_ir.dtype == np.uint8
    assert result.mask_vis.shape == (height, width)
    assert {"preprocess", "prior", "stage1", "postprocess", "total"} <= set(result.timings_ms)
    assert result.timings_ms["total"] >= result.timings_ms["stage1"] > 0
    assert pipeline.prior_name == "fallback"


def test_fusion_is_deterministic(pipeline):
    thermal, visible, te, ve = load_pair("00537D")
    first = pipeline.fuse(thermal, visible, te, ve)
    second = pipeline.fuse(thermal, visible, te, ve)
    np.testing.assert_array_equal(first.fused, second.fused)
    np.testing.assert_array_equal(first.mask_ir, second.mask_ir)


def test_thermal_of_another_size_and_mono16_is_registered_onto_the_rgb_grid(pipeline):
    thermal, visible, _, ve = load_pair("00004N")
    small = cv2.resize(thermal, (320, 240), interpolation=cv2.INTER_AREA)
    counts = np.round(27000 + small.astype(np.float64) / 255.0 * 6000).astype(np.uint16)
    result = pipeline.fuse(counts, visible, "mono16", ve)
    reference = pipeline.fuse(thermal, visible, "mono8", ve)
    assert result.fused.shape == visible.shape
    # Same scene at half the thermal resolution: close to the full-resolution fusion.
    assert np.abs(result.fused.astype(float) - reference.fused.astype(float)).mean() < 6.0


def test_colour_comes_from_the_visible_camera(pipeline):
    thermal, visible, te, ve = load_pair("00537D")
    result = pipeline.fuse(thermal, visible, te, ve)
    fused_ycc = cv2.cvtColor(cv2.cvtColor(result.fused, cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2YCrCb).astype(float)
    visible_ycc = cv2.cvtColor(visible, cv2.COLOR_BGR2YCrCb).astype(float)
    chroma_error = np.abs(fused_ycc[..., 1:] - visible_ycc[..., 1:])
    assert np.median(chroma_error) <= 2.0


def test_bad_input_raises_invalid_image_error(pipeline):
    thermal, visible, _, ve = load_pair("FLIR_04598")
    with pytest.raises(InvalidImageError) as info:
        pipeline.fuse(thermal.astype(np.float32) * np.nan, visible, "32FC1", ve)
    assert info.value.reason == "thermal_nonfinite"


def test_missing_weights_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "stage1.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        FusionPipeline.from_config(FuseConfig().updated({"stage1.weights": str(missing)}))
    with pytest.raises(FileNotFoundError, match="sam_missing.pth"):
        FusionPipeline.from_config(FuseConfig().updated({"prior.sam_checkpoint": str(tmp_path / "sam_missing.pth")}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without CUDA")
def test_cuda_requested_without_cuda_falls_back_to_cpu():
    device, note = resolve_device("cuda")
    assert device.type == "cpu" and "not available" in note
    pipeline = FusionPipeline.from_config(FuseConfig().updated({"compute.device": "cuda:0"}))
    assert pipeline.device.type == "cpu" and "CUDA" in pipeline.device_note


def test_sam_prior_masks_flow_through_the_pipeline():
    """Real segment_anything modules (tiny random configuration) as the prior of the full pipeline."""
    torch.manual_seed(0)
    prior = SamPrior(
        build_sam_tiny(),
        device="cpu",
        points_per_side=4,
        points_per_batch=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    config = FuseConfig()
    pipeline = FusionPipeline(config, prior=prior, stage1=load_stage1(_shipped_stage1()), device="cpu")
    thermal, visible, te, ve = load_pair("FLIR_08835")
    result = pipeline.fuse(thermal, visible, te, ve)
    assert result.mask_ir.shape == visible.shape[:2]
    assert pipeline.prior_name.startswith("sam")


def _shipped_stage1() -> str:
    from sgdfuse_ros.models.stage1 import default_stage1_weights_path

    return str(default_stage1_weights_path())


def test_fallback_masks_cover_a_sensible_share_and_mark_warm_targets(pipeline):
    for stem, _, _ in find_pairs(PAIRS):
        thermal, visible, te, ve = load_pair(stem)
        result = pipeline.fuse(thermal, visible, te, ve)
        ir_cover = (result.mask_ir > 127).mean()
        vis_cover = (result.mask_vis > 127).mean()
        assert 0.05 <= ir_cover <= 0.60, (stem, ir_cover)
        assert 0.05 <= vis_cover <= 0.60, (stem, vis_cover)
        registered = cv2.resize(thermal, visible.shape[1::-1]).astype(float)
        inside = registered[result.mask_ir > 127].mean()
        outside = registered[result.mask_ir <= 127].mean()
        assert inside >= 1.5 * outside, (stem, inside, outside)  # warm targets, as in test_priors


def test_shipped_stage1_beats_the_pixel_average_on_held_out_pairs(pipeline):
    """Shipped weights on RoadScene pairs excluded from training: better SF, AG, SD and Qabf than (ir+vis)/2."""
    from sgdfuse_ros.training import HELD_OUT_NAMES

    assert set(HELD_OUT) <= set(HELD_OUT_NAMES)
    ours, average = [], []
    for stem in HELD_OUT:
        thermal, visible, te, ve = load_pair(stem)
        result = pipeline.fuse(thermal, visible, te, ve, keep_preliminary=True)
        grey_vis = cv2.cvtColor(visible, cv2.COLOR_BGR2GRAY)
        mean_image = np.round((thermal.astype(float) + grey_vis.astype(float)) / 2.0).astype(np.uint8)
        fused_bgr = cv2.cvtColor(result.preliminary, cv2.COLOR_RGB2BGR)
        ours.append(evaluate(fused_bgr, thermal, grey_vis))
        average.append(evaluate(mean_image, thermal, grey_vis))
    for metric in ("SF", "AG", "SD", "Qabf"):
        ours_mean = float(np.mean([m[metric] for m in ours]))
        average_mean = float(np.mean([m[metric] for m in average]))
        assert ours_mean > average_mean, (metric, ours_mean, average_mean)


def test_stretching_aspect_ratio_is_warned_once_per_size(caplog) -> None:
    import logging

    pipeline = FusionPipeline.from_config(FuseConfig().updated({"prior.kind": "fallback"}))
    thermal = np.zeros((480, 640), np.uint8)
    wide = np.zeros((265, 546, 3), np.uint8)  # 2.06 against 1.33: stretched by 'resize'
    with caplog.at_level(logging.WARNING, logger="sgdfuse_ros"):
        for _ in range(3):
            pipeline.prepare(thermal, wide, "mono8", "rgb8")
        pipeline.prepare(thermal, np.zeros((240, 320, 3), np.uint8), "mono8", "rgb8")  # same ratio: silent
    lines = [r.getMessage() for r in caplog.records if "aspect ratio" in r.getMessage()]
    assert len(lines) == 1 and "registration.mode" in lines[0] and "640x480" in lines[0]
