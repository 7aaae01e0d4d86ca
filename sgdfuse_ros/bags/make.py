"""``sgdfuse bag make``: an image-pair folder (``ir/``, ``vi/``) -> a rosbag2 bag of two unsynchronised cameras.

:class:`MakeOptions` sets rate, fixed offset, seeded jitter, encodings, compression, topics and bag
format; :func:`frame_stamps` draws the stamps; :func:`make_bag` writes the bag.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .bag_io import (
    COMPRESSED_IMAGE,
    DEFAULT_COUNTS_RANGE,
    DEFAULT_RGB_TOPIC,
    DEFAULT_START_TIME,
    DEFAULT_THERMAL_TOPIC,
    IMAGE,
    BagError,
    compressed_message,
    image_message,
    resolve_format,
    typestore,
    write_bag,
)


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise BagError(f"size must look like 320x240, got '{text}'")
    return int(match.group(1)), int(match.group(2))


def _thermal_as(image: np.ndarray, encoding: str, counts_range: tuple[float, float]) -> np.ndarray:
    """Thermal file pixels (uint8 grey or uint16 counts) -> ``encoding`` (mono8, or mono16 counts)."""
    low, high = counts_range
    if encoding == "mono16":
        if image.dtype == np.uint16:
            return image
        return np.round(low + image.astype(np.float64) * ((high - low) / 255.0)).astype(np.uint16)
    if image.dtype == np.uint8:
        return image
    scaled = (image.astype(np.float64) - low) / (high - low) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


@dataclass
class MakeOptions:
    """How :func:`make_bag` turns pairs into a bag (see ``sgdfuse bag make --help``)."""

    rate: float = 10.0  #: frames per second of each camera
    offset: float = 0.0  #: thermal stamp minus RGB stamp (s), a fixed skew between the cameras
    jitter: float = 0.0  #: each stamp moves by uniform(-jitter, +jitter) s, independently per camera
    seed: int = 0  #: jitter random seed
    start_time: float = DEFAULT_START_TIME  #: first RGB stamp (s since epoch)
    count: int | None = None  #: number of frames per camera; default len(pairs) * loop
    loop: int = 1  #: passes over the pairs when count is not given
    resize: str | None = None  #: "WxH": both images resized to exactly this size
    max_width: int | None = None  #: shrink (keeping aspect) so the RGB image is at most this wide
    thermal_encoding: str = "mono8"  #: mono8 | mono16
    rgb_encoding: str = "rgb8"  #: rgb8 | bgr8
    thermal_compression: str = "none"  #: none | png | jpeg (jpeg only with mono8)
    rgb_compression: str = "none"  #: none | jpeg | png
    jpeg_quality: int = 90
    counts_range: tuple[float, float] = DEFAULT_COUNTS_RANGE  #: mono16 counts for grey 0 and 255
    thermal_topic: str = DEFAULT_THERMAL_TOPIC
    rgb_topic: str = DEFAULT_RGB_TOPIC
    thermal_frame: str = "thermal"  #: as pair_publisher
    rgb_frame: str = "rgb_camera"  #: as pair_publisher
    distro: str = "kilted"
    storage: str | None = None  #: default: mcap (kilted, jazzy), sqlite3 (humble)
    version: int | None = None  #: default: 9 (kilted, jazzy), 8 (humble)

    def check(self) -> None:
        """Raise BagError naming the first invalid option."""
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise BagError(f"rate must be > 0 frames/s, got {self.rate}")
        if not (self.jitter >= 0 and math.isfinite(self.jitter)):
            raise BagError(f"jitter must be >= 0 s, got {self.jitter}")
        if not math.isfinite(self.offset):
            raise BagError(f"offset must be finite, got {self.offset}")
        if self.count is not None and self.count < 1:
            raise BagError(f"count must be >= 1, got {self.count}")
        if self.loop < 1:
            raise BagError(f"loop must be >= 1, got {self.loop}")
        if self.thermal_encoding not in ("mono8", "mono16"):
            raise BagError(f"thermal encoding must be mono8 or mono16, got '{self.thermal_encoding}'")
        if self.rgb_encoding not in ("rgb8", "bgr8"):
            raise BagError(f"RGB encoding must be rgb8 or bgr8, got '{self.rgb_encoding}'")
        if self.thermal_compression not in ("none", "png", "jpeg"):
            raise BagError(f"thermal compression must be none, png or jpeg, got '{self.thermal_compression}'")
        if self.thermal_compression == "jpeg" and self.thermal_encoding == "mono16":
            raise BagError("jpeg cannot hold mono16 thermal images: use --thermal-compression png")
        if self.rgb_compression not in ("none", "jpeg", "png"):
            raise BagError(f"RGB compression must be none, jpeg or png, got '{self.rgb_compression}'")
        if not 1 <= self.jpeg_quality <= 100:
            raise BagError(f"jpeg quality must be in [1, 100], got {self.jpeg_quality}")
        if self.max_width is not None and self.max_width < 1:
            raise BagError(f"max width must be >= 1, got {self.max_width}")
        if self.resize:
            _parse_size(self.resize)
        if self.thermal_topic == self.rgb_topic:
            raise BagError(f"thermal and RGB topics must differ, both are '{self.thermal_topic}'")
        if self.counts_range[1] <= self.counts_range[0]:
            raise BagError(f"counts range must be increasing, got {self.counts_range}")
        resolve_format(self.distro, self.storage, self.version)


def frame_stamps(options: MakeOptions, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(thermal stamps, RGB stamps) in int64 ns for ``count`` frames: nominal grid + offset + seeded uniform jitter."""
    rng = np.random.default_rng(options.seed)
    nominal = round(options.start_time * 1e9) + np.round(np.arange(count) * (1e9 / options.rate)).astype(np.int64)
    jitter_rgb = np.round(rng.uniform(-options.jitter, options.jitter, count) * 1e9).astype(np.int64)
    jitter_thermal = np.round(rng.uniform(-options.jitter, options.jitter, count) * 1e9).astype(np.int64)
    rgb = nominal + jitter_rgb
    thermal = nominal + round(options.offset * 1e9) + jitter_thermal
    return np.maximum(thermal, 0), np.maximum(rgb, 0)


