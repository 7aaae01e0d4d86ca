"""Property-based fuzzing of the message decoder: any Image or CompressedImage either decodes or is rejected
with the project's own InvalidImageError and a named reason, nothing else; oversized images are refused before
any decoding.

Messages are real sensor_msgs objects (the field types rclpy enforces); the seeded live-node run over the same
kinds of messages is in test_node.py (``test_fuzzed_messages_never_escape_and_are_counted``).
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

from sgdfuse_ros.imaging import InvalidImageError
from sgdfuse_ros.messages import ENCODINGS, compressed_header, rgb_to_array, thermal_to_array

REASONS = {"encoding", "empty", "step", "data_size", "nonfinite", "format", "decode", "too_large"}
LIMIT = 1 << 20  # a small max_bytes, so "huge" sizes are cheap to reach
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

encodings = st.one_of(st.sampled_from(sorted(ENCODINGS)), st.sampled_from(["yuv422", "bayer_rggb8", "", "RGB8"]))


@st.composite
def raw_images(draw) -> Image:
    """Image messages: mostly consistent ones, with one field at a time pushed out of line."""
    encoding = draw(encodings)
    dtype, channels = ENCODINGS.get(encoding, (np.dtype(np.uint8), 1))
    width = draw(st.one_of(st.integers(0, 24), st.integers(10**5, 2**31 - 1)))
    height = draw(st.one_of(st.integers(0, 24), st.integers(10**5, 2**31 - 1)))
    row = width * channels * dtype.itemsize
    step = draw(st.one_of(st.just(row), st.integers(0, row + 8), st.integers(row, row + 16)))
    step = min(step, 2**32 - 1)
    size = step * height
    # A huge header gets (almost) no data behind it.
    data_len = draw(st.one_of(st.just(size), st.integers(0, size + 16)) if size <= 4096 else st.integers(0, 64))
    if dtype == np.float32 and data_len % 4 == 0 and data_len:
        values = draw(
            st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=data_len // 4,
                     max_size=data_len // 4)
        )  # fmt: skip
        data = np.asarray(values, dtype=np.float32).tobytes()
    else:
        data = draw(st.binary(min_size=data_len, max_size=data_len))
    msg = Image()
    msg.encoding, msg.width, msg.height, msg.step = encoding, width, height, step
    msg.is_bigendian = draw(st.integers(0, 1))
    msg.data = data
    return msg


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def _jpeg(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", array)
    assert ok
    return buf.tobytes()


def _png_header_only(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _jpeg_header_only(width: int, height: int, components: int = 3) -> bytes:
    sof = struct.pack(">BHHB", 8, height, width, components) + b"\x01\x11\x00" * components
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof


@st.composite
def compressed_images(draw) -> CompressedImage:
    kind = draw(st.sampled_from(["png8", "png16", "png_rgb", "jpeg", "random", "png_header", "jpeg_header"]))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "png8":
        data = _png(rng.integers(0, 256, (h, w), dtype=np.uint8))
    elif kind == "png16":
        data = _png(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif kind == "png_rgb":
        data = _png(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif kind == "jpeg":
        data = _jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif kind == "png_header":
        data = _png_header_only(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
    elif kind == "jpeg_header":
        data = _jpeg_header_only(draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
    else:
        data = draw(st.binary(max_size=256))
    if kind != "random" and draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # truncated
    msg = CompressedImage()
    msg.format = draw(st.sampled_from(["png", "jpeg", "mono16; png compressed", "rgb8; jpeg compressed bgr8",
                                       "16UC1; compressedDepth png", ""]))  # fmt: skip
    msg.data = data
    return msg


def _decode_or_named_rejection(decode, msg) -> None:
    which = "thermal" if decode is thermal_to_array else "rgb"
    try:
        array, encoding = decode(msg, LIMIT)
    except InvalidImageError as error:
        prefix, _, reason = error.reason.partition("_")
        assert prefix == which and reason in REASONS, error.reason
        assert str(error)  # a message naming the problem
        return
    assert isinstance(array, np.ndarray) and array.size > 0 and array.nbytes <= LIMIT
    assert array.shape[:2] == (array.shape[0], array.shape[1]) and encoding in ENCODINGS


@FUZZ
@given(raw_images())
def test_any_image_decodes_or_is_rejected_with_a_reason(msg) -> None:
    _decode_or_named_rejection(thermal_to_array, msg)
    _decode_or_named_rejection(rgb_to_array, msg)


@FUZZ
@given(compressed_images())
def test_any_compressed_image_decodes_or_is_rejected_with_a_reason(msg) -> None:
    _decode_or_named_rejection(thermal_to_array, msg)
    _decode_or_named_rejection(rgb_to_array, msg)


# ------------------------------------------------------------------------------------------ size limit


def test_oversized_image_is_rejected_before_its_data_is_read() -> None:
    msg = Image(encoding="rgb8", width=40000, height=40000, step=120000, data=b"")  # 4.8 GB announced
    with pytest.raises(InvalidImageError) as caught:
        rgb_to_array(msg)
    assert caught.value.reason == "rgb_too_large" and "node.max_image_bytes" in str(caught.value)
    small = Image(encoding="mono8", width=1024, height=1024, step=1024, data=bytes(1024 * 1024))
    assert thermal_to_array(small, 1 << 20)[0].shape == (1024, 1024)
    with pytest.raises(InvalidImageError, match="thermal_too_large|more than the limit"):
        thermal_to_array(small, (1 << 20) - 1)


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (_png_header_only(30000, 30000, depth=16, colour=0), 30000 * 30000 * 2),
        (_png_header_only(20000, 10000, colour=6), 20000 * 10000 * 4),
        (_jpeg_header_only(65000, 60000), 65000 * 60000 * 3),
    ],
)
def test_compressed_size_comes_from_the_header_and_huge_ones_are_not_decoded(data, size, monkeypatch) -> None:
    assert compressed_header(data)[3] == size
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a))
    with pytest.raises(InvalidImageError) as caught:
        rgb_to_array(CompressedImage(format="png", data=data))
    assert caught.value.reason == "rgb_too_large" and not decoded


def test_header_of_real_files_matches_the_decoded_size() -> None:
    rng = np.random.default_rng(0)
    for array in (rng.integers(0, 65536, (7, 9), dtype=np.uint16), rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)):
        codec, w, h, size = compressed_header(_png(array))
        assert (codec, w, h, size) == ("png", array.shape[1], array.shape[0], array.nbytes)
    codec, w, h, size = compressed_header(_jpeg(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)))
    assert (codec, w, h, size) == ("jpeg", 6, 5, 90)
    assert compressed_header(b"GIF89a....") is None
