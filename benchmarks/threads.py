"""compute.torch_threads under load: fused rate and per-frame time for 1 / 2 / all threads, with and without a
competing CPU load. The numbers behind the parameter's default (docs/node.md "CPU threads").

    python benchmarks/threads.py [--seconds 15] [--rate 10] [--size 224x168] [--threads 1 2 0] [--load-processes N]

Each configuration runs in a fresh process (torch's thread pool is per process): a producer offers a pair of the
bundled images every 1/rate s into a one-slot mailbox, newest wins (as the node's synchronizer callback does),
and a worker runs the node's frame core (decode, Stage I with the fallback prior, accounting) on what it takes.
"Competing load" is N processes spinning a Python loop (default: one per core), started before and stopped after
the run. Prints one JSON line per configuration: offered and fused rate, superseded pairs, per-frame time
p50 / p99 / max (ms). torch_threads 0 = torch's default (every core it sees).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("FLIR_04269.jpg", "FLIR_04269.jpg")


def _spin() -> None:
    while True:
        pass


def measure(threads: int, seconds: float, rate: float, size: tuple[int, int]) -> dict:
    """One configuration in this process (call in a fresh process: the thread pool is set once)."""
    import cv2
    import torch
    from harness import image_msg, run_camera, summary

    from sgdfuse_ros.config import FuseConfig
    from sgdfuse_ros.frame_core import FrameCore
    from sgdfuse_ros.pipeline import FusionPipeline
    from sgdfuse_ros.sync import PairAccounting

    config = FuseConfig().updated({"compute.torch_threads": threads})
    pipeline = FusionPipeline.from_config(config)  # sets the thread count when threads > 0
    core = FrameCore(pipeline, PairAccounting(0.05, 10))
    pairs = ROOT / "samples" / "pairs"
    ir = cv2.resize(cv2.imread(str(pairs / "ir" / PAIR[0]), cv2.IMREAD_GRAYSCALE), size)
    vi = cv2.resize(cv2.imread(str(pairs / "vi" / PAIR[1]), cv2.IMREAD_COLOR), size)[:, :, ::-1]

    def make_pair(stamp: int) -> tuple:
        return image_msg(ir, "mono8", stamp, "thermal"), image_msg(vi, "rgb8", stamp, "rgb_camera")

    core.process(*make_pair(0), received=time.monotonic())  # warm-up, not counted
    core.accounting = PairAccounting(0.05, 10)
    run = run_camera(core, make_pair, rate, seconds=seconds)
    frame = summary(run.frame_ms, digits=1)
    return {
        "torch_threads": threads,
        "threads_in_use": torch.get_num_threads(),
        "size": f"{size[0]}x{size[1]}",
        "offered_hz": round(run.offered / run.elapsed_s, 2),
        "fused_hz": round(run.fused / run.elapsed_s, 2),
        "superseded": run.superseded,
        "frame_ms_p50": frame["p50"],
        "frame_ms_p99": frame["p99"],
        "frame_ms_max": frame["max"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--size", default="224x168")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0])
    parser.add_argument("--load-processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one config
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.one is not None:
        print(json.dumps(measure(args.one, args.seconds, args.rate, size)), flush=True)
        return 0
    for load in (0, args.load_processes):
        for threads in args.threads:
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(load)]
            for spinner in spinners:
                spinner.start()
            try:
                command = [sys.executable, __file__, "--one", str(threads), "--seconds", str(args.seconds)]
                command += ["--rate", str(args.rate), "--size", args.size]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            finally:
                for spinner in spinners:
                    spinner.terminate()
                    spinner.join()
            row = json.loads(output.strip().splitlines()[-1])
            row["competing_load_processes"] = load
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