def _prepare_pair(ir_path: Path, vi_path: Path, options: MakeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair -> (thermal in the bag's encoding, RGB in the bag's encoding), resized as asked."""
    from ..files import read_thermal, read_visible

    thermal, _ = read_thermal(ir_path)
    visible, _ = read_visible(vi_path)  # BGR
    size = None
    if options.resize:
        size = _parse_size(options.resize)
        thermal_size = size
    elif options.max_width and visible.shape[1] > options.max_width:
        factor = options.max_width / visible.shape[1]
        size = (options.max_width, max(1, round(visible.shape[0] * factor)))
        thermal_size = (max(1, round(thermal.shape[1] * factor)), max(1, round(thermal.shape[0] * factor)))
    if size is not None:
        visible = cv2.resize(visible, size, interpolation=cv2.INTER_AREA)
        thermal = cv2.resize(thermal, thermal_size, interpolation=cv2.INTER_AREA)
    thermal = _thermal_as(thermal, options.thermal_encoding, options.counts_range)
    rgb = visible[:, :, ::-1] if options.rgb_encoding == "rgb8" else visible
    return thermal, np.ascontiguousarray(rgb)


def make_bag(
    pairs: str | Path, out: str | Path, options: MakeOptions | None = None, *, overwrite: bool = False
) -> dict:
    """Image-pair folder (``ir/``, ``vi/`` matched by stem) -> rosbag2 bag at ``out``; returns a summary dict.

    Frame i shows pair ``i % len(pairs)``; its RGB stamp is ``start + i / rate`` (+ jitter) and its
    thermal stamp that plus ``offset`` (+ independent jitter). Log (receive) time = header stamp, and
    messages are written in log-time order, as a recorder would store two free-running cameras.
    """
    from ..files import find_pairs

    options = options or MakeOptions()
    options.check()
    pairs_dir = Path(pairs)
    if not pairs_dir.is_dir():
        raise BagError(f"pair folder not found: {pairs_dir}")
    found = find_pairs(pairs_dir)
    if not found:
        raise BagError(f"{pairs_dir}: no pairs (same file stem in ir/ and vi/)")
    count = options.count or len(found) * options.loop
    thermal_stamps, rgb_stamps = frame_stamps(options, count)
    store = typestore(options.distro)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def image_msg(which: str, image: np.ndarray, stamp: int) -> Any:
        if which == "thermal":
            encoding, codec, frame = options.thermal_encoding, options.thermal_compression, options.thermal_frame
        else:
            encoding, codec, frame = options.rgb_encoding, options.rgb_compression, options.rgb_frame
        if codec == "none":
            return image_message(store, image, encoding, stamp, frame)
        return compressed_message(store, image, encoding, codec, stamp, frame, options.jpeg_quality)

    # Events sorted by log time (= stamp); RGB first on ties, a recorder's order is arbitrary there.
    events = sorted(
        [(int(rgb_stamps[i]), 0, i) for i in range(count)] + [(int(thermal_stamps[i]), 1, i) for i in range(count)]
    )

    def messages() -> Iterator[tuple[str, int, Any]]:
        for stamp, kind, i in events:
            index = i % len(found)
            if index not in cache:
                cache[index] = _prepare_pair(found[index][1], found[index][2], options)
            thermal, rgb = cache[index]
            if kind == 0:
                yield options.rgb_topic, stamp, image_msg("rgb", rgb, stamp)
            else:
                yield options.thermal_topic, stamp, image_msg("thermal", thermal, stamp)

    write_bag(
        out, messages(), distro=options.distro, storage=options.storage, version=options.version, overwrite=overwrite
    )
    storage, version = resolve_format(options.distro, options.storage, options.version)
    return {
        "path": str(out),
        "pairs": len(found),
        "frames_per_topic": count,
        "topics": {
            options.thermal_topic: _topic_type(options.thermal_compression),
            options.rgb_topic: _topic_type(options.rgb_compression),
        },
        "storage": storage,
        "version": version,
        "distro": options.distro,
        "duration_s": float(max(thermal_stamps.max(), rgb_stamps.max()) - min(thermal_stamps.min(), rgb_stamps.min()))
        / 1e9,
        "bytes": sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()),
    }


def _topic_type(codec: str) -> str:
    return IMAGE if codec == "none" else COMPRESSED_IMAGE
