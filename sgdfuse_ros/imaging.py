"""Input preparation: encodings, deterministic thermal scaling, registration onto the RGB grid, colour.

Everything here works on NumPy arrays as they come out of a decoded ROS image (or a file) and
returns float32 arrays in [0, 1]. Colour policy: the fused image takes its luminance from the
fusion networks and its chrominance (BT.601 Cb/Cr) from the visible camera, so colours stay
those the RGB camera saw and thermal targets show as brightness, not false colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .config import RegistrationConfig, ThermalConfig

__all__ = [
    "RGB_ENCODINGS",
    "THERMAL_ENCODINGS",
    "LUMA_WEIGHTS",
    "InvalidImageError",
    "ThermalScaler",
    "merge_luma_chroma",
    "register_thermal",
    "rgb_to_float",
    "split_luma_chroma",
]

#: Thermal encodings accepted, with the NumPy dtype of one pixel.
THERMAL_ENCODINGS: dict[str, np.dtype] = {
    "mono8": np.dtype(np.uint8),
    "8UC1": np.dtype(np.uint8),
    "mono16": np.dtype(np.uint16),
    "16UC1": np.dtype(np.uint16),
    "32FC1": np.dtype(np.float32),
}
#: RGB-camera encodings accepted, with their channel count.
RGB_ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class InvalidImageError(ValueError):
    """An input image cannot be used. ``reason`` is a short stable key used for counters and log throttling."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def rgb_to_float(image: np.ndarray, encoding: str) -> np.ndarray:
    """Visible image -> RGB float32 [H, W, 3] in [0, 1].

    Args:
        image: uint8 array [H, W] (mono8) or [H, W, C] with C = 3 (rgb8/bgr8) or 4 (rgba8/bgra8).
        encoding: one of RGB_ENCODINGS.
    """
    if encoding not in RGB_ENCODINGS:
        raise InvalidImageError(
            "rgb_encoding", f"unsupported RGB encoding '{encoding}' (supported: {', '.join(RGB_ENCODINGS)})"
        )
    _check_nonempty(image, "rgb")
    channels = RGB_ENCODINGS[encoding]
    if image.dtype != np.uint8:
        raise InvalidImageError("rgb_dtype", f"RGB image must be 8-bit for '{encoding}', got {image.dtype}")
    if channels == 1:
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim != 2:
            raise InvalidImageError("rgb_shape", f"mono8 image must be [H, W], got shape {image.shape}")
        image = np.repeat(image[:, :, None], 3, axis=2)
    else:
        if image.ndim != 3 or image.shape[2] != channels:
            raise InvalidImageError(
                "rgb_shape", f"'{encoding}' image must be [H, W, {channels}], got shape {image.shape}"
            )
        image = image[:, :, 2::-1] if encoding.startswith("bgr") else image[:, :, :3]
    return np.ascontiguousarray(image, dtype=np.float32) / 255.0


@dataclass
class _Range:
    low: float
    high: float


