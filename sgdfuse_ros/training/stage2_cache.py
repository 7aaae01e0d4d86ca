"""The Stage II training cache: frozen Stage I outputs and prior masks for every training pair, built once.

``<cache>/<name>.npz`` holds ir (uint8 [H,W]), vis (uint8 [H,W,3] RGB), f1 (float16 [H,W,3]) and m_ir / m_vis
(float16 [H,W]); ``manifest.json`` records the Stage I weights (sha256), the prior and the pair names and is written
last (a cache without one is incomplete and is rebuilt). With ``--night-proxy`` every pair is cached a second time
(``<name>@night``) with its visible luminance darkened (``data.darken``, gain and gamma drawn per pair as in Stage I
training). Building is the only step that may need segment_anything (``--prior sam``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..imaging import merge_luma_chroma, split_luma_chroma
from ..priors.base import SemanticPrior
from .common import relative_arguments
from .data import darken, list_pairs
from .validation import validation_indices

__all__ = ["NIGHT_SUFFIX", "CacheSet", "build_cache", "cache_entry_names", "sample_stage2_batch", "sha256_file"]

CACHE_VERSION = 1
#: Suffix of the darkened copy of a pair in a ``--night-proxy`` cache.
NIGHT_SUFFIX = "@night"


def utc_now() -> str:
    """UTC time stamp for records, e.g. 2026-12-04T23:59:00Z."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_pair(ir_path: Path, vi_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(IR uint8 [H,W], visible uint8 [H,W,3] RGB); ValueError naming an unreadable file or a size mismatch."""
    ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imread(str(vi_path), cv2.IMREAD_COLOR)
    if ir is None or bgr is None:
        raise ValueError(f"cannot read image {ir_path if ir is None else vi_path}")
    if ir.shape != bgr.shape[:2]:
        raise ValueError(f"size mismatch: {ir_path} is {ir.shape}, {vi_path} is {bgr.shape[:2]}")
    return ir, np.ascontiguousarray(bgr[..., ::-1])


