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
import threading
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
    import numpy as np
    import torch

    from sgdfuse_ros import bags
    from sgdfuse_ros.config import FuseConfig
    from sgdfuse_ros.frame_core import FrameCore
    from sgdfuse_ros.pipeline import FusionPipeline
    from sgdfuse_ros.sync import RGB, THERMAL, PairAccounting

    config = FuseConfig().updated({"compute.torch_threads": threads})
    pipeline = FusionPipeline.from_config(config)  # sets the thread count when threads > 0
    accounting = PairAccounting(0.05, 10)
    core = FrameCore(pipeline, accounting)
    store = bags.typestore()
    pairs = ROOT / "samples" / "pairs"
    ir = cv2.resize(cv2.imread(str(pairs / "ir" / PAIR[0]), cv2.IMREAD_GRAYSCALE), size)
    vi = cv2.resize(cv2.imread(str(pairs / "vi" / PAIR[1]), cv2.IMREAD_COLOR), size)[:, :, ::-1]
    core.process(*_pair(bags, store, ir, vi, 0), received=time.monotonic())  # warm-up, not counted
    accounting = core.accounting = PairAccounting(0.05, 10)

    lock, ready = threading.Lock(), threading.Condition()
    slot: list = []
    stop = threading.Event()
    offered = superseded = 0
    frame_ms: list[float] = []

    def produce() -> None:
        nonlocal offered, superseded
        start = time.monotonic()
        k = 0
        while not stop.is_set():
            k += 1
            stamp = k * 10**9 // int(rate)
            thermal, rgb = _pair(bags, store, ir, vi, stamp)
            accounting.on_message(THERMAL, stamp)
            accounting.on_message(RGB, stamp)
            accounting.on_pair(stamp, stamp)
            with ready:
                if slot:
                    superseded += 1
                    accounting.on_dropped("superseded")
                slot[:] = [(thermal, rgb, time.monotonic())]
                offered += 1
                ready.notify()
            time.sleep(max(0.0, start + k / rate - time.monotonic()))

    def work() -> None:
        while not stop.is_set():
            with ready:
                if not slot:
                    ready.wait(0.2)
                if not slot:
                    continue
                thermal, rgb, received = slot.pop()
            started = time.perf_counter()
            outcome = core.process(thermal, rgb, received)
            if outcome.result is not None:
                core.complete(outcome)
                with lock:
                    frame_ms.append((time.perf_counter() - started) * 1000.0)

    workers = [threading.Thread(target=produce), threading.Thread(target=work)]
    begin = time.monotonic()
    for thread in workers:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in workers:
        thread.join()
    elapsed = time.monotonic() - begin
    p50, p99 = np.percentile(frame_ms, [50, 99]) if frame_ms else (float("nan"), float("nan"))
    return {
        "torch_threads": threads,
        "threads_in_use": torch.get_num_threads(),
        "size": f"{size[0]}x{size[1]}",
        "offered_hz": round(offered / elapsed, 2),
        "fused_hz": round(len(frame_ms) / elapsed, 2),
        "superseded": superseded,
        "frame_ms_p50": round(float(p50), 1),
        "frame_ms_p99": round(float(p99), 1),
        "frame_ms_max": round(max(frame_ms), 1) if frame_ms else None,
    }


def _pair(bags, store, ir, vi, stamp: int):
    return (
        bags.image_message(store, ir, "mono8", stamp, "thermal"),
        bags.image_message(store, vi.copy(), "rgb8", stamp, "rgb_camera"),
    )


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
