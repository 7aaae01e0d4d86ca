"""Would a two-stage pipeline pay on the CPU? Serial frames vs (decode + prior of frame k+1) || (Stage I of frame k).

    python benchmarks/cpu_pipelining.py [--frames 16] [--size 640x480] [--threads 1]

The issue "SAM masks at video rate" asks for the prior of the next frame to run beside Stage I of the current one
on CUDA (own stream), and on the CPU only if that measures >= 20 % more throughput under the node's default
threads (compute.torch_threads = 1). This measures the CPU side with two Python threads and a one-slot queue
(the upper bound of what a pipelined worker could gain: no accounting, no publishing), for the fallback prior and
the tiny random-weight SAM. Prints one JSON line per prior: serial and pipelined frames/s and the gain.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(prior_kind: str, frames: int, size: tuple[int, int], threads: int) -> dict:
    import cv2
    import torch

    from sgdfuse_ros.config import FuseConfig
    from sgdfuse_ros.imaging import merge_luma_chroma, split_luma_chroma
    from sgdfuse_ros.pipeline import FusionPipeline

    torch.set_num_threads(threads)
    pipeline = FusionPipeline.from_config(FuseConfig().updated({"compute.torch_threads": threads}))
    if prior_kind == "sam-tiny":
        from sgdfuse_ros.priors.sam import SamPrior, build_sam_tiny

        torch.manual_seed(0)
        pipeline.prior = SamPrior(build_sam_tiny())
    pairs = ROOT / "samples" / "pairs"
    ir = cv2.resize(cv2.imread(str(pairs / "ir" / "FLIR_04269.jpg"), cv2.IMREAD_GRAYSCALE), size)
    vi = cv2.resize(cv2.imread(str(pairs / "vi" / "FLIR_04269.jpg"), cv2.IMREAD_COLOR), size)[:, :, ::-1].copy()

    @torch.inference_mode()
    def front():
        thermal, visible = pipeline.prepare(ir, vi, "mono8", "rgb8")
        t = torch.from_numpy(thermal)[None, None]
        v = torch.from_numpy(visible).permute(2, 0, 1)[None].contiguous()
        return t, v, pipeline.prior.masks(t, v)

    @torch.inference_mode()
    def back(t, v, masks):
        y, chroma = split_luma_chroma(v)
        fused = merge_luma_chroma(pipeline.stage1(t, y).float(), chroma)
        return (fused.clamp(0, 1) * 255).byte().numpy()

    back(*front())  # warm-up
    start = time.perf_counter()
    for _ in range(frames):
        back(*front())
    serial = frames / (time.perf_counter() - start)

    slot: queue.Queue = queue.Queue(maxsize=1)

    def produce() -> None:
        for _ in range(frames):
            slot.put(front())
        slot.put(None)

    start = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    while (item := slot.get()) is not None:
        back(*item)
    producer.join()
    pipelined = frames / (time.perf_counter() - start)
    return {
        "prior": prior_kind,
        "size": f"{size[0]}x{size[1]}",
        "torch_threads": threads,
        "serial_hz": round(serial, 2),
        "pipelined_hz": round(pipelined, 2),
        "gain": round(pipelined / serial - 1.0, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    for prior in ("fallback", "sam-tiny"):
        print(json.dumps(measure(prior, args.frames, size, args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
