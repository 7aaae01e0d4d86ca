"""Stage II validation on the held-out pairs of a training cache, by day and as the night proxy, against F1.

    python -m sgdfuse_ros.training stage2-validate --cache RUN/cache --weights RUN/stage2.pt [--out FILE.json]

Conditions, objectives and checkpoints of Stage II are chosen here, never on the evaluation sets (MSRS, M3FD,
the medical pairs). The pairs are Stage I's validation split (``validation.validation_indices``), which the Stage
II trainer never trains on; a ``--night-proxy`` cache also holds each pair's darkened copy (the "night" rows).
Both F1 and the refined image are rounded to uint8 RGB and read as grey levels the way the evaluator reads a
file, and compared with ``evaluation.targets.stage2_rule`` (above F1 by 5 % on a fidelity metric, never more than
1 % below) and the picture checks (haze, band, softness against pixel max).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..evaluation.targets import mean_over, picture_checks, stage2_rule
from ..imaging import split_luma_chroma
from ..metrics import evaluate, to_gray
from ..models.stage2 import DiffusionRefiner, load_refiner
from .stage2_cache import CacheSet
from .validation import VALIDATION_EVERY

__all__ = ["add_stage2_validate_arguments", "validate_refiner"]


def _gray(rgb_unit: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] in [0, 1] -> grey levels [H,W] as the evaluator reads the uint8 RGB file."""
    rgb = (rgb_unit[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return to_gray(np.ascontiguousarray(rgb[..., ::-1]))


@torch.no_grad()
def validate_refiner(refiner: DiffusionRefiner, cache: CacheSet, every: int = VALIDATION_EVERY) -> dict:
    """Refine every validation entry of ``cache`` and compare with its F1.

    Returns {"day"|"night": {"pairs", "f1", "refined" (mean metrics), "stage2_rule" (text), "passed" (bool),
    "change" (relative, per metric), "pictures_passed" ({"f1", "refined"}: pairs passing all three checks)}}.
    """
    rows: dict[str, dict[str, list]] = {}
    for condition, item in cache.validation_entries(every):
        ir = torch.from_numpy(item["ir"]).float().div(255.0)[None, None]
        vis = torch.from_numpy(item["vis"]).float().div(255.0).permute(2, 0, 1)[None].contiguous()
        f1 = torch.from_numpy(item["f1"].astype(np.float32)).permute(2, 0, 1)[None].contiguous()
        m_ir = torch.from_numpy(item["m_ir"].astype(np.float32))[None, None]
        m_vis = torch.from_numpy(item["m_vis"].astype(np.float32))[None, None]
        vis_y = split_luma_chroma(vis)[0]
        dev = refiner.device
        refined = refiner.refine(f1.to(dev), m_ir.to(dev), m_vis.to(dev), ir.to(dev), vis_y.to(dev)).float().cpu()
        g_ir, g_vis = to_gray(item["ir"]), to_gray(np.ascontiguousarray(item["vis"][..., ::-1]))
        row = rows.setdefault(condition, {"f1": [], "refined": [], "f1_pictures": [], "refined_pictures": []})
        for key, image in (("f1", f1), ("refined", refined)):
            g = _gray(image)
            row[key].append(evaluate(g, g_ir, g_vis))
            row[f"{key}_pictures"].append(picture_checks(g, g_ir, g_vis).passed)
    result = {}
    for condition, row in rows.items():
        f1_mean, refined_mean = mean_over(row["f1"]), mean_over(row["refined"])
        rule = stage2_rule(refined_mean, f1_mean)
        result[condition] = {
            "pairs": len(row["f1"]),
            "f1": f1_mean,
            "refined": refined_mean,
            "change": rule.change,
            "passed": rule.passed,
            "stage2_rule": rule.describe(),
            "pictures_passed": {"f1": sum(row["f1_pictures"]), "refined": sum(row["refined_pictures"])},
        }
    return result


def add_stage2_validate_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``stage2-validate`` subcommand."""
    p = subparsers.add_parser("stage2-validate", help="score Stage II weights on a cache's validation pairs")
    p.add_argument("--cache", required=True, help="a Stage II training cache (training/stage2_cache.py)")
    p.add_argument("--weights", required=True, help="Stage II weights (.pt)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps")
    p.add_argument("--strength", type=float, default=0.5, help="start noise as a fraction of T")
    p.add_argument("--no-masks", action="store_true", help="zero the masks in the condition (ablation)")
    p.add_argument("--validation-every", type=int, default=VALIDATION_EVERY)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    p.set_defaults(func=_validate_command)
    return p


def _validate_command(args: argparse.Namespace) -> dict:
    torch.set_num_threads(max(1, args.threads))
    refiner = load_refiner(args.weights, steps=args.steps, strength=args.strength, use_masks=not args.no_masks)
    result = validate_refiner(refiner, CacheSet.load(args.cache), args.validation_every)
    for condition, entry in result.items():
        print(f"{condition} ({entry['pairs']} pairs, {refiner.name}): {entry['stage2_rule']}")
        passed = entry["pictures_passed"]
        print(f"  picture checks passed: F1 {passed['f1']}, refined {passed['refined']}")
    if args.out:
        record = {"weights": args.weights, "refiner": refiner.name, **result}
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return result
