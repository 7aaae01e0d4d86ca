"""Frame rate, latency and memory of the fusion core at a camera rate, per configuration; one JSON line each.

    python benchmarks/performance.py [--prior fallback|sam-tiny|sam-vit-b] [--sam-checkpoint PATH]
        [--stage2 | --no-stage2] [--device cpu|cuda] [--frames 30] [--warmup 3] [--rate 30] [--size 640x512]
        [--threads 2] [--configs fp32,bf16,...] [--set KEY=VALUE ...]

What one frame costs on a robot, measured the way the node runs it: host arrays (a bundled pair resized to
--size; thermal as 16-bit radiometric counts, mono16, RGB as rgb8) are wrapped in sensor_msgs/Image-like
messages (benchmarks/harness.py, no rclpy or rosbags needed) at --rate Hz; a one-slot mailbox keeps the newest
pair (as the node's synchronizer callback does, older ones count as "superseded") and the worker runs the node's
frame core (sgdfuse_ros.frame_core.FrameCore: decode, pipeline, accounting) up to the host uint8 outputs.

Configurations are config overrides: fp32 {"compute.precision": "fp32"}, bf16 {"compute.precision": "bf16"},
bf16+compile (+ "compute.compile": true), bf16+compile+keyframe5 (+ "prior.keyframe_interval": 5), and the
same with the prior pipelined beside Stage I/II (+ "compute.pipeline_prior": true): bf16+pipeline,
bf16+compile+keyframe5+pipeline. One whose
parameter this version's FuseConfig lacks prints {"skipped": "<param> not available"}. compute.precision acts on
CUDA only (the CPU runs fp32). Each configuration runs in a fresh process (torch threads, compiled graphs and
peak memory are per process) after --warmup frames that are not counted.

Per configuration: device, prior, Stage II, size, offered and fused rate (Hz, end to end), superseded and other
drops, per-stage p50/p99/max/mean ms (FusionResult.timings_ms), worker time per frame, latency (pair formed ->
outputs on the host, FrameStats.latency_ms), peak memory (CUDA max_memory_allocated on CUDA, else the process's
maximum RSS), torch version and load averages. Priors: fallback (weight-free); sam-tiny (build_sam_tiny, seed 0,
random weights: the plumbing, not SAM's cost); sam-vit-b (random weights from
segment_anything.sam_model_registry["vit_b"], the real architecture's cost; or --sam-checkpoint PATH with
--sam-model-type). Results are in docs/performance.md. Speed targets live there, not in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # benchmarks/harness.py
sys.path.append(str(ROOT))  # the source tree where the package is not installed (e.g. a bare GPU machine)

from harness import image_msg, peak_rss_mb, run_camera, summary  # noqa: E402

from sgdfuse_ros.config import load_config, parameter_specs  # noqa: E402

#: Named configurations, as FuseConfig overrides.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "fp32": {"compute.precision": "fp32"},
    "bf16": {"compute.precision": "bf16"},
    "bf16+compile": {"compute.precision": "bf16", "compute.compile": True},
    "bf16+compile+keyframe5": {"compute.precision": "bf16", "compute.compile": True, "prior.keyframe_interval": 5},
    "bf16+pipeline": {"compute.precision": "bf16", "compute.pipeline_prior": True},
    "bf16+compile+keyframe5+pipeline": {"compute.precision": "bf16", "compute.compile": True,
                                        "prior.keyframe_interval": 5, "compute.pipeline_prior": True},
}
PRIORS = ("fallback", "sam-tiny", "sam-vit-b")
#: Thermal counts the 8-bit sample is spread over: the default thermal.counts_min .. counts_max.
COUNTS = (27000, 33000)


def unavailable(overrides: Mapping[str, Any]) -> str:
    """The first parameter of ``overrides`` that FuseConfig does not have ('' when all exist)."""
    known = {spec.name for spec in parameter_specs()}
    return next((name for name in overrides if name not in known), "")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """["section.key=value", ...] -> {"section.key": value}; values are JSON (true, 3, 0.5, "x") or plain strings."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def load_inputs(pair: str, size: tuple[int, int]) -> tuple[Any, Any]:
    """(thermal uint16 [H, W] counts, RGB uint8 [H, W, 3]) of a bundled pair, resized to ``size`` (W, H)."""
    import cv2
    import numpy as np

    folder = ROOT / "samples" / "pairs"
    names = {path.stem: path.name for path in (folder / "ir").iterdir()}
    if pair not in names:
        raise SystemExit(f"--pair {pair!r}: not in {folder / 'ir'} (have {', '.join(sorted(names))})")
    ir = cv2.imread(str(folder / "ir" / names[pair]), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(folder / "vi" / names[pair]), cv2.IMREAD_COLOR)
    ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(cv2.resize(vi, size, interpolation=cv2.INTER_AREA)[:, :, ::-1])
    low, high = COUNTS
    thermal = (low + ir.astype(np.float32) * ((high - low) / 255.0)).round().astype(np.uint16)
    return thermal, rgb