class ThermalScaler:
    """Maps raw thermal pixels to [0, 1] deterministically.

    'fixed' uses the configured range for the encoding (mono8: 0-255; 16-bit counts:
    counts_min-counts_max; 32FC1: temperature_min-temperature_max). 'tracked' starts from that range
    and moves it towards the 1st/99th percentiles of each frame by ``tracking_rate``: a slow,
    reproducible adaptation (the same frame sequence gives the same output) that never jumps with a
    single frame, so the fused video does not flicker. mono8 is always taken as already scaled.
    """

    def __init__(self, config: ThermalConfig) -> None:
        self.config = config
        self._tracked: dict[str, _Range] = {}

    def configured_range(self, encoding: str) -> tuple[float, float]:
        """The fixed range used for ``encoding`` (raw units)."""
        c = self.config
        dtype = THERMAL_ENCODINGS[encoding]
        if dtype == np.uint8:
            return 0.0, 255.0
        if dtype == np.uint16:
            return c.counts_min, c.counts_max
        return c.temperature_min, c.temperature_max

    def current_range(self, encoding: str) -> tuple[float, float]:
        """The range the next frame of ``encoding`` will be scaled with."""
        if self.config.scaling == "tracked" and encoding in self._tracked:
            tracked = self._tracked[encoding]
            return tracked.low, tracked.high
        return self.configured_range(encoding)

    def reset(self) -> None:
        """Forget the tracked range (e.g. after the configuration changed)."""
        self._tracked.clear()

    def scale(self, image: np.ndarray, encoding: str) -> np.ndarray:
        """Raw thermal [H, W] (uint8, uint16 or float32 per ``encoding``) -> float32 [H, W] in [0, 1].

        Raises InvalidImageError for unknown encodings, wrong dtype/shape, empty images and NaN/Inf.
        """
        if encoding not in THERMAL_ENCODINGS:
            raise InvalidImageError(
                "thermal_encoding",
                f"unsupported thermal encoding '{encoding}' (supported: {', '.join(THERMAL_ENCODINGS)})",
            )
        _check_nonempty(image, "thermal")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim != 2:
            raise InvalidImageError("thermal_shape", f"thermal image must be [H, W], got shape {image.shape}")
        expected = THERMAL_ENCODINGS[encoding]
        if image.dtype.newbyteorder("=") != expected.newbyteorder("="):
            raise InvalidImageError(
                "thermal_dtype", f"'{encoding}' thermal image must be {expected}, got {image.dtype}"
            )
        values = image.astype(np.float32)
        if expected.kind == "f" and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise InvalidImageError("thermal_nonfinite", f"32FC1 thermal image has {bad} NaN/Inf pixels")
        if expected == np.uint8:
            return values / 255.0
        low, high = self.current_range(encoding)
        if self.config.scaling == "tracked":
            self._track(values, encoding, low, high)
        return np.clip((values - low) / (high - low), 0.0, 1.0)

    def _track(self, values: np.ndarray, encoding: str, low: float, high: float) -> None:
        # Percentiles on a subsample: robust to hot/cold outliers and cheap at any resolution.
        p_low, p_high = np.percentile(values[::4, ::4], (1.0, 99.0))
        rate = self.config.tracking_rate
        new_low = (1.0 - rate) * low + rate * float(p_low)
        new_high = (1.0 - rate) * high + rate * float(p_high)
        # Keep a minimum span so a uniform scene does not amplify sensor noise.
        configured = self.configured_range(encoding)
        min_span = 0.05 * (configured[1] - configured[0])
        if new_high - new_low < min_span:
            mid = 0.5 * (new_high + new_low)
            new_low, new_high = mid - 0.5 * min_span, mid + 0.5 * min_span
        self._tracked[encoding] = _Range(new_low, new_high)


def register_thermal(thermal: np.ndarray, rgb_size: tuple[int, int], config: RegistrationConfig) -> np.ndarray:
    """Bring thermal float [h, w] onto the RGB grid -> float32 [H, W] with (H, W) = ``rgb_size``.

    'resize' assumes co-registered optics (bilinear resize); 'homography' warps with the configured
    3x3 matrix mapping thermal pixel coordinates to RGB pixel coordinates (areas outside the thermal
    field of view become 0, i.e. cold).
    """
    height, width = rgb_size
    if config.mode == "homography":
        matrix = np.asarray(config.homography, dtype=np.float64).reshape(3, 3)
        return cv2.warpPerspective(
            thermal, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
        )
    if thermal.shape == (height, width):
        return thermal
    interpolation = cv2.INTER_AREA if thermal.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(thermal, (width, height), interpolation=interpolation)


# BT.601 full-range (JPEG) luma weights.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def split_luma_chroma(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB [N,3,H,W] in [0,1] -> (Y [N,1,H,W] in [0,1], Cb/Cr offsets [N,2,H,W] centred on 0), BT.601 full range."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b
    return y, torch.cat([(b - y) / 1.772, (r - y) / 1.402], dim=1)


def merge_luma_chroma(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """Inverse of split_luma_chroma: (Y [N,1,H,W], Cb/Cr [N,2,H,W]) -> RGB [N,3,H,W] clipped to [0, 1]."""
    r = y + 1.402 * chroma[:, 1:2]
    b = y + 1.772 * chroma[:, 0:1]
    g = (y - LUMA_WEIGHTS[0] * r - LUMA_WEIGHTS[2] * b) / LUMA_WEIGHTS[1]
    return torch.cat([r, g, b], dim=1).clamp(0.0, 1.0)


def _check_nonempty(image: np.ndarray, which: str) -> None:
    if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"{which}_empty", f"{which} image has zero width or height (shape {image.shape})")
