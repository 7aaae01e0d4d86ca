"""Keyframed SAM masks (``prior.keyframe_interval``): cost and accuracy of the flow propagation; prints JSON.

    python benchmarks/keyframes.py                          # everything, ../shared/data relative to the repo
    python benchmarks/keyframes.py --data /path/to/data --threads 1 --skip-stage2

Sections of the output:

* ``flow_timing``: milliseconds per modality of one propagated frame at 640x480 (bundled MSRS pair 00537D,
  shifted by (5, 3) px), split into: downsample + copy to the CPU, DIS flow, flow resize + remap, copy back +
  upsample; plus the whole non-keyframe ``masks()`` call (both modalities), with OpenCV's default thread count
  and with one OpenCV thread. For several flow resolutions (the default is ``160_fs1``).
* ``llvip_sequence``: LLVIP frames 010001-010030 (``<data>/llvip/{ir,vi}``), resized to ``--size`` (longest
  side). NOTE: these files are not consecutive video frames (people differ from one to the next and the camera
  moves a little); they are the hardest case. The mask source is the FALLBACK prior standing in for SAM (no SAM
  checkpoint exists here), wrapped in ``KeyframePrior`` for this measurement only. Per interval 1, 5, 10: IoU
  (masks > 0.5) of the propagated masks vs the masks recomputed on that frame (non-keyframes only), the same for
  simply holding the keyframe's masks ("hold", no propagation), and the fused-output metrics
  (``sgdfuse_ros.metrics.evaluate``; Stage II on, shipped weights, since Stage I does not use the masks).
* ``llvip_camera_motion``: a synthetic 10-frame camera move (per frame: 3 px right, 1.5 px down, 0.3 deg,
  +0.5 % zoom, accumulating) of three LLVIP frames; IoU of propagated (keyframe = frame 0) vs recomputed masks,
  for both flow references ("keyframe", "previous") and several flow resolutions, and of "hold".
* ``tiny_sam_throughput``: frames per second of ``FusionPipeline`` (Stage I only, default configuration) with
  the tiny random-weight SAM (``build_sam_tiny``) as the prior, interval 1 vs 10, on the LLVIP frames; and the
  IoU of the propagated vs recomputed tiny-SAM masks (random weights: the masks mean nothing, the cost is real).

* ``rescore_vs_flow``: the two propagation methods (``method="flow"``, ``"rescore"``) and "hold" against the mask
  source recomputed on every frame, on three sequences (LLVIP files in order; a synthetic camera move; a still view
  with a warming target), for two mask sources: a content-following stand-in for SAM's segments (connected regions
  of quantised luminance, merged by ``SamPrior.masks_from_segments``) and the tiny random SAM; and the cost of one
  non-keyframe ``masks()`` call per method, also by segment count (random rectangles).

LLVIP is non-commercial: this script only reads it; keep only the numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sgdfuse_ros.config import FuseConfig  # noqa: E402
from sgdfuse_ros.metrics import METRIC_NAMES, evaluate, to_gray  # noqa: E402
from sgdfuse_ros.pipeline import FusionPipeline  # noqa: E402
from sgdfuse_ros.priors import FallbackPrior, KeyframePrior, SemanticPrior  # noqa: E402
from sgdfuse_ros.priors.fallback import luminance  # noqa: E402
from sgdfuse_ros.priors.keyframes import METHODS, _scaled_size, _small_uint8, dis_flow, warp_with_flow  # noqa: E402
from sgdfuse_ros.priors.sam import SamPrior, build_sam_tiny  # noqa: E402

STEMS = [f"0100{i:02d}" for i in range(1, 31)]
FLOW_CONFIGS = {  # name -> KeyframePrior options
    "160_fs1": {"flow_size": 160, "finest_scale": 1},
    "160_fs0": {"flow_size": 160, "finest_scale": 0},
    "160_fs2": {"flow_size": 160, "finest_scale": 2},
    "320_fs2": {"flow_size": 320, "finest_scale": 2},
}


def to_tensors(ir: np.ndarray, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H,W] thermal and [H,W,3] RGB -> [1,1,H,W] and [1,3,H,W] float in [0,1]."""
    t = torch.from_numpy(ir).float().div(255.0)[None, None]
    v = torch.from_numpy(rgb).float().div(255.0).permute(2, 0, 1)[None].contiguous()
    return t, v