@contextlib.contextmanager
def sam_model(model: Any, name: str) -> Iterator[None]:
    """While active, building the SAM prior from ``prior.sam_checkpoint`` wraps ``model`` instead of reading a file.

    The pipeline is still built by FusionPipeline.from_config, so every option the builder applies to the SAM
    prior (thresholds, points, keyframes, precision) applies to the random-weight model too.
    """
    from sgdfuse_ros.priors.sam import SamPrior

    original = SamPrior.__dict__["from_checkpoint"]

    def from_model(cls: type, checkpoint: object, *, model_type: str = "vit_b", **kwargs: Any) -> Any:
        return cls(model, name=name, **kwargs)

    SamPrior.from_checkpoint = classmethod(from_model)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        SamPrior.from_checkpoint = original  # type: ignore[method-assign]


def random_sam(prior: str) -> tuple[Any, str]:
    """(segment_anything Sam with random weights, prior name) for ``sam-tiny`` or ``sam-vit-b``."""
    import torch

    if prior == "sam-tiny":
        from sgdfuse_ros.priors.sam import build_sam_tiny

        return build_sam_tiny(seed=0), "sam:tiny(random)"
    from segment_anything import sam_model_registry

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return sam_model_registry["vit_b"](checkpoint=None), "sam:vit_b(random)"


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run configuration ``name`` in this process; the JSON-ready result."""
    import torch

    from sgdfuse_ros.frame_core import FrameCore
    from sgdfuse_ros.pipeline import FusionPipeline
    from sgdfuse_ros.sync import PairAccounting

    load_before = [round(v, 2) for v in os.getloadavg()]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = {
        "compute.device": args.device,
        "compute.torch_threads": args.threads,
        "stage2.enabled": args.stage2,
        "prior.kind": "fallback" if args.prior == "fallback" else "sam",
    }
    if args.prior != "fallback":
        overrides["prior.sam_checkpoint"] = args.sam_checkpoint or "(random weights)"
        overrides["prior.sam_model_type"] = args.sam_model_type
    overrides.update(CONFIGURATIONS[name])
    overrides.update(parse_set(args.set or []))
    config = load_config(args.config, overrides)
    with contextlib.ExitStack() as stack:
        if args.prior != "fallback" and not args.sam_checkpoint:
            stack.enter_context(sam_model(*random_sam(args.prior)))
        pipeline = FusionPipeline.from_config(config)
    device = pipeline.device
    core = FrameCore(pipeline, PairAccounting(config.node.sync_slop, config.node.sync_queue_size))
    thermal, rgb = load_inputs(args.pair, args.size)

    def make_pair(stamp: int) -> tuple[Any, Any]:
        return image_msg(thermal, "mono16", stamp, "thermal"), image_msg(rgb, "rgb8", stamp, "rgb_camera")

    started = time.perf_counter()
    for _ in range(args.warmup):  # first frames: allocator, oneDNN / cuDNN plans, compiled graphs
        outcome = core.process(*make_pair(0), received=time.monotonic())
        if outcome.result is None:
            raise RuntimeError(f"warm-up frame dropped ({outcome.drop_reason}): {outcome.drop_message}")
    warmup_s = time.perf_counter() - started
    core.accounting = PairAccounting(config.node.sync_slop, config.node.sync_queue_size)
    run = run_camera(core, make_pair, args.rate, frames=args.frames, seconds=args.max_seconds)
    stages = list(dict.fromkeys(key for stats in run.stats for key in stats.timings_ms))
    if device.type == "cuda":
        memory = ("cuda_max_memory_allocated", torch.cuda.max_memory_allocated(device) / 2**20)
        device_name = torch.cuda.get_device_name(device)
    else:
        memory = ("process_max_rss", peak_rss_mb())
        device_name = platform.processor() or platform.machine()
    return {
        "config": name,
        "overrides": CONFIGURATIONS[name],
        "device": str(device),
        "device_name": device_name,
        "device_note": pipeline.device_note,
        "prior": pipeline.prior_name,
        "stage2": getattr(pipeline.refiner, "name", None),
        "size": f"{args.size[0]}x{args.size[1]}",
        "threads": torch.get_num_threads(),
        "rate_hz": args.rate,
        "warmup_frames": args.warmup,
        "warmup_s": round(warmup_s, 2),
        "frames": run.fused,
        "offered_hz": round(run.offered / run.elapsed_s, 2),
        "fused_hz": round(run.fused / run.elapsed_s, 2),
        "superseded": run.superseded,
        "dropped": run.dropped,
        "stages_ms": {
            stage: summary([s.timings_ms[stage] for s in run.stats if stage in s.timings_ms]) for stage in stages
        },
        "frame_ms": summary(run.frame_ms),
        "latency_ms": summary([s.latency_ms for s in run.stats]),
        "peak_memory_mb": round(memory[1], 1),
        "peak_memory_kind": memory[0],
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH (e.g. 640x512), got {text!r}") from None


def _configs(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGURATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGURATIONS)}")
    return names


def parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", choices=PRIORS, default="fallback")
    p.add_argument("--sam-checkpoint", default="", help="real SAM weights for the sam-* priors (default: random)")
    p.add_argument(
        "--sam-model-type",
        default="vit_b",
        choices=("vit_b", "vit_l", "vit_h"),
        help="architecture of --sam-checkpoint",
    )
    p.add_argument(
        "--stage2",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Stage II refinement (shipped weights; steps etc. via --set stage2.steps=N)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--frames", type=int, default=30, help="fused frames measured per configuration")
    p.add_argument("--warmup", type=int, default=3, help="frames run first and not counted")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop a configuration after this long")
    p.add_argument("--rate", type=float, default=30.0, help="camera rate in Hz (pairs offered per second)")
    p.add_argument("--size", type=_size, default=(640, 512), help="image size WxH")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (compute.torch_threads; 0 = all)")
    p.add_argument("--pair", default="00537D", help="bundled pair (samples/pairs) resized to --size")
    p.add_argument("--configs", type=_configs, default=list(CONFIGURATIONS), help="comma-separated names")
    p.add_argument("--config", default=None, help="ROS parameter file under the overrides (needs PyYAML)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="more config overrides (JSON values)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one configuration here
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.frames < 1 or args.rate <= 0 or min(args.size) < 16:
        raise SystemExit("need --frames >= 1, --rate > 0 and a --size of at least 16x16")
    if args.one is not None:
        print(json.dumps(measure(args.one, args)), flush=True)
        return 0
    failed = 0
    for name in args.configs:
        row: dict[str, Any] = {"config": name, "overrides": CONFIGURATIONS[name]}
        missing = unavailable({**CONFIGURATIONS[name], **parse_set(args.set or [])})
        if missing:
            print(json.dumps({**row, "skipped": f"{missing} not available"}), flush=True)
            continue
        child = subprocess.run([sys.executable, __file__, *argv, "--one", name], capture_output=True, text=True)
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            failed += 1
            tail = (child.stderr or child.stdout).strip().splitlines()[-5:]
            print(json.dumps({**row, "error": " | ".join(tail)}), flush=True)
            continue
        print(lines[-1], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
