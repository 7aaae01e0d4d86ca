"""SAM prior speed-ups, old against new, on this machine; prints one JSON object (docs/priors.md "SAM speed").

    python benchmarks/sam_speed.py                         # everything below (ViT-B parts take minutes on a CPU)
    python benchmarks/sam_speed.py --only decoder grid     # skip the encoder
    python benchmarks/sam_speed.py --no-vit-b              # tiny SAM only (seconds)

Every variant runs in a FRESH process (same torch thread count, ``--threads``, default 1) so that its peak
resident memory is its own: after the set-up and one warm-up call the peak (VmHWM) is reset through
/proc/self/clear_refs and read after the first timed call; ``peak_mib`` = that peak - resident memory before the
call. glibc's mmap threshold is fixed (MALLOC_MMAP_THRESHOLD_) so freed large tensors leave the resident set.

* ``encoder``: one frame (2 images: VIS + IR) through the image encoder, stock attention vs SDPA
  (``use_sdpa``); tiny SAM (img 128) and ViT-B (random weights, img 1024).
* ``decoder``: the decoder stage of one frame (2 images), stock decoder one image per call
  (``shared_decoder=False``, the old path) vs ``decode_shared`` (both images per call, image-side work once);
  ``points_per_batch`` 64, fp32. Tiny SAM: the full 16x16 grid (4 chunks). ViT-B: ONE chunk of 64 prompts
  (8x8 grid; a full 16x16 grid is 4 chunks, ~4x the time). Random embeddings ~N(0, 1) stand in for the encoder
  output (the encoder would dominate the peak memory); decoder time does not depend on the values.
  ``new_ppb32``: the new decoder with ``points_per_batch`` 32 (2 x 32 prompt rows per call, as many as an old call).
* ``grid``: whole ``SamPrior.masks`` per frame (tiny SAM, 640x480 input, new decoder) with
  ``points_per_side`` 8 vs 16. Random weights: this is the cost side only; what the coarser grid costs in mask
  quality needs a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset the peak resident set size (Linux clear_refs 5); returns the current resident size in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _build(model: str):
    import torch
    from segment_anything.build_sam import sam_model_registry

    from sgdfuse_ros.priors.sam import build_sam_tiny

    if model == "tiny":
        return build_sam_tiny(img_size=128, seed=0)
    torch.manual_seed(0)
    return sam_model_registry["vit_b"](checkpoint=None).eval()


def _timed(fn, runs: int) -> dict:
    """One warm-up call, then ``runs`` timed calls; the peak memory is that of the first timed call."""
    fn()
    times = []
    before = _reset_peak()
    for i in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if i == 0:
            peak = _status_kib("VmHWM")
    return {"peak_mib": round((peak - before) / 1024, 1), "median_ms": round(1e3 * statistics.median(times), 1),
            "min_ms": round(1e3 * min(times), 1), "runs": len(times)}


def run_variant(kind: str, model_name: str, variant: str, runs: int) -> dict:
    """One measurement in this process (called in a fresh process by :func:`main`)."""
    import torch

    from sgdfuse_ros.priors.sam import SamPrior
    from sgdfuse_ros.priors.sam_speed import use_sdpa

    model = _build(model_name)
    with torch.no_grad():
        if kind == "encoder":
            use_sdpa(model.image_encoder, variant == "sdpa")
            size = model.image_encoder.img_size
            x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
            stats = _timed(lambda: model.image_encoder(x), runs)
            return stats
        if kind == "decoder":
            side = 16 if model_name == "tiny" else 8
            ppb = 32 if variant == "new_ppb32" else 64
            prior = SamPrior(model, points_per_side=side, points_per_batch=ppb, shared_decoder=variant != "old")
            emb_shape = (2, model.prompt_encoder.embed_dim, *model.prompt_encoder.image_embedding_size)
            emb = torch.randn(emb_shape, generator=torch.Generator().manual_seed(0))
            sparse, dense, pe = prior._prompts(*prior.input_size(480, 640))
            calls = []

            def stage() -> None:
                calls.clear()
                for start in range(0, sparse.shape[0], prior.points_per_batch):
                    chunk = sparse[start:start + prior.points_per_batch]
                    if variant != "old":
                        calls.append(prior.decode_chunk(emb, chunk, dense, pe)[2])
                    else:  # the old loop: one image per call, each output consumed before the next call
                        for b in range(emb.shape[0]):
                            prior.decode(emb[b:b + 1], chunk, dense, pe)
                            calls.append(1)

            stats = _timed(stage, runs)
            return {**stats, "prompts_per_image": int(sparse.shape[0]), "decoder_calls": sum(calls)}
        if kind == "grid":
            prior = SamPrior(model, points_per_side=int(variant), points_per_batch=64, pred_iou_thresh=0.0,
                             stability_score_thresh=0.5, stability_score_offset=0.02)
            g = torch.Generator().manual_seed(0)
            t, v = torch.rand(1, 1, 480, 640, generator=g), torch.rand(1, 3, 480, 640, generator=g)
            prior.profile = True
            stats = _timed(lambda: prior.masks(t, v), runs)
            split = {f"{k}_ms": round(1e3 * s, 1) for k, s in prior.last_timings.items() if k != "decoder_calls"}
            return {**stats, "last_split": split, "decoder_calls": int(prior.last_timings["decoder_calls"])}
    raise ValueError(kind)


PLAN = {
    "encoder": [("tiny", "stock"), ("tiny", "sdpa"), ("vit_b", "stock"), ("vit_b", "sdpa")],
    "decoder": [("tiny", "old"), ("tiny", "new"), ("vit_b", "old"), ("vit_b", "new"), ("vit_b", "new_ppb32")],
    "grid": [("tiny", "8"), ("tiny", "16")],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads in every variant (default 1)")
    ap.add_argument("--runs", type=int, default=20, help="timed calls per tiny variant (after one warm-up call)")
    ap.add_argument("--vit-b-runs", type=int, default=1, help="timed calls per ViT-B variant (after one warm-up)")
    ap.add_argument("--only", nargs="*", choices=sorted(PLAN), default=sorted(PLAN))
    ap.add_argument("--no-vit-b", action="store_true")
    ap.add_argument("--variant", nargs=3, metavar=("KIND", "MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:  # worker process
        import torch

        torch.set_num_threads(args.threads)
        kind, model, variant = args.variant
        print(json.dumps(run_variant(kind, model, variant, args.runs)))
        return

    import torch

    result: dict = {"env": {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}}
    # A fixed mmap threshold (no glibc dynamic threshold): large tensors are unmapped when freed, so resident
    # memory follows the live tensors and the peak of one call is not hidden by memory kept from earlier calls.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for kind in args.only:
        for model, variant in PLAN[kind]:
            if model == "vit_b" and args.no_vit_b:
                continue
            runs = args.vit_b_runs if model == "vit_b" else args.runs
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--runs", str(runs),
                   "--variant", kind, model, variant]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            result.setdefault(kind, {}).setdefault(model, {})[variant] = json.loads(out.strip().splitlines()[-1])
            print(f"{kind} {model} {variant}: {result[kind][model][variant]}", file=sys.stderr, flush=True)
    for row in result.get("encoder", {}).values():
        if "stock" in row and "sdpa" in row:
            row["sdpa_over_stock_time"] = round(row["sdpa"]["median_ms"] / row["stock"]["median_ms"], 3)
    for row in result.get("decoder", {}).values():
        if "old" in row and "new" in row:
            row["new_over_old_time"] = round(row["new"]["median_ms"] / row["old"]["median_ms"], 3)
            row["new_over_old_peak"] = round(row["new"]["peak_mib"] / max(row["old"]["peak_mib"], 1e-9), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
