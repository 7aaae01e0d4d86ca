"""Per-stage latency of the fusion pipeline at 640x480 (a bundled MSRS pair), printed as JSON.

    python benchmarks/latency.py [--repeats 10] [--threads 2] [--config config/fuse.yaml] [--set key=value ...]

Runs on the CPU, and on CUDA too when it is available. Speed targets live here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from sgdfuse_ros.cli import parse_overrides, read_thermal, read_visible
from sgdfuse_ros.config import load_config
from sgdfuse_ros.pipeline import FusionPipeline

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "pairs"


def measure(device: str, args: argparse.Namespace) -> dict:
    overrides = parse_overrides(args.set or [])
    overrides["compute.device"] = device
    pipeline = FusionPipeline.from_config(load_config(args.config, overrides))
    thermal, thermal_encoding = read_thermal(SAMPLES / "ir" / f"{args.pair}.png")
    visible, visible_encoding = read_visible(SAMPLES / "vi" / f"{args.pair}.png")
    for _ in range(args.warmup):
        pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding)
    runs = [pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding).timings_ms for _ in range(args.repeats)]
    stages = {name: [run[name] for run in runs] for name in runs[0]}
    return {
        "device": str(pipeline.device),
        "prior": pipeline.prior_name,
        "size": f"{visible.shape[1]}x{visible.shape[0]}",
        "repeats": args.repeats,
        "median_ms": {name: round(statistics.median(values), 2) for name, values in stages.items()},
        "max_ms": {name: round(max(values), 2) for name, values in stages.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--pair", default="00537D", help="bundled 640x480 pair name")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": args.threads,
        "results": [measure("cpu", args)],
    }
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
        report["results"].append(measure("cuda", args))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
