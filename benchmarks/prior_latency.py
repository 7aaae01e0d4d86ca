"""Latency of the semantic priors; prints one JSON object.

    python benchmarks/prior_latency.py                       # fallback (CPU) + tiny random SAM (CPU)
    python benchmarks/prior_latency.py --threads 2 --runs 50
    python benchmarks/prior_latency.py --device cuda --sam-checkpoint sam_vit_b_01ec64.pth --sam-model-type vit_b

Input: the bundled MSRS pair 00537D (640x480). Fallback target: <= 30 ms per frame on one CPU thread.
The SAM entries report the per-frame split recorded by ``SamPrior.profile`` (device-synchronised):
preprocess, encoder (one batch of 2 images), decoder (all chunk calls), merge (selection, scoring,
composition), upsample. The tiny SAM (random weights, img_size 128) measures the plumbing, not SAM.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgdfuse_ros.priors import FallbackPrior, build_prior  # noqa: E402
from sgdfuse_ros.priors.sam import SamPrior, build_sam_tiny  # noqa: E402


def load_pair(name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ir = cv2.imread(str(ROOT / "samples/pairs/ir" / name), cv2.IMREAD_GRAYSCALE)
    vi = cv2.cvtColor(cv2.imread(str(ROOT / "samples/pairs/vi" / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    t = torch.from_numpy(ir).float().div(255.0)[None, None]
    v = torch.from_numpy(vi).float().div(255.0).permute(2, 0, 1)[None].contiguous()
    return t.to(device), v.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_prior(prior, t, v, runs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        prior.masks(t, v)
    _sync(prior.device)
    times = []
    for _ in range(runs):
        a = time.perf_counter()
        prior.masks(t, v)
        _sync(prior.device)
        times.append(time.perf_counter() - a)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "runs": runs}


def sam_split(prior: SamPrior, t, v, runs: int) -> dict:
    prior.masks(t, v)  # warm-up (prompt cache, kernels)
    prior.profile = True
    splits = []
    for _ in range(runs):
        prior.masks(t, v)
        splits.append(dict(prior.last_timings))
    prior.profile = False
    keys = ["preprocess", "encoder", "decoder", "merge", "upsample", "total"]
    out = {f"{k}_ms": 1e3 * statistics.median(s[k] for s in splits) for k in keys}
    out["decoder_calls"] = int(splits[-1]["decoder_calls"])
    out["decoder_ms_per_call"] = out["decoder_ms"] / max(1, out["decoder_calls"])
    out["kept_segments_vis_ir"] = list(prior.last_kept)
    out["runs"] = runs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pair", default="00537D.png")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--sam-checkpoint", default="", help="also time a real SAM on --device")
    ap.add_argument("--sam-model-type", default="vit_b")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    t_cpu, v_cpu = load_pair(args.pair, torch.device("cpu"))
    h, w = t_cpu.shape[-2:]
    result: dict = {
        "input": {"pair": args.pair, "height": h, "width": w},
        "env": {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                "processor": platform.processor() or platform.machine()},
        "fallback_cpu": time_prior(FallbackPrior("cpu"), t_cpu, v_cpu, args.runs),
    }
    result["fallback_cpu"]["target_ms"] = 30.0
    if dev.type != "cpu":
        t, v = t_cpu.to(dev), v_cpu.to(dev)
        result[f"fallback_{dev.type}"] = time_prior(FallbackPrior(dev), t, v, args.runs)

    tiny = SamPrior(build_sam_tiny(img_size=128), name="sam:tiny", device="cpu",
                    points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                    pred_iou_thresh=0.0, stability_score_thresh=0.5, stability_score_offset=0.02)
    result["sam_tiny_cpu"] = {
        "config": {"img_size": 128, "points_per_side": args.points_per_side,
                   "points_per_batch": args.points_per_batch},
        **sam_split(tiny, t_cpu, v_cpu, max(3, args.runs // 5)),
    }

    if args.sam_checkpoint:
        prior = build_prior("sam", device=dev, sam_checkpoint=args.sam_checkpoint,
                            sam_model_type=args.sam_model_type, points_per_side=args.points_per_side,
                            points_per_batch=args.points_per_batch)
        t, v = t_cpu.to(dev), v_cpu.to(dev)
        result[f"{prior.name}_{dev.type}"] = sam_split(prior, t, v, max(3, args.runs // 5))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
