"""How much room F1 leaves a refinement: hand-made corrections of F1 scored with the Stage II rule.

    python benchmarks/stage2_headroom.py --cache ../runs/s2_cache_night [--validation-every 10]

On the held-out validation pairs of a Stage II training cache (day, and the night proxy of a ``--night-proxy``
cache), each correction below is applied to F1's grey image and compared with F1 by
``evaluation.targets.stage2_rule`` (above F1 by 5 % on a fidelity metric, never more than 1 % below on any
metric). It prints one line per correction and condition: the relative change of every metric and whether the
rule is met. A correction that meets it shows what a Stage II could learn; none meeting it means the rule asks
for more than F1 leaves. Data-set tuning is not involved (validation split only).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import cv2
import numpy as np

from sgdfuse_ros.evaluation.targets import mean_over, stage2_rule
from sgdfuse_ros.metrics import METRIC_NAMES, evaluate, to_gray
from sgdfuse_ros.training.stage2_cache import CacheSet

Images = dict[str, np.ndarray]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma)


def _warm(d: Images) -> np.ndarray:
    """Inside M_ir at least the thermal intensity (warm targets never dimmer than the thermal camera shows)."""
    return d["m_ir"] * np.maximum(d["f1"], d["ir"]) + (1 - d["m_ir"]) * d["f1"]


def _nearest(d: Images) -> np.ndarray:
    near_ir = np.abs(d["f1"] - d["ir"]) <= np.abs(d["f1"] - d["vis"])
    return np.where(near_ir, d["ir"], d["vis"])


CORRECTIONS: dict[str, Callable[[Images], np.ndarray]] = {
    "warm targets (M_ir: max(F1, IR))": _warm,
    "M_ir: IR": lambda d: d["m_ir"] * d["ir"] + (1 - d["m_ir"]) * d["f1"],
    "low frequencies towards max (sigma 4)": lambda d: d["f1"] + _blur(d["max"] - d["f1"], 4),
    "half-way to max (sigma 2)": lambda d: d["f1"] + 0.5 * _blur(d["max"] - d["f1"], 2),
    "flat regions towards max": lambda d: d["f1"] + np.exp(-d["grad"] / 20) * (d["max"] - d["f1"]),
    "unsharp mask 0.3 (sigma 2)": lambda d: d["f1"] + 0.3 * (d["f1"] - _blur(d["f1"], 2)),
    "weaker source's detail 0.5 (sigma 4)": lambda d: d["f1"] + 0.5 * (d["min"] - _blur(d["min"], 4)),
    "M_ir contrast": lambda d: d["f1"] + 0.5 * d["m_ir"] * (np.maximum(d["f1"], d["ir"]) - _blur(d["f1"], 8)),
    "snap to a source within 3 levels": lambda d: np.where(np.abs(_warm(d) - _nearest(d)) <= 3, _nearest(d), _warm(d)),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--cache", required=True, help="Stage II training cache (ideally built with --night-proxy)")
    parser.add_argument("--validation-every", type=int, default=10)
    args = parser.parse_args()
    cache = CacheSet.load(args.cache)
    rows: dict[str, dict[str, list[dict[str, float]]]] = {}
    for condition, item in cache.validation_entries(args.validation_every):
        f1_rgb = np.clip(np.round(item["f1"].astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        d = {
            "f1": to_gray(np.ascontiguousarray(f1_rgb[..., ::-1])),
            "ir": to_gray(item["ir"]),
            "vis": to_gray(np.ascontiguousarray(item["vis"][..., ::-1])),
            "m_ir": item["m_ir"].astype(np.float64),
        }
        d["max"], d["min"] = np.maximum(d["ir"], d["vis"]), np.minimum(d["ir"], d["vis"])
        d["grad"] = np.hypot(cv2.Sobel(d["f1"], cv2.CV_64F, 1, 0), cv2.Sobel(d["f1"], cv2.CV_64F, 0, 1))
        out = rows.setdefault(condition, {})
        out.setdefault("F1", []).append(evaluate(d["f1"], d["ir"], d["vis"]))
        for label, fn in CORRECTIONS.items():
            fused = np.clip(np.round(fn(d)), 0, 255)
            out.setdefault(label, []).append(evaluate(fused, d["ir"], d["vis"]))
    print("correction | condition | " + " | ".join(METRIC_NAMES) + " | rule")
    for condition, out in rows.items():
        f1 = mean_over(out["F1"])
        for label in CORRECTIONS:
            rule = stage2_rule(mean_over(out[label]), f1)
            changes = " | ".join(f"{100 * rule.change[m]:+.1f} %" for m in METRIC_NAMES)
            print(f"{label} | {condition} ({len(out['F1'])}) | {changes} | {'met' if rule.passed else 'not met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
