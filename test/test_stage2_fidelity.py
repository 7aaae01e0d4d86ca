"""Stage II on the rebuilt Stage I: the fidelity objective, the source-conditioned network, the Stage II rule, the
night-proxy cache and validation on held-out pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_stage2 import PAIRS, SMALL, TRAIN_PAIRS, make_train_dir, randomise, real_crop, refiner_tensors, train_args

from sgdfuse_ros.evaluation.targets import STAGE2_GAIN, stage2_rule
from sgdfuse_ros.imaging import merge_luma_chroma, split_luma_chroma
from sgdfuse_ros.losses_stage2 import Stage2Loss, fidelity_gradient_loss
from sgdfuse_ros.metrics import METRIC_NAMES
from sgdfuse_ros.models.diffusion import NoiseSchedule
from sgdfuse_ros.models.stage2 import DiffusionRefiner, Stage2Config, build_stage2, load_refiner, stage2_checkpoint
from sgdfuse_ros.priors import FallbackPrior

SOURCES = Stage2Config.from_dict({**SMALL.to_dict(), "condition": "f1_masks_sources"})


# --------------------------------------------------------------------------------------------------------
# Fidelity objective (hand-made tensors)
# --------------------------------------------------------------------------------------------------------


def test_fidelity_gradient_loss_penalises_softening_only():
    f1 = torch.zeros(1, 1, 8, 8)
    f1[..., 4:] = 0.5  # a vertical edge
    mask = torch.zeros_like(f1)
    assert fidelity_gradient_loss(f1, f1, mask).item() == 0.0
    sharper = f1 * 1.6
    assert fidelity_gradient_loss(sharper, f1, mask).item() == 0.0
    softer = f1 * 0.5
    assert fidelity_gradient_loss(softer, f1, mask).item() > 0.1


def test_fidelity_objective_is_the_paper_intensity_term_with_an_f1_gradient_floor():
    ir, vis = real_crop(size=(40, 56))
    y, chroma = split_luma_chroma(vis)
    f1 = merge_luma_chroma(0.5 * (ir + y), chroma)
    m_ir, m_vis = FallbackPrior(work_size=0).masks(ir, vis)
    assert m_ir.sum() > 0
    fidelity, paper = Stage2Loss(objective="fidelity"), Stage2Loss(objective="max")
    on_f1 = fidelity(f1, ir, vis, f1, m_ir, m_vis)
    assert on_f1.gradient.item() == 0.0 and on_f1.anchor.item() == 0.0 and on_f1.chroma.item() < 1e-3
    torch.testing.assert_close(on_f1.intensity, paper(f1, ir, vis, f1, m_ir, m_vis).intensity)
    # A blurred F1 is penalised for the edges it lost; the paper's gradient target would reward some blur
    # wherever F1 is sharper than both sources.
    blurred = torch.nn.functional.avg_pool2d(f1, 5, 1, 2, count_include_pad=False)
    assert fidelity(blurred, ir, vis, f1, m_ir, m_vis).gradient.item() > 0.01
    y_f1 = split_luma_chroma(f1)[0]
    torch.testing.assert_close(
        fidelity(blurred, ir, vis, f1, m_ir, m_vis).gradient,
        fidelity_gradient_loss(split_luma_chroma(blurred)[0], y_f1, m_vis),
    )


# --------------------------------------------------------------------------------------------------------
# Source-conditioned network
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_inputs():
    return refiner_tensors()


def test_source_conditioned_refiner_reads_the_sources(source_inputs):
    f1, m_ir, m_vis, ir, y = source_inputs
    model = randomise(build_stage2(SOURCES), std=0.05)
    refiner = DiffusionRefiner(model, NoiseSchedule(), steps=2, strength=0.5)
    assert "sources" in refiner.name
    with pytest.raises(ValueError, match="sources"):
        refiner.refine(f1, m_ir, m_vis)
    out = refiner.refine(f1, m_ir, m_vis, ir, y)
    assert out.shape == f1.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, refiner.refine(f1, m_ir, m_vis, 1.0 - ir, y))  # the thermal image matters
    with pytest.raises(ValueError, match=r"\[N,7,H,W\]"):
        model(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, 5, 16, 16))


def test_paper_condition_ignores_the_sources_and_old_configs_load(source_inputs, tmp_path):
    f1, m_ir, m_vis, ir, y = source_inputs
    model = randomise(build_stage2(SMALL), std=0.05)
    refiner = DiffusionRefiner(model, NoiseSchedule(), steps=2, strength=0.5)
    assert torch.equal(refiner.refine(f1, m_ir, m_vis), refiner.refine(f1, m_ir, m_vis, ir, y))
    old = SMALL.to_dict()
    old.pop("condition")  # checkpoints written before the option existed
    assert Stage2Config.from_dict(old).condition == "f1_masks"
    with pytest.raises(ValueError, match="condition"):
        Stage2Config(condition="f1_only")
    path = tmp_path / "sources.pt"
    sourced = randomise(build_stage2(SOURCES), std=0.05)
    torch.save(stage2_checkpoint(sourced, NoiseSchedule()), path)
    loaded = load_refiner(path, steps=2)
    assert loaded.model.config.condition == "f1_masks_sources"
    expected = DiffusionRefiner(sourced, NoiseSchedule(), steps=2).refine(f1, m_ir, m_vis, ir, y)
    assert torch.equal(loaded.refine(f1, m_ir, m_vis, ir, y), expected)


def test_pipeline_passes_the_sources_to_the_refiner():
    import cv2

    from sgdfuse_ros.config import FuseConfig
    from sgdfuse_ros.pipeline import FusionPipeline

    seen = {}

    class Recorder:
        name = "recorder"

        def refine(self, preliminary, mask_ir, mask_vis, thermal=None, visible_y=None):
            seen.update(thermal=thermal, visible_y=visible_y)
            return preliminary

    thermal = cv2.imread(str(PAIRS / "ir" / "FLIR_04598.jpg"), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.imread(str(PAIRS / "vi" / "FLIR_04598.jpg"), cv2.IMREAD_COLOR)[..., ::-1].copy()
    pipeline = FusionPipeline.from_config(FuseConfig())
    pipeline.refiner = Recorder()
    pipeline.fuse(thermal, rgb)
    assert seen["thermal"].shape == (1, 1, *rgb.shape[:2])
    np.testing.assert_allclose(seen["thermal"][0, 0].numpy() * 255.0, thermal, atol=0.51)
    assert seen["visible_y"].shape == (1, 1, *rgb.shape[:2])


# --------------------------------------------------------------------------------------------------------
# The Stage II rule
# --------------------------------------------------------------------------------------------------------


def test_stage2_rule_needs_a_real_gain_and_no_loss():
    f1 = dict.fromkeys(METRIC_NAMES, 2.0)
    assert not stage2_rule(f1, f1).passed  # changing nothing earns nothing
    better = {**f1, "MI": 2.0 * (1 + STAGE2_GAIN) + 1e-9, "SF": 2.0 * 0.995}
    assert stage2_rule(better, f1).passed and stage2_rule(better, f1).gained == ("MI",)
    softer = {**better, "SF": 2.0 * 0.98}
    result = stage2_rule(softer, f1)
    assert not result.passed and result.lost == ("SF",) and "SF -2.0 %" in result.describe()
    only_sharper = {**f1, "SF": 3.0}  # contrast gains do not count: Stage II must add fidelity
    assert not stage2_rule(only_sharper, f1).passed


# --------------------------------------------------------------------------------------------------------
# Night-proxy cache, validation split, validation
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def night_cache(tmp_path_factory):
    from sgdfuse_ros.training.stage2_cache import build_cache

    tmp = make_train_dir(tmp_path_factory.mktemp("stage2_night"))
    args = train_args(tmp, "run", night_proxy=True)
    build_cache(args, tmp / "cache")
    return tmp


def test_night_proxy_cache_holds_a_darkened_copy_of_every_pair(night_cache):
    from sgdfuse_ros.training.stage2_cache import CacheSet, cache_entry_names

    cache = CacheSet.load(night_cache / "cache")
    names = cache_entry_names(cache.manifest)
    assert names == [TRAIN_PAIRS[0], TRAIN_PAIRS[0] + "@night", TRAIN_PAIRS[1], TRAIN_PAIRS[1] + "@night"]
    day, night = cache.arrays[0], cache.arrays[1]
    assert np.array_equal(day["ir"], night["ir"])
    assert night["vis"].mean() < 0.8 * day["vis"].mean()
    assert not np.array_equal(day["f1"], night["f1"])  # Stage I ran on the darkened image
    # The validation pair (index 1 of 2) and its night copy are held out of training.
    kept = cache.without_validation(10)
    assert len(kept) == 2
    assert all(np.array_equal(a["ir"], b["ir"]) for a, b in zip(kept.arrays, cache.arrays[:2], strict=True))
    assert len(cache.without_validation(0)) == 4
    # A cache built without the proxy is refused for a run that asks for it (and the other way round).
    from sgdfuse_ros.training.stage2_cache import build_cache

    with pytest.raises(SystemExit, match="night_proxy"):
        build_cache(train_args(night_cache, "run", night_proxy=False), night_cache / "cache")


def test_validation_of_an_untrained_refiner_reports_no_gain(night_cache):
    from sgdfuse_ros.training.stage2_cache import CacheSet
    from sgdfuse_ros.training.stage2_validation import validate_refiner

    refiner = DiffusionRefiner(build_stage2(SOURCES), NoiseSchedule(), steps=1, strength=0.3)
    result = validate_refiner(refiner, CacheSet.load(night_cache / "cache"))
    assert set(result) == {"day", "night"} and result["day"]["pairs"] == result["night"]["pairs"] == 1
    for entry in result.values():
        # An untrained model returns F1 (up to uint8 rounding): no metric moves, the rule is not met.
        assert all(abs(c) < 0.01 for c in entry["change"].values())
        assert not entry["passed"]
    assert result["night"]["f1"]["EN"] != result["day"]["f1"]["EN"]


def test_stage2_validate_command_writes_json(night_cache, tmp_path):
    from sgdfuse_ros.training.__main__ import main

    weights = tmp_path / "s2.pt"
    torch.save(stage2_checkpoint(randomise(build_stage2(SMALL), std=0.02), NoiseSchedule()), weights)
    out = tmp_path / "val.json"
    args = ["stage2-validate", "--cache", str(night_cache / "cache"), "--weights", str(weights)]
    assert main([*args, "--steps", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["weights"] == str(weights) and set(record) >= {"day", "night", "refiner"}
    assert set(record["day"]["change"]) == set(METRIC_NAMES)


def test_training_with_the_source_condition_exports_it(night_cache):
    from sgdfuse_ros.training.stage2 import train_stage2

    args = train_args(night_cache, "run_sources", night_proxy=True, condition="f1_masks_sources", objective="fidelity")
    record = train_stage2(args)
    assert record["config"]["condition"] == "f1_masks_sources"
    assert record["training"]["objective"] == "fidelity"
    assert record["dataset"]["training_images"] == 2 and record["dataset"]["night_proxy"] is True
    assert load_refiner(Path(args.out) / "stage2.pt").model.config.uses_sources


# --------------------------------------------------------------------------------------------------------
# Contact sheet across datasets
# --------------------------------------------------------------------------------------------------------


def test_sheet_pairs_parse_and_rows_come_from_the_named_folders(tmp_path):
    from sgdfuse_ros.config import FuseConfig
    from sgdfuse_ros.evaluation.report import comparison_sheet
    from sgdfuse_ros.evaluation.sheet import SheetPair, build_rows, parse_pair
    from sgdfuse_ros.pipeline import FusionPipeline

    assert parse_pair("msrs:00537D").peer == "SeAFusion"
    assert parse_pair("mri_pet:21:Other") == SheetPair("mri_pet", "21", "Other")
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_pair("kaist:1")
    with pytest.raises(ValueError, match="DATASET:STEM"):
        parse_pair("msrs")
    # A data root laid out like ../shared/data: medical folders are mri/ and pet/, peers beside them.
    stem = "FLIR_04598"
    for sub, src in (("medical/mri_pet/mri", "ir"), ("medical/mri_pet/pet", "vi"), ("peers/medical/mri_pet/X", "vi")):
        (tmp_path / sub).mkdir(parents=True)
        shutil.copy(PAIRS / src / f"{stem}.jpg", tmp_path / sub / f"{stem}.jpg")
    pipeline = FusionPipeline.from_config(FuseConfig())
    rows = build_rows(pipeline, tmp_path, [parse_pair(f"mri_pet:{stem}:X")])
    assert rows[0]["peer_name"] == "X" and rows[0]["final"].shape == rows[0]["vis"].shape
    assert np.array_equal(rows[0]["final"], rows[0]["f1"])  # Stage II off: the final image is F1
    sheet = comparison_sheet(rows, tmp_path / "sheet.png", tile_width=64)
    assert sheet.shape[1] == 6 * 64 + 5 * 4 and (tmp_path / "sheet.png").stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="nope"):
        build_rows(pipeline, tmp_path, [parse_pair("mri_pet:nope:X")])
    # The documented command, with the same data root.
    from sgdfuse_ros.cli import main

    out = tmp_path / "cli_sheet.png"
    assert main(["sheet", "--data", str(tmp_path), "--pair", f"mri_pet:{stem}:X", "--out", str(out)]) == 0
    assert cv2.imread(str(out)).shape[1] == 6 * 160 + 5 * 4
    assert main(["sheet", "--data", str(tmp_path), "--pair", "kaist:1", "--out", str(out)]) == 2
    assert main(["sheet", "--data", str(tmp_path / "absent"), "--out", str(out)]) == 2  # no ../shared here
