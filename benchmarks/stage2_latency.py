"""Stage II cost at 640x480: parameters, latency of one sampler step (one U-Net + head call) and of a refine().

    python benchmarks/stage2_latency.py [--threads 2] [--repeats 5] [--steps 4] [--weights PATH] [--device cpu]
                                        [--condition f1_masks|f1_masks_sources]

Prints JSON. Without --weights a freshly built model of the default architecture is timed (same cost).
Speed targets live here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from sgdfuse_ros.models.diffusion import NoiseSchedule
from sgdfuse_ros.models.stage2 import DiffusionRefiner, build_stage2, load_stage2


def _time(fn, repeats: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    parser.add_argument("--weights", default=None)
    parser.add_argument("--no-hfah", action="store_true")
    parser.add_argument("--condition", default="f1_masks", help="condition of a freshly built model (no --weights)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.weights:
        model, schedule = load_stage2(args.weights, device)
    else:
        model = build_stage2(use_hfah=not args.no_hfah, condition=args.condition).to(device).eval()
        schedule = NoiseSchedule()
    w, h = args.size
    generator = torch.Generator().manual_seed(0)
    f1 = torch.rand(1, 3, h, w, generator=generator).to(device)
    masks = torch.rand(1, 2, h, w, generator=generator).to(device)
    sources = torch.rand(1, 2, h, w, generator=generator).to(device)  # IR, Y_vis (used if the model reads them)
    x_t = torch.randn(1, 3, h, w, generator=generator).to(device)
    t = torch.tensor([300], device=device)
    cond = torch.cat([f1, masks, sources][: 3 if model.config.uses_sources else 2], dim=1)
    refiner = DiffusionRefiner(model, schedule, steps=args.steps, strength=args.strength)
    with torch.inference_mode():
        model(x_t, t, cond)  # warm-up (oneDNN primitive creation)
        step_ms = _time(lambda: model(x_t, t, cond), args.repeats, device)
        refine_ms = _time(
            lambda: refiner.refine(f1, masks[:, :1], masks[:, 1:], sources[:, :1], sources[:, 1:]),
            max(1, args.repeats // 2),
            device,
        )
    result = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "size": f"{w}x{h}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": model.config.to_dict(),
        "step_ms": {"median": round(statistics.median(step_ms), 1), "min": round(min(step_ms), 1)},
        "refine_ms": {"steps": args.steps, "median": round(statistics.median(refine_ms), 1)},
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
