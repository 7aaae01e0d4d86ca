"""Image-pair files on disk: read a thermal or visible image as the pipeline expects it, find registered pairs.

Library code (the CLI, bag tools, evaluation, demo, publisher and benchmarks share it; none imports the CLI).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["IMAGE_SUFFIXES", "find_pairs", "read_thermal", "read_visible"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_thermal(path: str | Path) -> tuple[np.ndarray, str]:
    """Thermal image file -> (array [H, W], ROS encoding). 16-bit files stay raw counts ('mono16').

    Colour-stored thermal images (some datasets save grey as RGB) are converted to grey.
    """
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f"cannot read thermal image: {path}")
    if image.ndim == 3:
        image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
    encoding = "mono16" if image.dtype == np.uint16 else "mono8"
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported thermal image type {image.dtype}: {path}")
    return image, encoding


def read_visible(path: str | Path) -> tuple[np.ndarray, str]:
    """Visible image file -> (uint8 array [H, W, 3], 'bgr8')."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read visible image: {path}")
    return image, "bgr8"


def find_pairs(folder: str | Path, ir_name: str = "ir", vis_name: str = "vi") -> list[tuple[str, Path, Path]]:
    """(stem, thermal path, visible path) for every stem present in both ``folder/<ir_name>`` and
    ``folder/<vis_name>``, sorted. Other names serve other modalities (medical: ``mri`` plays the thermal
    input, ``pet`` / ``spect`` the colour one)."""
    folder = Path(folder)
    ir_dir, vi_dir = folder / ir_name, folder / vis_name
    if not ir_dir.is_dir() or not vi_dir.is_dir():
        raise FileNotFoundError(f"{folder} must contain {ir_name}/ and {vis_name}/ folders")

    def by_stem(directory: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(directory.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    ir, vi = by_stem(ir_dir), by_stem(vi_dir)
    return [(stem, ir[stem], vi[stem]) for stem in sorted(ir.keys() & vi.keys())]
