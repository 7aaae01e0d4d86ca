"""Evaluation: classical baselines, peer matching, ablation plumbing and the `sgdfuse evaluate` command.

The full dataset runs (MSRS, M3FD, RoadScene) are reports, not tests (docs/evaluation.md); these checks use
tiny synthetic images with known answers and the bundled pairs in samples/pairs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros.cli import find_pairs, main
from sgdfuse_ros.config import FuseConfig
from sgdfuse_ros.evaluation import baselines
from sgdfuse_ros.evaluation import report as report_module
from sgdfuse_ros.evaluation.ablation import build_ablation_variants, morph_mask
from sgdfuse_ros.evaluation.run import (
    OURS,
    OURS_F1,
    at_least,
    choose_sheet_stems,
    find_peers,
    run_evaluation,
    select_pairs,
)
from sgdfuse_ros.metrics import METRIC_NAMES, evaluate, to_gray
from sgdfuse_ros.models.stage1 import build_stage1
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.priors import build_prior

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "samples" / "pairs"
REFERENCE = json.loads((REPO / "test" / "data" / "metrics_reference.json").read_text())["values"]
BUNDLED_SEAFUSION = REPO / "test" / "data" / "peers" / "SeAFusion"


# ------------------------------------------------------------------------------------------------ baselines


def test_pixel_average_rounds_half_to_even_and_maximum_is_exact():
    ir = np.array([[0, 1, 2, 255, 2, 10]], dtype=np.float64)
    vis = np.array([[1, 1, 5, 0, 3, 200]], dtype=np.float64)
    # (0+1)/2 = 0.5 -> 0, 3.5 -> 4, 127.5 -> 128, 2.5 -> 2 (half to even), 105 exact.
    np.testing.assert_array_equal(baselines.pixel_average(ir, vis), [[0, 1, 4, 128, 2, 105]])
    np.testing.assert_array_equal(baselines.pixel_maximum(ir, vis), [[1, 1, 5, 255, 3, 200]])
    with pytest.raises(ValueError, match="one size"):
        baselines.pixel_average(ir, vis[:, :3])


def test_baselines_reproduce_the_reference_rows_on_bundled_pairs():
    for stem in ("00004N", "00537D"):
        ir = to_gray(cv2.imread(str(PAIRS / "ir" / f"{stem}.png")))
        vi = to_gray(cv2.imread(str(PAIRS / "vi" / f"{stem}.png")))
        for name in ("pixel maximum", "pixel average"):
            got = evaluate(baselines.BASELINES[name](ir, vi), ir, vi)
            want = REFERENCE[name][stem]
            for metric in METRIC_NAMES:
                assert got[metric] == pytest.approx(want[metric], rel=1e-9), (stem, name, metric)


def test_laplacian_pyramid_reconstructs_and_fusing_an_image_with_itself_returns_it():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(61, 83)).astype(np.float64)  # odd sizes on purpose
    pyramid = baselines.laplacian_pyramid(image, 5)
    assert len(pyramid) == 5 and pyramid[1].shape == (31, 42)
    np.testing.assert_allclose(baselines.reconstruct_laplacian_pyramid(pyramid), image, atol=1e-9)
    np.testing.assert_array_equal(baselines.laplacian_pyramid_fusion(image, image), image)


def test_laplacian_pyramid_keeps_the_detail_of_either_source():
    # IR carries a bright square on a flat background, VIS one-pixel stripes: the fusion keeps both sources' edges
    # at nearly full strength (max-abs detail selection), where the average halves them.
    ir = np.full((64, 64), 60.0)
    ir[20:40, 20:40] = 220.0
    vis = np.full((64, 64), 100.0)
    vis[:, ::8] = 200.0
    fused = baselines.laplacian_pyramid_fusion(ir, vis, levels=4)
    assert fused.min() >= 0 and fused.max() <= 255 and np.array_equal(fused, np.round(fused))
    square_edge = np.abs(np.diff(fused[30, 15:25])).max()  # across the square's left edge (IR step 160)
    stripe = fused[5, 8] - fused[5, 10]  # a stripe against its background (VIS step 100)
    assert square_edge > 0.9 * 160 and stripe > 0.9 * 100
    average = baselines.pixel_average(ir, vis)
    assert np.abs(np.diff(average[30, 15:25])).max() <= 80 and average[5, 8] - average[5, 10] <= 50


# ------------------------------------------------------------------------------------------------ selection


def test_select_pairs_limit_is_evenly_spaced_and_stems_are_checked():
    pairs = [(f"{i:03d}", Path(f"ir/{i}"), Path(f"vi/{i}")) for i in range(10)]
    assert [p[0] for p in select_pairs(pairs, limit=4)] == ["000", "003", "006", "009"]
    assert [p[0] for p in select_pairs(pairs, stems=["005", "001"])] == ["001", "005"]
    assert len(select_pairs(pairs, limit=50)) == 10
    with pytest.raises(ValueError, match="not found"):
        select_pairs(pairs, stems=["nope"])


def test_peers_are_matched_by_stem_only_on_covered_pairs(tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    (tmp_path / "Empty").mkdir()
    for name in ("x.png", "y.png", "unrelated.png", "notes.txt"):
        (tmp_path / "A" / name).write_bytes(b"")
    (tmp_path / "B" / "y.png").write_bytes(b"")
    (tmp_path / "Empty" / "z.png").write_bytes(b"")
    peers = find_peers(tmp_path, ["x", "y"])
    assert list(peers) == ["A", "B"]  # most coverage first; Empty covers nothing
    assert sorted(peers["A"]) == ["x", "y"] and list(peers["B"]) == ["y"]
    # Contact sheet: y shows both peers; then the rest evenly spaced (first and last of w, x, z).
    assert choose_sheet_stems(["w", "x", "y", "z"], peers, 3) == ["w", "y", "z"]
    assert choose_sheet_stems(["w", "x", "y"], {"A": {"x": Path()}, "B": {"y": Path()}}, 2) == ["x", "y"]


def test_ties_within_one_percent_count_as_at_least():
    assert at_least(0.995, 1.0) and at_least(1.2, 1.0) and not at_least(0.98, 1.0)
    assert at_least(-1.005, -1.0) and not at_least(float("nan"), 1.0)


def test_mask_erosion_and_dilation_shrink_and_grow_gradually():
    mask = np.zeros((60, 60), np.float32)
    cv2.circle(mask, (30, 30), 15, 1.0, -1)
    areas = [morph_mask(mask, "erode", r).sum() for r in (7, 3)] + [mask.sum()]
    areas += [morph_mask(mask, "dilate", r).sum() for r in (3, 7)]
    assert all(a < b for a, b in zip(areas, areas[1:], strict=False))
    np.testing.assert_array_equal(morph_mask(mask, "erode", 0), mask)
    np.testing.assert_array_equal(morph_mask(np.ones((9, 9), np.float32), "erode", 3), 1.0)  # frame is no edge


# ------------------------------------------------------------------------------------------------ ablations


class MaskScaledRefiner:
    """Test double for Stage II: brightens F1 where M_ir is set and darkens it where M_vis is (mask-dependent)."""

    name = "test-double(mask-scaled)"

    def refine(self, preliminary, mask_ir, mask_vis, thermal=None, visible_y=None):
        return (preliminary * (1.0 - 0.3 * mask_vis) + 0.3 * mask_ir).clamp(0.0, 1.0)


@pytest.fixture(scope="module")
def untrained_pipeline() -> FusionPipeline:
    # The ablation plumbing does not depend on what Stage I learnt: an untrained network keeps the test
    # independent of the shipped weights.
    torch.manual_seed(0)
    return FusionPipeline(FuseConfig(), prior=build_prior("fallback"), stage1=build_stage1())


def test_without_stage2_every_stage2_ablation_is_marked_unavailable(untrained_pipeline):
    untrained_pipeline.refiner = None
    variants = build_ablation_variants(untrained_pipeline)
    assert [v.key for v in variants if not v.unavailable] == ["stage1_only"]
    assert all("no Stage II" in v.unavailable for v in variants if v.key != "stage1_only")


def test_ablations_rerun_stage2_on_the_same_f1_and_masks(untrained_pipeline, tmp_path):
    untrained_pipeline.refiner = MaskScaledRefiner()
    pairs = select_pairs(find_pairs(PAIRS), ["FLIR_04598"])
    summary = run_evaluation(
        pairs, untrained_pipeline, tmp_path, ablations=True, morph_radii=(0, 5), log=lambda _: None
    )
    rows = {r["key"]: r for r in summary["ablations"]["rows"]}
    per = {k: r.get("per_image", {}).get("FLIR_04598") for k, r in rows.items()}
    assert per["full"] == summary["methods"][OURS]["per_image"]["FLIR_04598"]
    assert per["stage1_only"] == summary["methods"][OURS_F1]["per_image"]["FLIR_04598"]
    # Radius 0 is the identity: the re-run reproduces the pipeline's own Stage II output exactly.
    assert per["erode_0"] == per["full"] and per["dilate_0"] == per["full"]
    for key in ("no_masks", "erode_5", "dilate_5"):
        assert per[key] != per["full"], key
    assert not rows["no_hfah"]["available"] and rows["no_hfah"]["note"] and "mean" not in rows["no_hfah"]
    untrained_pipeline.refiner = None
    # The zeroed-mask output is F1 darkened nowhere and brightened nowhere: exactly F1.
    assert per["no_masks"] == per["stage1_only"]
    saved = cv2.imread(str(tmp_path / "images" / "ablations" / "no_masks" / "FLIR_04598.png"))
    np.testing.assert_array_equal(saved, cv2.imread(str(tmp_path / "images" / "f1" / "FLIR_04598.png")))
    assert "| masks dilated 5 px | 1 |" in (tmp_path / "report.md").read_text()


def test_sampler_ablations_resample_the_same_network(untrained_pipeline):
    from sgdfuse_ros.models.diffusion import NoiseSchedule
    from sgdfuse_ros.models.stage2 import DiffusionRefiner, Stage2Config, build_stage2

    untrained_pipeline.refiner = MaskScaledRefiner()
    rows = {v.key: v for v in build_ablation_variants(untrained_pipeline, (3,), None, (1, 8), (0.25,))}
    assert "not a DiffusionRefiner" in rows["steps_1"].unavailable  # a test double has no sampler to vary
    model = build_stage2(Stage2Config(base_channels=8, channel_mults=(1, 2), attn_heads=2, hfah_width=4))
    untrained_pipeline.refiner = DiffusionRefiner(model, NoiseSchedule(), steps=4, strength=0.5, seed=3)
    try:
        rows = {v.key: v for v in build_ablation_variants(untrained_pipeline, (3,), None, (1, 8), (0.25,))}
    finally:
        untrained_pipeline.refiner = None
    assert [k for k in rows if k.startswith(("steps", "strength"))] == ["steps_1", "steps_8", "strength_0.25"]
    one, eight, weak = rows["steps_1"].refiner, rows["steps_8"].refiner, rows["strength_0.25"].refiner
    assert (one.steps, one.strength, eight.steps, weak.steps, weak.strength) == (1, 0.5, 8, 4, 0.25)
    assert one.model is model and weak.seed == 3 and not rows["steps_1"].unavailable


# ------------------------------------------------------------------------------------------------ the command


def test_evaluate_command_on_two_bundled_pairs_with_peers(tmp_path, capsys):
    data = tmp_path / "data"
    for sub in ("ir", "vi"):
        (data / sub).mkdir(parents=True)
        for stem in ("00004N", "00537D"):
            shutil.copy(PAIRS / sub / f"{stem}.png", data / sub / f"{stem}.png")
    peers = tmp_path / "peers"
    (peers / "SeAFusion").mkdir(parents=True)
    shutil.copy(BUNDLED_SEAFUSION / "00537D.png", peers / "SeAFusion" / "00537D.png")  # covers 1 of the 2 pairs
    (peers / "CopyOfIR").mkdir()
    for stem in ("00004N", "00537D"):
        shutil.copy(PAIRS / "ir" / f"{stem}.png", peers / "CopyOfIR" / f"{stem}.png")
    shutil.copy(PAIRS / "ir" / "00537D.png", peers / "CopyOfIR" / "00999D.png")  # no such pair: ignored
    out = tmp_path / "eval"

    assert main(["evaluate", "--data", str(data), "--peers", str(peers), "--out", str(out), "--no-images"]) == 0
    assert "evaluating 2 pair(s)" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert results["n_pairs"] == 2 and results["stems"] == ["00004N", "00537D"]
    assert methods[OURS]["n"] == 2 and methods["pixel maximum"]["n"] == 2 and methods["Laplacian pyramid"]["n"] == 2
    assert methods["peer:SeAFusion"]["stems"] == ["00537D"] and methods["peer:CopyOfIR"]["n"] == 2
    for stem in ("00004N", "00537D"):
        for metric in METRIC_NAMES:
            want = REFERENCE["pixel maximum"][stem][metric]
            assert methods["pixel maximum"]["per_image"][stem][metric] == pytest.approx(want, rel=1e-9)
    for metric in METRIC_NAMES:
        want = REFERENCE["SeAFusion"]["00537D"][metric]
        assert methods["peer:SeAFusion"]["mean"][metric] == pytest.approx(want, rel=1e-9)
    # Each peer is compared with our mean on exactly the pairs it covers.
    seafusion = next(c for c in results["comparisons"] if c["method"] == "peer:SeAFusion")
    assert seafusion["n"] == 1 and seafusion["ours_mean"] == methods[OURS]["per_image"]["00537D"]
    counted = sum(at_least(seafusion["ours_mean"][m], seafusion["other_mean"][m]) for m in METRIC_NAMES)
    assert seafusion["ours_at_least"]["count"] == counted
    # A peer file is read as the evaluator reads it: a copy of the IR input scores as evaluate(IR, IR, VIS).
    ir = to_gray(cv2.imread(str(PAIRS / "ir" / "00004N.png")))
    vi = to_gray(cv2.imread(str(PAIRS / "vi" / "00004N.png")))
    copy_scores, direct = methods["peer:CopyOfIR"]["per_image"]["00004N"], evaluate(ir, ir, vi)
    assert all(copy_scores[m] == direct[m] for m in METRIC_NAMES if m != "SCD")
    assert copy_scores["SCD"] is None and np.isnan(direct["SCD"])  # F - A is constant: NaN, written as null

    report = (out / "report.md").read_text()
    # results.json holds everything the report shows: regenerating it from the file gives the same markdown.
    assert report_module.markdown_report(json.loads((out / "results.json").read_text())) == report
    assert "| SeAFusion | 1 |" in report and "| ours on the same 1 | 1 |" in report
    assert "| CopyOfIR | 2 |" in report and "| pixel average | 2 |" in report
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    bar = cv2.imread(str(out / "metrics_bar.png"))
    assert sheet is not None and bar is not None
    columns = 6 + 2  # IR, VIS, M_ir, M_vis, F1, final + the two peers
    assert sheet.shape[1] > columns * 240 and sheet.shape[0] > 2 * 180  # two rows of 240-px tiles
    assert not (out / "images").exists()
