"""sensor_msgs Image / CompressedImage -> NumPy, validated before anything is converted (no rclpy).

Works on any object with the message fields (``height``, ``width``, ``step``, ``encoding``,
``is_bigendian``, ``data`` for Image; ``format``, ``data`` for CompressedImage): rclpy messages in the
node (through ``sgdfuse_ros.ros.conversion``, which also builds outgoing messages) and rosbags
message objects in the offline bag tools (``sgdfuse_ros.bags``), so both decode with one code path.

Choice of converter: plain NumPy on top of our own validation (no cv_bridge, no rosbags-image).

* cv_bridge's compiled module is built against NumPy 1.x on the distributions that ship it and
  fails to import under NumPy 2 (ros-perception/vision_opencv#535); it also mishandles big-endian
  images under NumPy 2, and it is not installable from PyPI.
* rosbags-image's ``message_to_cvimage`` works on rclpy messages under NumPy 2, but it builds the
  array as ``np.ndarray(shape=(height, width[, channels]), buffer=msg.data)``: it ignores ``step``,
  so an image with row padding comes out sheared, and it does not check that ``data`` is as long
  as ``step * height``. Its CompressedImage path decodes with ``cv2.IMREAD_ANYCOLOR``, which turns a
  16-bit PNG thermal frame into 8 bits.

So this module validates the message (encoding, width/height, ``step`` against ``width`` x bytes per
pixel, ``len(data) == step * height``) and only then makes a strided view of ``data`` honouring
``step`` and ``is_bigendian``; the only copy made is the one that removes row padding or swaps
bytes. Every rejection raises :class:`sgdfuse_ros.imaging.InvalidImageError` with a stable
``reason`` key: ``<which>_encoding``, ``<which>_empty``, ``<which>_step``, ``<which>_data_size``,
``<which>_nonfinite`` (NaN/Inf in a float thermal image), ``<which>_format`` (unsupported
CompressedImage format), ``<which>_decode`` (compressed data that does not decode, or is neither
PNG nor JPEG, the two codecs of image_transport's ``compressed``) and ``<which>_too_large`` (more
bytes than ``max_bytes``: checked from height x step before the data is touched, and from the PNG
IHDR / JPEG SOF header before ``cv2.imdecode`` allocates anything), where ``<which>`` is ``thermal`` or ``rgb``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from sgdfuse_ros.imaging import RGB_ENCODINGS, THERMAL_ENCODINGS, InvalidImageError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ENCODINGS",
    "compressed_header",
    "compressed_to_array",
    "decode",
    "image_to_array",
    "rgb_to_array",
    "thermal_to_array",
]

#: Encodings this module converts: encoding -> (dtype of one channel, channels).
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
}

_HOST_BIG_ENDIAN = sys.byteorder == "big"
#: Default of ``max_bytes`` (the node's ``node.max_image_bytes``): 64 MiB, a 4K RGBA frame is 33 MB.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> channels (greyscale, RGB, palette, grey + alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
#: JPEG start-of-frame markers (SOF0-SOF15 without DHT C4, JPG C8 and DAC CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _too_large(which: str, what: str, size: int, max_bytes: int) -> InvalidImageError:
    return InvalidImageError(
        f"{which}_too_large",
        f"{which} {what} is {size} bytes, more than the limit of {max_bytes} (node.max_image_bytes)",
    )


def compressed_header(data: bytes) -> tuple[str, int, int, int] | None:
    """(codec, width, height, decoded bytes) read from a PNG IHDR or JPEG SOF header; None if neither is found.

    Only the header is read: nothing is decoded. The decoded size is width x height x channels x bytes per
    sample (16-bit PNG: 2), what ``cv2.imdecode(..., IMREAD_UNCHANGED)`` would allocate.
    """
    if data[:8] == _PNG_SIGNATURE:
        if len(data) < 26 or data[12:16] != b"IHDR":
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, colour = data[24], data[25]
        channels = _PNG_CHANNELS.get(colour, 4)
        return "png", width, height, width * height * channels * (2 if depth == 16 else 1)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if marker in _JPEG_SOF:
                if i + 10 > len(data):
                    return None
                height, width = int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
                channels = data[i + 9]
                return "jpeg", width, height, width * height * max(1, channels)
            if length < 2:
                return None
            i += 2 + length
    return None


def image_to_array(
    msg: Any, *, which: str = "image", encodings: Iterable[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Validate a sensor_msgs/Image (rclpy or rosbags object) and return its pixels.

    Args:
        msg: the message; ``data`` holds ``height`` rows of ``step`` bytes.
        which: prefix of the reason keys ("thermal", "rgb").
        encodings: accepted encodings (default: all of :data:`ENCODINGS`).
        max_bytes: largest ``height * step`` accepted.
    Returns:
        [H, W] (1 channel) or [H, W, C] array of the encoding's dtype in native byte order, raw
        values (no scaling); a view of ``msg.data`` when no copy is needed.
    Raises:
        InvalidImageError: with reason ``<which>_encoding`` / ``_empty`` / ``_step`` / ``_too_large`` /
        ``_data_size``.
    """
    allowed = tuple(ENCODINGS) if encodings is None else tuple(encodings)
    encoding = msg.encoding
    if encoding not in allowed or encoding not in ENCODINGS:
        raise InvalidImageError(
            f"{which}_encoding",
            f"{which} image has unsupported encoding '{encoding}' (supported: {', '.join(allowed)})",
        )
    dtype, channels = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise InvalidImageError(f"{which}_empty", f"{which} image has zero width or height ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise InvalidImageError(
            f"{which}_step",
            f"{which} image step {step} is smaller than width x bytes per pixel = {width} x "
            f"{channels * dtype.itemsize} = {row_bytes} ('{encoding}')",
        )
    if step * height > max_bytes:
        raise _too_large(which, f"image ({width}x{height}, step {step})", step * height, max_bytes)
    size = len(msg.data)
    if size != step * height:
        raise InvalidImageError(
            f"{which}_data_size",
            f"{which} image data has {size} bytes, expected step x height = {step} x {height} = {step * height}",
        )
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    big_endian = bool(msg.is_bigendian) and dtype.itemsize > 1
    wire = dtype.newbyteorder(">" if big_endian else "<") if dtype.itemsize > 1 else dtype
    shape = (height, width) if channels == 1 else (height, width, channels)
    strides = (step, dtype.itemsize) if channels == 1 else (step, channels * dtype.itemsize, dtype.itemsize)
    # A strided view honours row padding without copying; ascontiguousarray copies only when
    # there is padding, astype only when the wire byte order differs from the host's.
    view = np.ndarray(shape=shape, dtype=wire, buffer=raw, offset=0, strides=strides)
    if big_endian != _HOST_BIG_ENDIAN and dtype.itemsize > 1:
        return view.astype(dtype.newbyteorder("="))
    return np.ascontiguousarray(view).view(dtype.newbyteorder("="))


