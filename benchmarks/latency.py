"""Per-stage latency of the fusion pipeline at 640x480 (a bundled MSRS pair), printed as JSON.

    python benchmarks/latency.py [--repeats 10] [--threads 2] [--config config/fuse.yaml] [--set key=value ...]

Runs on the CPU, and on CUDA too when it is available (``--cpu-only`` skips it). Stage II is switched on
(``stage2.enabled=true``, shipped weights, configured steps/strength) unless ``--set stage2.enabled=false``.
For each device: min, median and max milliseconds of every pipeline stage (preprocess, prior, stage1, stage2,
postprocess, total) and of each Stage II network evaluation (one per sampler step, timed by forward hooks on the
refiner's network, device-synchronised), plus the sampler's remaining overhead (start noise, DDIM updates).
The load averages before and after the run are printed too. Speed targets live here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgdfuse_ros.config import load_config, parse_overrides  # noqa: E402
from sgdfuse_ros.files import read_thermal, read_visible  # noqa: E402
from sgdfuse_ros.pipeline import FusionPipeline  # noqa: E402

SAMPLES = ROOT / "samples" / "pairs"


class StepTimer:
    """Wall time of every forward call of ``module`` (one Stage II sampler step each), device-synchronised."""

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.device = device
        self.times_ms: list[float] = []
        self._start = 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, module: torch.nn.Module, inputs: tuple) -> None:
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._sync()
        self.times_ms.append((time.perf_counter() - self._start) * 1000.0)

    def take(self) -> list[float]:
        times, self.times_ms = self.times_ms, []
        return times

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _stage2_network(refiner: object) -> torch.nn.Module | None:
    """The refiner's denoising network (DiffusionRefiner.model), if it exposes one."""
    model = getattr(refiner, "model", None)
    return model if isinstance(model, torch.nn.Module) else None


def measure(device: str, args: argparse.Namespace) -> dict:
    overrides: dict[str, object] = {"stage2.enabled": True}
    overrides.update(parse_overrides(args.set or []))
    overrides["compute.device"] = device
    pipeline = FusionPipeline.from_config(load_config(args.config, overrides))
    thermal, thermal_encoding = read_thermal(SAMPLES / "ir" / f"{args.pair}.png")
    visible, visible_encoding = read_visible(SAMPLES / "vi" / f"{args.pair}.png")
    network = _stage2_network(pipeline.refiner)
    timer = StepTimer(network, pipeline.device) if network is not None else None
    for _ in range(args.warmup):
        pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding)
    runs, steps = [], []
    if timer is not None:
        timer.take()
    for _ in range(args.repeats):
        runs.append(pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding).timings_ms)
        if timer is not None:
            steps.append(timer.take())
    if timer is not None:
        timer.remove()
    stages = {name: [run[name] for run in runs] for name in runs[0]}
    result = {
        "device": str(pipeline.device),
        "prior": pipeline.prior_name,
        "stage2": pipeline.refiner.name if pipeline.refiner is not None else None,
        "size": f"{visible.shape[1]}x{visible.shape[0]}",
        "repeats": args.repeats,
        "min_ms": {name: round(min(values), 2) for name, values in stages.items()},
        "median_ms": {name: round(statistics.median(values), 2) for name, values in stages.items()},
        "max_ms": {name: round(max(values), 2) for name, values in stages.items()},
    }
    if steps and steps[0]:
        per_step = list(zip(*steps, strict=True))  # [step index] -> times over the repeats
        result["stage2_step_median_ms"] = [round(statistics.median(t), 2) for t in per_step]
        result["stage2_step_max_ms"] = [round(max(t), 2) for t in per_step]
        overhead = [run["stage2"] - sum(s) for run, s in zip(runs, steps, strict=True)]
        result["stage2_sampler_overhead_median_ms"] = round(statistics.median(overhead), 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--pair", default="00537D", help="bundled 640x480 pair name")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when it is available")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = {
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": args.threads,
        # Load averages (1, 5, 15 min) before and after: numbers from a busy machine are not idle-machine numbers.
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "results": [measure("cpu", args)],
    }
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    if torch.cuda.is_available() and not args.cpu_only:
        report["gpu"] = torch.cuda.get_device_name(0)
        report["results"].append(measure("cuda", args))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
