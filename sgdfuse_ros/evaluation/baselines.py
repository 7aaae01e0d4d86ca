"""Classical fusion baselines on grayscale images: pixel average, pixel maximum, Laplacian pyramid.

They work on the grayscale sources exactly as the reference evaluator reads them (``metrics.to_gray``:
``cv2.imread`` BGR -> float BT.601 grey -> ``np.round``), so their metrics are the "pixel maximum" / "pixel
average" rows of published tables (docs/metrics.md reproduces those to 0.01 %). Every baseline returns what an
8-bit file written from it would hold: integer grey levels in ``[0, 255]`` as ``float64`` ``(H, W)``, which is
also what :func:`sgdfuse_ros.metrics.evaluate` expects.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

__all__ = [
    "BASELINES",
    "laplacian_pyramid",
    "laplacian_pyramid_fusion",
    "maximum_with_visible_chroma",
    "pixel_average",
    "pixel_maximum",
    "reconstruct_laplacian_pyramid",
]


def _pair(ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(ir, dtype=np.float64)
    b = np.asarray(vis, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"baselines take two grayscale images (H, W) of one size, got {a.shape} and {b.shape}")
    return a, b


def pixel_average(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """``np.round((IR + VIS) / 2)``, rounding half to even as the reference table does (docs/metrics.md).

    Args:
        ir, vis: grayscale ``(H, W)`` in ``[0, 255]`` (integer-valued, e.g. from ``metrics.to_gray``).
    Returns:
        ``float64 (H, W)``, integer grey levels in ``[0, 255]``.
    """
    a, b = _pair(ir, vis)
    return np.round((a + b) / 2.0)


def pixel_maximum(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """Element-wise ``max(IR, VIS)`` (integer inputs give integer output: no rounding choice).

    Args / Returns: as :func:`pixel_average`.
    """
    a, b = _pair(ir, vis)
    return np.maximum(a, b)


def maximum_with_visible_chroma(ir: np.ndarray, vis_rgb: np.ndarray) -> np.ndarray:
    """What copying the maximum would publish: luminance ``max(IR, Y_vis)`` with the visible colour kept.

    BT.601 full range, as the pipeline splits and merges: with Cb and Cr fixed, changing Y by d changes R, G and B
    by d each, so the result is ``clip(RGB + (max(IR, Y) − Y))``.

    Args:
        ir: grey ``(H, W)`` in ``[0, 255]``; vis_rgb: uint8 RGB ``(H, W, 3)``.
    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    rgb = np.asarray(vis_rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != np.shape(ir):
        raise ValueError(f"expected grey (H, W) and RGB (H, W, 3) of one size, got {np.shape(ir)} and {rgb.shape}")
    y = rgb @ np.array([0.299, 0.587, 0.114])
    delta = np.maximum(np.asarray(ir, dtype=np.float64), y) - y
    return np.clip(np.round(rgb + delta[..., None]), 0, 255).astype(np.uint8)


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid ``[L_0, ..., L_{levels-2}, G_{levels-1}]`` of a ``float64 (H, W)`` image.

    ``G_0 = image``, ``G_{k+1} = pyrDown(G_k)``, ``L_k = G_k - pyrUp(G_{k+1}, size of G_k)``; the last entry is
    the coarsest Gaussian level (the base). Any size works: ``pyrUp`` is given the finer level's size, so odd
    sizes reconstruct exactly (:func:`reconstruct_laplacian_pyramid`). ``levels`` is capped so that the base
    stays at least 2 pixels on its short side.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    g = np.asarray(image, dtype=np.float64)
    pyramid: list[np.ndarray] = []
    for _ in range(levels - 1):
        if min(g.shape) < 4:
            break
        down = cv2.pyrDown(g)
        up = cv2.pyrUp(down, dstsize=(g.shape[1], g.shape[0]))
        pyramid.append(g - up)
        g = down
    pyramid.append(g)
    return pyramid


def reconstruct_laplacian_pyramid(pyramid: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid`: collapse from the base up; ``float64 (H, W)``, not rounded."""
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = cv2.pyrUp(image, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return image


def laplacian_pyramid_fusion(ir: np.ndarray, vis: np.ndarray, levels: int = 5) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt & Adelson style): max-abs detail selection, averaged base.

    Each detail level takes, per pixel, the coefficient with the larger magnitude (IR on ties); the base
    (coarsest Gaussian level) is the mean of the two bases. The collapsed image is rounded (half to even) and
    clipped to ``[0, 255]``, i.e. what an 8-bit file of it would hold.

    Args:
        ir, vis: grayscale ``(H, W)`` in ``[0, 255]``.
        levels: pyramid levels including the base (5 at 640x480 leaves a 40x30 base).
    Returns:
        ``float64 (H, W)``, integer grey levels in ``[0, 255]``.
    """
    a, b = _pair(ir, vis)
    pa = laplacian_pyramid(a, levels)
    pb = laplacian_pyramid(b, levels)
    fused = [np.where(np.abs(la) >= np.abs(lb), la, lb) for la, lb in zip(pa[:-1], pb[:-1], strict=True)]
    fused.append((pa[-1] + pb[-1]) / 2.0)
    return np.clip(np.round(reconstruct_laplacian_pyramid(fused)), 0.0, 255.0)


#: Baselines in table order: display name -> ``f(ir_gray, vis_gray) -> fused_gray`` (all ``float64 (H, W)``).
BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "pixel maximum": pixel_maximum,
    "pixel average": pixel_average,
    "Laplacian pyramid": laplacian_pyramid_fusion,
}
