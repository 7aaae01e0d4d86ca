"""Training data: registered IR/visible pairs from <root>/ir and <root>/vi, held-out names, random crops.

The five RoadScene pairs bundled in samples/pairs are evaluation data: ``HELD_OUT_NAMES`` is the one list of
them, and ``list_pairs`` drops them unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..files import IMAGE_SUFFIXES
from ..imaging import LUMA_WEIGHTS

__all__ = ["HELD_OUT_NAMES", "IMAGE_SUFFIXES", "PairSet", "darken", "list_pairs", "load_pair", "sample_batch"]

# RoadScene pairs bundled with the package (samples/pairs) and held out of every training run.
HELD_OUT_NAMES: tuple[str, ...] = ("FLIR_04269", "FLIR_04598", "FLIR_06307", "FLIR_06570", "FLIR_08835")



def list_pairs(
    root: str | Path,
    exclude: tuple[str, ...] | list[str] = HELD_OUT_NAMES,
    ir_name: str = "ir",
    vis_name: str = "vi",
) -> list[tuple[Path, Path]]:
    """Pairs (ir_path, vi_path) under ``root``/<ir_name> and ``root``/<vis_name> matched by file stem, sorted.

    Names in ``exclude`` (file stems) are dropped. Other folder names serve other modalities (medical: ``mri``
    plays the thermal input, ``pet`` / ``spect`` the colour one). Raises FileNotFoundError naming a missing
    folder and ValueError when no pair remains.
    """
    root = Path(root)
    ir_dir, vi_dir = root / ir_name, root / vis_name
    for folder in (ir_dir, vi_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"missing image folder: {folder}")

    def by_stem(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}

    irs, vis = by_stem(ir_dir), by_stem(vi_dir)
    excluded = set(exclude)
    names = sorted((set(irs) & set(vis)) - excluded)
    if not names:
        raise ValueError(f"no IR/visible pairs with matching names under {root}")
    return [(irs[n], vis[n]) for n in names]


def load_pair(ir_path: str | Path, vi_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair as float32 (IR [H,W], visible luminance Y [H,W]), both in [0, 1].

    IR is read as grayscale; the visible image is read as RGB and converted to BT.601 full-range Y (the same
    weights as ``imaging.split_luma_chroma``). Raises ValueError naming an unreadable file or a size mismatch.
    """
    ir = cv2.imread(str(ir_path), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imread(str(vi_path), cv2.IMREAD_COLOR)
    if ir is None:
        raise ValueError(f"cannot read image {ir_path}")
    if bgr is None:
        raise ValueError(f"cannot read image {vi_path}")
    if ir.shape != bgr.shape[:2]:
        raise ValueError(f"size mismatch: {ir_path} is {ir.shape}, {vi_path} is {bgr.shape[:2]}")
    rgb = bgr[..., ::-1].astype(np.float32) / 255.0
    y = rgb @ np.asarray(LUMA_WEIGHTS, dtype=np.float32)
    return ir.astype(np.float32) / 255.0, np.clip(y, 0.0, 1.0).astype(np.float32)


@dataclass
class PairSet:
    """All training pairs in memory (RoadScene: 216 pairs, about 80 MB as float32)."""

    names: list[str]
    ir: list[np.ndarray]
    vis_y: list[np.ndarray]

    @classmethod
    def load(
        cls,
        root: str | Path,
        exclude: tuple[str, ...] | list[str] = HELD_OUT_NAMES,
        ir_name: str = "ir",
        vis_name: str = "vi",
    ) -> PairSet:
        pairs = list_pairs(root, exclude, ir_name, vis_name)
        names, irs, ys = [], [], []
        for ir_path, vi_path in pairs:
            ir, y = load_pair(ir_path, vi_path)
            names.append(ir_path.stem)
            irs.append(ir)
            ys.append(y)
        return cls(names, irs, ys)

    def __len__(self) -> int:
        return len(self.names)


def darken(vis_y: np.ndarray, gain: float = 0.25, gamma: float = 1.5) -> np.ndarray:
    """Night-like visible luminance ``gain * vis_y ** gamma`` ([H,W] in [0,1] -> same): dark, with crushed shadows.

    With the defaults this is the night proxy of the validation split; training draws gain and gamma at random.
    """
    return (gain * np.power(vis_y, gamma)).astype(np.float32)


def sample_batch(
    data: PairSet, batch_size: int, crop: int, rng: np.random.Generator, darken_prob: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with random horizontal / vertical flips and, with probability ``darken_prob``, a darkened
    visible image (``darken`` with gain in [0.1, 0.7] and gamma in [1, 2]: RoadScene is mostly daylight, robots
    also drive at night).

    Returns (ir, vis_y), each float32 [batch_size,1,crop,crop] in [0,1]. Images smaller than ``crop`` are
    reflect-padded. All randomness comes from ``rng``, so a batch is a function of the generator state.
    """
    irs, ys = [], []
    for _ in range(batch_size):
        i = int(rng.integers(len(data)))
        ir, y = data.ir[i], data.vis_y[i]
        h, w = ir.shape
        if h < crop or w < crop:
            pad = ((0, max(0, crop - h)), (0, max(0, crop - w)))
            ir, y = np.pad(ir, pad, mode="reflect"), np.pad(y, pad, mode="reflect")
            h, w = ir.shape
        top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        ir, y = ir[top : top + crop, left : left + crop], y[top : top + crop, left : left + crop]
        if rng.random() < 0.5:
            ir, y = ir[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            ir, y = ir[::-1], y[::-1]
        if darken_prob > 0 and rng.random() < darken_prob:
            y = darken(y, float(rng.uniform(0.1, 0.7)), float(rng.uniform(1.0, 2.0)))
        irs.append(np.ascontiguousarray(ir))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(irs))[:, None], torch.from_numpy(np.stack(ys))[:, None]