def build_cache(args: argparse.Namespace, cache: Path) -> dict:
    """Run the frozen Stage I weights and the prior over the training pairs once; returns the manifest.

    An existing cache is reused when its manifest matches (same Stage I weights, prior and pair names), and
    refused otherwise (SystemExit naming the difference).
    """
    from ..models.stage1 import default_stage1_weights_path, load_stage1
    from ..priors import build_prior  # segment_anything is imported only by the SAM prior, only here

    if args.data is None:
        raise SystemExit(f"no cache at {cache} and no --data to build it from")
    stage1_path = Path(args.stage1_weights) if args.stage1_weights else default_stage1_weights_path()
    if not stage1_path.is_file():
        raise SystemExit(f"Stage I weights not found: {stage1_path} (train Stage I first or pass --stage1-weights)")
    pairs = list_pairs(args.data, args.exclude, args.ir_dir, args.vis_dir)
    names = [ir.stem for ir, _ in pairs]
    stage1_sha = sha256_file(stage1_path)
    manifest_path = cache / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        expected = {"stage1_sha256": stage1_sha, "prior_kind": args.prior, "names": names,
                    "night_proxy": bool(args.night_proxy)}
        for key, value in expected.items():
            if manifest.get(key, False if key == "night_proxy" else None) != value:
                raise SystemExit(f"cache {cache} was built with a different {key}; delete it or pass another --cache")
        return manifest

    device = torch.device(args.device if not args.device.startswith("cuda") or torch.cuda.is_available() else "cpu")
    stage1 = load_stage1(stage1_path, device=device)
    prior = build_prior(
        args.prior, device=device, sam_checkpoint=args.sam_checkpoint, sam_model_type=args.sam_model_type
    )
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, (ir_path, vi_path) in enumerate(pairs):
        ir_u8, vis_u8 = _read_pair(ir_path, vi_path)
        _cache_pair(cache / f"{ir_path.stem}.npz", ir_u8, vis_u8, stage1, prior, device)
        if args.night_proxy:
            rng = np.random.default_rng([args.seed, i])
            dark = _darkened(vis_u8, float(rng.uniform(0.1, 0.7)), float(rng.uniform(1.0, 2.0)))
            _cache_pair(cache / f"{ir_path.stem}{NIGHT_SUFFIX}.npz", ir_u8, dark, stage1, prior, device)
        if (i + 1) % 25 == 0 or i + 1 == len(pairs):
            print(f"[stage2] cached {i + 1}/{len(pairs)} pairs ({time.perf_counter() - t0:.0f}s)", flush=True)
    manifest = {
        "version": CACHE_VERSION,
        "data": str(args.data),
        "names": names,
        "night_proxy": bool(args.night_proxy),
        "command_arguments": relative_arguments(sys.argv[1:]),
        "excluded_names": list(args.exclude),
        "stage1_weights": relative_arguments([str(stage1_path)])[0],  # no machine's absolute path in records
        "stage1_sha256": stage1_sha,
        "prior_kind": args.prior,
        "prior": prior.name,
        "sam_checkpoint": args.sam_checkpoint if args.prior == "sam" else "",
        "device": str(device),
        "build_time_s": round(time.perf_counter() - t0, 1),
        "created_utc": utc_now(),
    }
    # The manifest is written last: a cache without one is incomplete and is rebuilt.
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _darkened(vis_u8: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    """The visible RGB image uint8 [H,W,3] with its luminance darkened by ``data.darken`` (chroma kept)."""
    vis = torch.from_numpy(vis_u8).float().div(255.0).permute(2, 0, 1)[None]
    y, chroma = split_luma_chroma(vis)
    dark_y = torch.from_numpy(darken(y[0, 0].numpy(), gain, gamma))[None, None]
    rgb = merge_luma_chroma(dark_y, chroma)[0].permute(1, 2, 0).clamp(0.0, 1.0)
    return np.ascontiguousarray((rgb * 255.0).round().to(torch.uint8).numpy())


def _cache_pair(
    path: Path,
    ir_u8: np.ndarray,
    vis_u8: np.ndarray,
    stage1: torch.nn.Module,
    prior: SemanticPrior,
    device: torch.device,
) -> None:
    """Run Stage I and the prior on one pair (uint8 IR [H,W], RGB [H,W,3]) and write ``path`` (.npz)."""
    with torch.inference_mode():
        ir = torch.from_numpy(ir_u8).float().div(255.0)[None, None].to(device)
        vis = torch.from_numpy(vis_u8).float().div(255.0).permute(2, 0, 1)[None].contiguous().to(device)
        m_ir, m_vis = prior.masks(ir, vis)
        vis_y, chroma = split_luma_chroma(vis)
        f1 = merge_luma_chroma(stage1(ir, vis_y).float(), chroma)
    np.savez(
        path,
        ir=ir_u8,
        vis=vis_u8,
        f1=f1[0].permute(1, 2, 0).cpu().numpy().astype(np.float16),
        m_ir=m_ir[0, 0].cpu().numpy().astype(np.float16),
        m_vis=m_vis[0, 0].cpu().numpy().astype(np.float16),
    )


@dataclass
class CacheSet:
    """A cache in memory: per pair ir uint8 [H,W], vis uint8 [H,W,3], f1 float16 [H,W,3], m_ir/m_vis float16 [H,W]."""

    manifest: dict
    arrays: list[dict[str, np.ndarray]]

    @classmethod
    def load(cls, cache: str | Path) -> CacheSet:
        cache = Path(cache)
        manifest_path = cache / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no cache manifest at {manifest_path}")
        manifest = json.loads(manifest_path.read_text())
        arrays = []
        for name in cache_entry_names(manifest):
            with np.load(cache / f"{name}.npz") as npz:
                arrays.append({key: npz[key] for key in ("ir", "vis", "f1", "m_ir", "m_vis")})
        return cls(manifest, arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def _held_out(self, every: int) -> list[bool]:
        """Per entry: does it belong to Stage I's validation split (a night copy follows its pair)?"""
        held_out = validation_indices(len(self.manifest["names"]), every) if every > 0 else set()
        copies = 2 if self.manifest.get("night_proxy") else 1
        return [i // copies in held_out for i in range(len(self.arrays))]

    def without_validation(self, every: int) -> CacheSet:
        """The cache minus Stage I's validation pairs (and their night copies); ``every`` 0 keeps everything."""
        keep = [item for item, out in zip(self.arrays, self._held_out(every), strict=True) if not out]
        return CacheSet(self.manifest, keep)

    def validation_entries(self, every: int) -> list[tuple[str, dict[str, np.ndarray]]]:
        """(condition "day" | "night", arrays) of every validation entry, in cache order."""
        names = cache_entry_names(self.manifest)
        return [
            ("night" if name.endswith(NIGHT_SUFFIX) else "day", item)
            for name, item, out in zip(names, self.arrays, self._held_out(every), strict=True)
            if out
        ]


def cache_entry_names(manifest: dict) -> list[str]:
    """File stems of a cache in order: each pair, then its night copy when the cache has them."""
    if not manifest.get("night_proxy"):
        return list(manifest["names"])
    return [entry for name in manifest["names"] for entry in (name, name + NIGHT_SUFFIX)]


def sample_stage2_batch(data: CacheSet, batch: int, crop: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Random crops with random flips from the cache, all float32 in [0, 1].

    Returns {"ir": [B,1,c,c], "vis": [B,3,c,c], "f1": [B,3,c,c], "m_ir": [B,1,c,c], "m_vis": [B,1,c,c]}.
    Images smaller than ``crop`` are reflect-padded. Every random choice comes from ``rng``.
    """
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("ir", "vis", "f1", "m_ir", "m_vis")}
    for _ in range(batch):
        item = data.arrays[int(rng.integers(len(data)))]
        h, w = item["ir"].shape
        top = int(rng.integers(max(1, h - crop + 1)))
        left = int(rng.integers(max(1, w - crop + 1)))
        flip_h, flip_v = rng.random() < 0.5, rng.random() < 0.5
        for key, array in item.items():
            x = array[top : top + crop, left : left + crop].astype(np.float32)
            if key in ("ir", "vis"):
                x /= 255.0
            if x.shape[0] < crop or x.shape[1] < crop:
                pad = ((0, crop - x.shape[0]), (0, crop - x.shape[1])) + ((0, 0),) * (x.ndim - 2)
                x = np.pad(x, pad, mode="reflect")
            if flip_h:
                x = x[:, ::-1]
            if flip_v:
                x = x[::-1]
            out[key].append(np.ascontiguousarray(x))
    result = {}
    for key, items in out.items():
        stacked = torch.from_numpy(np.stack(items))
        result[key] = stacked[:, None] if stacked.dim() == 3 else stacked.permute(0, 3, 1, 2).contiguous()
    return result