def read_pair(folder: Path, stem: str, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """(thermal uint8 [H,W], RGB uint8 [H,W,3]) resized (area) to ``longest`` on the longest side."""
    ir = cv2.imread(str(next((folder / "ir").glob(f"{stem}.*"))), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imread(str(next((folder / "vi").glob(f"{stem}.*"))), cv2.IMREAD_COLOR)
    h, w = ir.shape
    nh, nw = _scaled_size(h, w, longest)
    if (nh, nw) != (h, w):
        ir = cv2.resize(ir, (nw, nh), interpolation=cv2.INTER_AREA)
        bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    return ir, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def iou(a: np.ndarray, b: np.ndarray, threshold: float) -> float:
    """IoU of ``a > threshold`` and ``b > threshold`` (1.0 when both are empty)."""
    a, b = a > threshold, b > threshold
    union = int((a | b).sum())
    return 1.0 if union == 0 else float((a & b).sum()) / union


def _ms(samples: list[float]) -> float:
    return round(1e3 * statistics.median(samples), 3)


# ---- (a) timing ---------------------------------------------------------------------------------------


def flow_timing(runs: int) -> dict:
    """Per-modality split and whole-call time of one propagated frame at 640x480."""
    ir, rgb = read_pair(ROOT / "samples" / "pairs", "00537D", 640)
    shift = np.float32([[1, 0, 5], [0, 1, 3]])
    h, w = ir.shape
    ir1 = cv2.warpAffine(ir, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
    rgb1 = cv2.warpAffine(rgb, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
    t0, v0 = to_tensors(ir, rgb)
    t1, v1 = to_tensors(ir1, rgb1)
    out: dict = {"input": {"pair": "00537D", "height": h, "width": w}}
    for name, opts in FLOW_CONFIGS.items():
        prior = KeyframePrior(FallbackPrior("cpu"), 100, **opts)
        prior.masks(t0, v0)
        state = prior._state
        fsize = _scaled_size(h, w, prior.flow_size)
        split: dict[str, dict[str, list[float]]] = {"ir": {}, "vis": {}}
        for _ in range(runs):
            for c, key in ((0, "ir"), (1, "vis")):
                times = split[key]
                a = time.perf_counter()
                src = t1 if c == 0 else luminance(v1)
                small = _small_uint8(src, fsize)[0]
                b = time.perf_counter()
                flow = dis_flow(prior._dis[c], small, state.key_lum[0, c])
                d = time.perf_counter()
                warped = warp_with_flow(state.masks[0, c], flow)
                e = time.perf_counter()
                m = F.interpolate(torch.from_numpy(warped)[None, None], size=(h, w), mode="bilinear",
                                  align_corners=False).clamp(0.0, 1.0)
                g = time.perf_counter()
                del m
                for part, value in (("downsample_ms", b - a), ("dis_ms", d - b), ("warp_ms", e - d),
                                    ("upsample_ms", g - e), ("total_ms", g - a)):
                    times.setdefault(part, []).append(value)
        whole: dict[str, list[float]] = {}
        default_threads = cv2.getNumThreads()
        try:
            for _ in range(runs):  # alternate so that a competing load hits both settings alike
                for threads in (default_threads, 1):
                    cv2.setNumThreads(threads)
                    a = time.perf_counter()
                    prior.masks(t1, v1)
                    whole.setdefault(f"opencv_threads_{threads}", []).append(time.perf_counter() - a)
        finally:
            cv2.setNumThreads(default_threads)
        out[name] = {
            "flow_size": list(fsize), "finest_scale": prior.finest_scale, "warp_size": prior.warp_size,
            "per_modality_median": {k: {p: _ms(v) for p, v in parts.items()} for k, parts in split.items()},
            "masks_call_both_modalities_ms": {k: {"median": _ms(v), "min": round(1e3 * min(v), 3)}
                                              for k, v in whole.items()},
        }
    out["budget_ms_per_modality"] = 3.0
    return out


# ---- (b) LLVIP ----------------------------------------------------------------------------------------


class _Hold(SemanticPrior):
    """Keeps the keyframe masks unchanged between keyframes (the no-propagation baseline)."""

    def __init__(self, inner: SemanticPrior, interval: int) -> None:
        self.inner, self.interval, self.name, self.device = inner, interval, "hold", inner.device
        self._count, self._masks = 0, None

    def masks(self, thermal: torch.Tensor, visible_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._count % self.interval == 0:
            self._masks = self.inner.masks(thermal, visible_rgb)
        self._count += 1
        return self._masks


def _mask_ious(prior: SemanticPrior, frames: list, truth: list, interval: int) -> dict:
    """Mean IoU (> 0.5) of ``prior``'s masks vs ``truth`` over the non-keyframes, per modality."""
    ious: dict[str, list[float]] = {"ir": [], "vis": []}
    for i, (t, v) in enumerate(frames):
        m = prior.masks(t, v)
        if i % interval:
            for c, key in ((0, "ir"), (1, "vis")):
                ious[key].append(iou(m[c][0, 0].numpy(), truth[i][c][0, 0].numpy(), 0.5))
    return {f"{k}_iou": round(float(np.mean(v)), 4) for k, v in ious.items()} | {
        f"{k}_iou_min": round(float(np.min(v)), 4) for k, v in ious.items()}


def llvip_sequence(folder: Path, size: int, stage2: bool) -> dict:
    """IoU of propagated / held vs recomputed fallback masks, and fused metrics, per keyframe interval."""
    pairs = [read_pair(folder, s, size) for s in STEMS]
    frames = [to_tensors(ir, rgb) for ir, rgb in pairs]
    fallback = FallbackPrior("cpu")
    truth = [fallback.masks(t, v) for t, v in frames]
    h, w = pairs[0][0].shape
    out: dict = {"frames": f"{STEMS[0]}-{STEMS[-1]}", "size": [h, w], "mask_source": "fallback (stands in for SAM)"}
    for k in (5, 10):
        row = {"hold": _mask_ious(_Hold(fallback, k), frames, truth, k)}
        for ref in ("keyframe", "previous"):
            row[f"flow_{ref}"] = _mask_ious(KeyframePrior(fallback, k, reference=ref), frames, truth, k)
        out[f"interval_{k}"] = row
    if not stage2:
        return out
    pipeline = FusionPipeline.from_config(FuseConfig().updated({"stage2.enabled": True}))
    metrics = {}
    for k in (1, 5, 10):
        pipeline.prior = KeyframePrior(FallbackPrior(pipeline.device), k)
        per_frame = []
        for ir, rgb in pairs:
            result = pipeline.fuse(ir, rgb, "mono8", "rgb8")
            fused_gray = to_gray(np.ascontiguousarray(result.fused[..., ::-1]))
            per_frame.append(evaluate(fused_gray, to_gray(ir), to_gray(np.ascontiguousarray(rgb[..., ::-1]))))
        metrics[f"interval_{k}"] = {m: round(float(np.mean([p[m] for p in per_frame])), 4) for m in METRIC_NAMES}
    out["fused_metrics_stage2"] = metrics
    return out


def llvip_camera_motion(folder: Path, size: int, frames: int = 10) -> dict:
    """Synthetic camera move over LLVIP frames: propagated (keyframe 0) vs recomputed masks."""
    fallback = FallbackPrior("cpu")
    rows: dict[str, dict[str, list[float]]] = {}
    for stem in (STEMS[0], STEMS[10], STEMS[20]):
        ir, rgb = read_pair(folder, stem, size)
        h, w = ir.shape
        seq = []
        for i in range(frames):
            mat = cv2.getRotationMatrix2D((w / 2, h / 2), 0.3 * i, 1.005**i)
            mat[:, 2] += (3.0 * i, 1.5 * i)
            seq.append(to_tensors(*(cv2.warpAffine(x, mat, (w, h), flags=cv2.INTER_LINEAR,
                                                   borderMode=cv2.BORDER_REFLECT) for x in (ir, rgb))))
        truth = [fallback.masks(t, v) for t, v in seq]
        variants: dict[str, SemanticPrior] = {"hold": _Hold(fallback, frames)}
        for name, opts in FLOW_CONFIGS.items():
            for ref in ("keyframe", "previous"):
                variants[f"{name}_{ref}"] = KeyframePrior(fallback, frames, reference=ref, **opts)
        for name, prior in variants.items():
            r = _mask_ious(prior, seq, truth, frames)
            for key in ("ir_iou", "vis_iou"):
                rows.setdefault(name, {}).setdefault(key, []).append(r[key])
    return {"motion_per_frame": "3 px right, 1.5 px down, 0.3 deg, +0.5 % zoom (accumulating)",
            "frames": frames, "stems": [STEMS[0], STEMS[10], STEMS[20]],
            **{name: {k: round(float(np.mean(v)), 4) for k, v in r.items()} for name, r in rows.items()}}


# ---- (c) tiny SAM throughput --------------------------------------------------------------------------


def tiny_sam_throughput(folder: Path, size: int) -> dict:
    """FusionPipeline (Stage I only) with the tiny random SAM: interval 1 vs 10.

    The two pipelines share the Stage I module and take turns frame by frame, so a competing load on the shared
    machine slows both alike.
    """
    pairs = [read_pair(folder, s, size) for s in STEMS]
    config = FuseConfig()
    base = FusionPipeline.from_config(config)
    out: dict = {"sam": "build_sam_tiny(img_size=128), 16x16 points, chunks of 64", "stage2": False,
                 "frames": len(pairs)}
    pipelines = {}
    for k in (1, 10):
        sam = SamPrior(build_sam_tiny(img_size=128), name="sam:tiny", device="cpu", points_per_side=16,
                       points_per_batch=64, pred_iou_thresh=0.0, stability_score_thresh=0.5,
                       stability_score_offset=0.02)
        pipelines[k] = FusionPipeline(config, prior=KeyframePrior(sam, k), stage1=base.stage1, device="cpu")
        pipelines[k].fuse(*pairs[0], "mono8", "rgb8")  # warm-up (prompt cache); the prior restarts below
        pipelines[k].prior.reset()
        pipelines[k].prior.inner_calls = 0
    times: dict[int, dict[str, list[float]]] = {k: {"prior": [], "total": [], "wall": []} for k in pipelines}
    masks: dict[int, list] = {k: [] for k in pipelines}
    for ir, rgb in pairs:
        for k, pipeline in pipelines.items():
            a = time.perf_counter()
            result = pipeline.fuse(ir, rgb, "mono8", "rgb8")
            times[k]["wall"].append(time.perf_counter() - a)
            times[k]["prior"].append(result.timings_ms["prior"])
            times[k]["total"].append(result.timings_ms["total"])
            masks[k].append((result.mask_ir, result.mask_vis))
    for k, t in times.items():
        out[f"interval_{k}"] = {"frames_per_s": round(len(pairs) / sum(t["wall"]), 3),
                                "prior_ms_mean": round(float(np.mean(t["prior"])), 2),
                                "total_ms_mean": round(float(np.mean(t["total"])), 2),
                                "inner_calls": pipelines[k].prior.inner_calls}
    one, ten = out["interval_1"], out["interval_10"]
    out["pipeline_throughput_ratio_10_vs_1"] = round(ten["frames_per_s"] / one["frames_per_s"], 2)
    out["prior_stage_throughput_ratio_10_vs_1"] = round(one["prior_ms_mean"] / ten["prior_ms_mean"], 2)
    non_key = [i for i in range(len(pairs)) if i % 10]
    out["propagated_frames_prior_ms_mean"] = round(float(np.mean([times[10]["prior"][i] for i in non_key])), 2)
    ious: dict[str, list[float]] = {"ir": [], "vis": []}
    for i in non_key:
        for c, key in ((0, "ir"), (1, "vis")):
            ious[key].append(iou(masks[10][i][c], masks[1][i][c], 127))
    out["iou_propagated_vs_recomputed"] = {k: round(float(np.mean(v)), 4) for k, v in ious.items()}
    out["recomputed_mask_coverage"] = {  # share of pixels > 0.5: an empty mask makes the IoU trivially 1
        key: round(float(np.mean([(m[c] > 127).mean() for m in masks[1]])), 4) for c, key in ((0, "ir"), (1, "vis"))}
    return out


# ---- (d) flow vs re-scoring the keyframe's segments ---------------------------------------------------


def _tiny_sam() -> SamPrior:
    """The tiny random-weight SAM with thresholds loose enough that it keeps segments (as in (c))."""
    return SamPrior(build_sam_tiny(img_size=128), name="sam:tiny", device="cpu", points_per_side=16,
                    points_per_batch=64, pred_iou_thresh=0.0, stability_score_thresh=0.5,
                    stability_score_offset=0.02)


class _RegionSegmenter(SamPrior):
    """A content-following stand-in for SAM's segments (benchmark only): the same merge as ``SamPrior.masks``.

    SAM with random weights makes segments that stay put on the image grid when the camera moves, so it cannot
    show whether a propagation follows the scene. Here each image's segments are the connected regions of its
    luminance quantised at fixed levels (0.1, 0.25, 0.4, 0.55, 0.7, 0.85) on SAM's 256-px grid, at least
    0.2 % of the image; they move with the content and change when it changes. Scoring, merging and the
    empty fallback are ``SamPrior``'s own (``score_maps``, ``merge_segments``).
    """

    LEVELS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)

    def __init__(self) -> None:
        super().__init__(build_sam_tiny(img_size=128), name="regions", device="cpu")

    def _regions(self, gray: np.ndarray) -> torch.Tensor:
        bins = np.digitize(gray, self.LEVELS)
        segments = []
        for level in range(len(self.LEVELS) + 1):
            count, labels = cv2.connectedComponents((bins == level).astype(np.uint8), connectivity=8)
            for label in range(1, count):
                region = labels == label
                if region.mean() >= 0.002:
                    segments.append(region)
        shape = gray.shape
        return torch.from_numpy(np.stack(segments)) if segments else torch.zeros((0, *shape), dtype=torch.bool)

    @torch.no_grad()
    def masks(self, thermal: torch.Tensor, visible_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = thermal.shape
        size = _scaled_size(h, w, 256)
        small = [F.interpolate(x, size=size, mode="area") for x in (luminance(visible_rgb), thermal)]
        self.last_segments = [self._regions(img[i, 0].numpy()) for img in small for i in range(n)]  # VIS.., IR..
        return self.masks_from_segments(self.last_segments, thermal, visible_rgb)


class _Rectangles(SamPrior):
    """``count`` fixed random rectangles as every image's segments on SAM's 256-px grid (cost measurement only)."""

    def __init__(self, count: int) -> None:
        super().__init__(build_sam_tiny(img_size=128), name=f"rectangles{count}", device="cpu")
        self.count = count

    @torch.no_grad()
    def masks(self, thermal: torch.Tensor, visible_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = thermal.shape
        hl, wl = _scaled_size(h, w, 256)
        rng = np.random.default_rng(0)
        segments = np.zeros((self.count, hl, wl), bool)
        for k in range(self.count):
            y, x = rng.integers(0, hl - 8), rng.integers(0, wl - 8)
            segments[k, y:y + rng.integers(8, hl // 3), x:x + rng.integers(8, wl // 3)] = True
        self.last_segments = [torch.from_numpy(segments)] * (2 * n)
        return self.masks_from_segments(self.last_segments, thermal, visible_rgb)


def _non_keyframe_ms(source: SemanticPrior, method: str, first: tuple, later: tuple, runs: int = 10) -> float:
    """Median time of one propagated ``masks()`` call (keyframe ``first``, then ``later`` repeatedly)."""
    prior = KeyframePrior(source, 100, method=method)
    prior.masks(*first)
    samples = []
    for _ in range(runs):
        a = time.perf_counter()
        prior.masks(*later)
        samples.append(time.perf_counter() - a)
    return _ms(samples)


def _warm_target(ir: np.ndarray, i: int) -> np.ndarray:
    """``ir`` with a warm ellipse that grows hotter frame by frame (0 on frame 0): content SAM must re-judge."""
    h, w = ir.shape
    blob = np.zeros((h, w), np.float32)
    cv2.ellipse(blob, (w // 3, h // 2), (w // 14, h // 7), 0, 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), 3)
    return np.clip(ir.astype(np.float32) + blob * 25.0 * i, 0, 255).astype(np.uint8)


def _sequences(folder: Path, size: int, frames: int) -> dict[str, list]:
    """Named frame sequences: LLVIP files in order, a synthetic camera move, a warming target on a still view."""
    pairs = [read_pair(folder, s, size) for s in STEMS]
    out = {"llvip_files": [to_tensors(ir, rgb) for ir, rgb in pairs]}
    ir, rgb = pairs[0]
    h, w = ir.shape
    move, warm = [], []
    for i in range(frames):
        mat = cv2.getRotationMatrix2D((w / 2, h / 2), 0.3 * i, 1.005**i)
        mat[:, 2] += (3.0 * i, 1.5 * i)
        move.append(to_tensors(*(cv2.warpAffine(x, mat, (w, h), flags=cv2.INTER_LINEAR,
                                                borderMode=cv2.BORDER_REFLECT) for x in (ir, rgb))))
        warm.append(to_tensors(_warm_target(ir, i), rgb))
    out["camera_move"], out["warming_target"] = move, warm
    return out


def _coverage(masks: list) -> dict:
    """Share of pixels > 0.5 per modality (an empty mask makes an IoU trivially 1)."""
    return {key: round(float(np.mean([(m[c] > 0.5).float().mean().item() for m in masks])), 4)
            for c, key in ((0, "ir"), (1, "vis"))}


def rescore_vs_flow(folder: Path, size: int) -> dict:
    """Both propagation methods (and "hold") against the mask source recomputed on every frame.

    Mask sources: the content-following region segmenter (``_RegionSegmenter``), and the tiny random SAM
    (whose segments do not follow the scene: cost and plumbing only).
    """
    out: dict = {"sequences": {
        "llvip_files": "LLVIP 010001-010030 in file order (not consecutive video), intervals 5 and 10",
        "camera_move": "10 frames of a synthetic camera move of LLVIP 010001, 3 px + 1.5 px + 0.3 deg + 0.5 % zoom "
                       "per frame, accumulating; keyframe = frame 0",
        "warming_target": "10 frames of LLVIP 010001 still, a warm ellipse +25 grey levels per frame in the thermal "
                          "image; keyframe = frame 0"}}
    sequences = _sequences(folder, size, 10)
    out["size"] = list(sequences["camera_move"][0][0].shape[-2:])
    for source_name, source in (("regions", _RegionSegmenter()), ("sam_tiny_random", _tiny_sam())):
        source.keep_segments = True
        rows: dict = {}
        for name, frames in sequences.items():
            truth, kept = [], []
            for t, v in frames:
                truth.append(source.masks(t, v))
                kept.append(np.mean([len(x) for x in source.last_segments]))
            rows[f"{name}_segments_per_image"] = round(float(np.mean(kept)), 1)
            rows[f"{name}_recomputed_coverage"] = _coverage(truth)
            for k in ((5, 10) if name == "llvip_files" else (len(frames),)):
                row = {"hold": _mask_ious(_Hold(source, k), frames, truth, k)}
                for method in METHODS:
                    row[method] = _mask_ious(KeyframePrior(source, k, method=method), frames, truth, k)
                rows[f"{name}_interval_{k}"] = row
        first, later = sequences["camera_move"][0], sequences["camera_move"][3]
        rows["non_keyframe_masks_ms_median"] = {m: _non_keyframe_ms(source, m, first, later) for m in METHODS}
        out[source_name] = rows
    out["non_keyframe_masks_ms_by_segments_per_image"] = {
        count: {m: _non_keyframe_ms(_Rectangles(count), m, first, later) for m in METHODS}
        for count in (16, 64, 128, 256)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                    help="data folder holding llvip/{ir,vi} (default: ../shared/data relative to the repository)")
    ap.add_argument("--size", type=int, default=640, help="longest side the LLVIP frames are resized to")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--runs", type=int, default=40, help="repetitions of the timing")
    ap.add_argument("--skip-stage2", action="store_true", help="no fused metrics (the slow part)")
    ap.add_argument("--only", choices=("timing", "sequence", "motion", "sam", "rescore"), help="run one section")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = args.data / "llvip"
    result: dict = {"env": {"date": dt.date.today().isoformat(), "torch": torch.__version__,
                            "opencv": cv2.__version__, "torch_threads": torch.get_num_threads(),
                            "opencv_threads": cv2.getNumThreads(), "cpus": os.cpu_count(),
                            "machine": platform.machine()}}
    sections = {"timing": ("flow_timing", lambda: flow_timing(args.runs)),
                "sequence": ("llvip_sequence", lambda: llvip_sequence(folder, args.size, not args.skip_stage2)),
                "motion": ("llvip_camera_motion", lambda: llvip_camera_motion(folder, args.size)),
                "sam": ("tiny_sam_throughput", lambda: tiny_sam_throughput(folder, args.size)),
                "rescore": ("rescore_vs_flow", lambda: rescore_vs_flow(folder, args.size))}
    for key, (name, fn) in sections.items():
        if args.only in (None, key):
            a = time.perf_counter()
            result[name] = fn()
            result[name]["seconds"] = round(time.perf_counter() - a, 1)
            print(f"[keyframes] {name} done in {result[name]['seconds']} s", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