def compressed_to_array(
    msg: Any, *, which: str = "image", encodings: Iterable[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage (rclpy or rosbags object; JPEG/PNG/...) with ``cv2.IMREAD_UNCHANGED``.

    ``format`` follows image_transport: ``"<encoding>; <codec> compressed [<encoding>]"`` (e.g.
    ``"mono16; png compressed"``, ``"rgb8; jpeg compressed bgr8"``) or just the codec (``"jpeg"``).
    IMREAD_UNCHANGED keeps 16-bit PNGs at 16 bits. OpenCV decodes colour to BGR(A), so a 3/4-channel
    result is reported as ``bgr8``/``bgra8`` whatever the original encoding; a 1-channel result takes
    the original encoding when it names one of the same depth (``mono16``/``16UC1``), else
    ``mono8``/``mono16`` by depth.

    Returns:
        (array, encoding) as :func:`image_to_array` would return for that encoding.
    Raises:
        InvalidImageError: ``<which>_format`` (compressedDepth), ``<which>_too_large`` (header size above
        ``max_bytes``), ``<which>_decode`` (also: data neither PNG nor JPEG, or no readable size header),
        ``<which>_encoding``, ``<which>_empty``.
    """
    allowed = tuple(ENCODINGS) if encodings is None else tuple(encodings)
    fmt = msg.format.strip()
    original = fmt.split(";", 1)[0].strip() if ";" in fmt else ""
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise InvalidImageError(
            f"{which}_format", f"{which} CompressedImage format '{fmt}' (compressedDepth) is not supported"
        )
    if len(msg.data) == 0:
        raise InvalidImageError(f"{which}_decode", f"{which} CompressedImage ('{fmt}') has no data")
    data = bytes(msg.data[:65536])  # the size header sits at the start: no need to copy the whole payload
    header = compressed_header(data)
    if header is None:
        kind = "PNG" if data[:8] == _PNG_SIGNATURE else "JPEG" if data[:2] == b"\xff\xd8" else ""
        what = f"{kind} data without a readable size header" if kind else "data is neither PNG nor JPEG"
        raise InvalidImageError(f"{which}_decode", f"{which} CompressedImage ('{fmt}', {len(msg.data)} bytes): {what}")
    codec, width, height, decoded = header
    if width == 0 or height == 0:
        raise InvalidImageError(f"{which}_empty", f"{which} CompressedImage {codec} header says {width}x{height}")
    if decoded > max_bytes:
        raise _too_large(which, f"CompressedImage ({codec} {width}x{height} decoded)", decoded, max_bytes)
    image = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidImageError(
            f"{which}_decode", f"{which} CompressedImage ('{fmt}', {len(msg.data)} bytes) could not be decoded"
        )
    encoding = _decoded_encoding(image, original)
    if encoding not in allowed:
        raise InvalidImageError(
            f"{which}_encoding",
            f"{which} CompressedImage ('{fmt}') decodes to '{encoding}' {image.dtype} with shape {image.shape} "
            f"(supported: {', '.join(allowed)})",
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"{which}_empty", f"{which} CompressedImage decodes to an empty image")
    return image, encoding


def _decoded_encoding(image: np.ndarray, original: str) -> str:
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        by_depth = {np.dtype(np.uint8): ("mono8", "8UC1"), np.dtype(np.uint16): ("mono16", "16UC1")}
        names = by_depth.get(image.dtype)
        if names is None:
            return "32FC1" if image.dtype == np.float32 else f"{image.dtype}C1"
        return original if original in names else names[0]
    if image.dtype == np.uint8 and channels in (3, 4):
        return "bgr8" if channels == 3 else "bgra8"
    return f"{image.dtype}C{channels}"


def decode(
    msg: Any, which: str = "image", encodings: Iterable[str] | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, str]:
    """Image or CompressedImage (a CompressedImage is recognised by its ``format`` field) -> (array, encoding).

    Dispatches to :func:`compressed_to_array` or :func:`image_to_array` (see those for ``which``,
    ``encodings``, ``max_bytes``, the result and the InvalidImageError reasons).
    """
    if hasattr(msg, "format"):
        return compressed_to_array(msg, which=which, encodings=encodings, max_bytes=max_bytes)
    return image_to_array(msg, which=which, encodings=encodings, max_bytes=max_bytes), msg.encoding


def thermal_to_array(msg: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, str]:
    """Thermal Image or CompressedImage -> ([H, W] raw array, encoding).

    Accepts imaging.THERMAL_ENCODINGS (mono8, 8UC1, mono16, 16UC1, 32FC1). A 32FC1 image with NaN or
    Inf pixels is rejected here (reason ``thermal_nonfinite``), before any scaling.
    """
    array, encoding = decode(msg, "thermal", THERMAL_ENCODINGS, max_bytes)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise InvalidImageError(
            "thermal_nonfinite", f"thermal image ({encoding}) has {bad} NaN/Inf pixel(s) of {array.size}"
        )
    return array, encoding


def rgb_to_array(msg: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, str]:
    """Visible Image or CompressedImage -> ([H, W, C] or [H, W] uint8 array, encoding).

    Accepts imaging.RGB_ENCODINGS (rgb8, bgr8, rgba8, bgra8, mono8); channel order is left to
    imaging.rgb_to_float, which knows the encoding.
    """
    return decode(msg, "rgb", RGB_ENCODINGS, max_bytes)
