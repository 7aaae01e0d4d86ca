"""sgdfuse_ros.ros.conversion: Image/CompressedImage <-> NumPy, on crops of the bundled real pairs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from sgdfuse_ros.imaging import InvalidImageError, rgb_to_float  # noqa: E402
from sgdfuse_ros.ros.conversion import (  # noqa: E402
    ENCODINGS,
    array_to_image,
    compressed_to_array,
    copy_header,
    image_to_array,
    rgb_to_array,
    thermal_to_array,
)

pytestmark = pytest.mark.ros

PAIRS = Path(__file__).resolve().parent.parent / "samples" / "pairs"
HEADER = Header(stamp=Time(sec=1700000000, nanosec=123456789), frame_id="rgb_camera")


@pytest.fixture(scope="module")
def real_pair() -> tuple[np.ndarray, np.ndarray]:
    """FLIR_04269 (RoadScene) at 61x37: odd sizes so padding and strides are not accidentally aligned."""
    ir = cv2.imread(str(PAIRS / "ir" / "FLIR_04269.jpg"), cv2.IMREAD_GRAYSCALE)
    vi = cv2.cvtColor(cv2.imread(str(PAIRS / "vi" / "FLIR_04269.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    size = (61, 37)
    return cv2.resize(ir, size, interpolation=cv2.INTER_AREA), cv2.resize(vi, size, interpolation=cv2.INTER_AREA)


def _pixels(encoding: str, pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Real pixels in the layout of ``encoding`` (raw values spanning the dtype's range)."""
    ir, rgb = pair
    if encoding in ("mono8", "8UC1"):
        return ir.copy()
    if encoding in ("mono16", "16UC1"):
        # High and low bytes differ, so a wrong byte order cannot go unnoticed.
        return (ir.astype(np.uint16) * 256 + (255 - ir.astype(np.uint16))).astype(np.uint16)
    if encoding == "32FC1":
        return (ir.astype(np.float32) / 255.0 * 60.0 - 10.0).astype(np.float32)  # degrees C
    if encoding == "rgb8":
        return rgb.copy()
    if encoding == "bgr8":
        return rgb[:, :, ::-1].copy()
    alpha = np.full(ir.shape + (1,), 200, np.uint8)
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2)
    return np.concatenate([rgb[:, :, ::-1], alpha], axis=2)  # bgra8


def _raw_image(array: np.ndarray, encoding: str, *, pad: int = 0, big_endian: bool = False) -> Image:
    """Hand-built Image message with ``pad`` filler bytes per row and the given byte order."""
    dtype, channels = ENCODINGS[encoding]
    wire = array.astype(dtype.newbyteorder(">" if big_endian else "<"))
    height, width = array.shape[:2]
    row = width * channels * dtype.itemsize
    rows = wire.reshape(height, row // dtype.itemsize).view(np.uint8).reshape(height, row)
    padded = np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=row + pad)
    msg.is_bigendian = int(big_endian)
    msg.header = HEADER
    msg.data = padded.tobytes()
    return msg


def test_header_is_copied_not_aliased() -> None:
    header = copy_header(HEADER)
    assert header is not HEADER and header.stamp is not HEADER.stamp
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (1700000000, 123456789, "rgb_camera")


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1", "32FC1", "rgb8", "bgr8", "rgba8", "bgra8"])
def test_round_trip_every_encoding(encoding: str, real_pair) -> None:
    pixels = _pixels(encoding, real_pair)
    msg = array_to_image(pixels, encoding, HEADER)
    dtype, channels = ENCODINGS[encoding]
    assert msg.encoding == encoding and (msg.height, msg.width) == pixels.shape[:2]
    assert msg.step == pixels.shape[1] * channels * dtype.itemsize and len(msg.data) == msg.step * msg.height
    assert msg.header.stamp.nanosec == HEADER.stamp.nanosec and msg.header.frame_id == "rgb_camera"
    back = image_to_array(msg)
    assert back.dtype == dtype and back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)
    # The role-specific converters accept exactly their encodings and return the same pixels.
    thermal_ok = encoding in ("mono8", "8UC1", "mono16", "16UC1", "32FC1")
    convert = thermal_to_array if thermal_ok else rgb_to_array
    array, reported = convert(msg)
    assert reported == encoding
    np.testing.assert_array_equal(array, pixels)


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "32FC1", "rgb8", "bgra8"])
@pytest.mark.parametrize("pad", [1, 3, 64])
def test_step_padding_is_skipped(encoding: str, pad: int, real_pair) -> None:
    pixels = _pixels(encoding, real_pair)
    msg = _raw_image(pixels, encoding, pad=pad)
    np.testing.assert_array_equal(image_to_array(msg), pixels)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "32FC1"])
@pytest.mark.parametrize("pad", [0, 5])
def test_big_endian_is_swapped(encoding: str, pad: int, real_pair) -> None:
    pixels = _pixels(encoding, real_pair)
    big = _raw_image(pixels, encoding, pad=pad, big_endian=True)
    little = _raw_image(pixels, encoding, pad=pad, big_endian=False)
    assert big.data != little.data  # really different bytes on the wire
    for msg in (big, little):
        out = image_to_array(msg)
        assert out.dtype.isnative
        np.testing.assert_array_equal(out, pixels)


def test_is_bigendian_ignored_for_8_bit(real_pair) -> None:
    pixels = _pixels("rgb8", real_pair)
    np.testing.assert_array_equal(image_to_array(_raw_image(pixels, "rgb8", big_endian=True)), pixels)


def test_bgr8_message_decodes_to_the_same_colours_as_rgb8(real_pair) -> None:
    rgb_msg = array_to_image(_pixels("rgb8", real_pair), "rgb8", HEADER)
    bgr_msg = array_to_image(_pixels("bgr8", real_pair), "bgr8", HEADER)
    a, enc_a = rgb_to_array(rgb_msg)
    b, enc_b = rgb_to_array(bgr_msg)
    np.testing.assert_array_equal(rgb_to_float(a, enc_a), rgb_to_float(b, enc_b))


def _bad(msg: Image, **changes) -> Image:
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    ("convert", "encoding", "changes", "reason", "says"),
    [
        (thermal_to_array, "mono8", {"encoding": "yuv422"}, "thermal_encoding", "yuv422"),
        (thermal_to_array, "rgb8", {}, "thermal_encoding", "rgb8"),
        (rgb_to_array, "mono16", {}, "rgb_encoding", "mono16"),
        (rgb_to_array, "rgb8", {"encoding": "bayer_rggb8"}, "rgb_encoding", "bayer_rggb8"),
        (thermal_to_array, "mono16", {"width": 0, "step": 0, "data": b""}, "thermal_empty", "zero width"),
        (rgb_to_array, "rgb8", {"height": 0, "data": b""}, "rgb_empty", "zero width or height"),
        (thermal_to_array, "mono16", {"step": 61}, "thermal_step", "smaller than width x bytes per pixel"),
        (rgb_to_array, "rgb8", {"step": 100}, "rgb_step", "183"),
        (thermal_to_array, "mono16", {"height": 38}, "thermal_data_size", "expected step x height"),
        (rgb_to_array, "rgb8", {"data": b"\x00" * 100}, "rgb_data_size", "100 bytes"),
    ],
)
def test_invalid_images_raise_with_reason(convert, encoding, changes, reason, says, real_pair) -> None:
    msg = _bad(array_to_image(_pixels(encoding, real_pair), encoding, HEADER), **changes)
    with pytest.raises(InvalidImageError) as caught:
        convert(msg)
    assert caught.value.reason == reason
    assert says in str(caught.value)


def test_extra_data_is_rejected(real_pair) -> None:
    msg = array_to_image(_pixels("mono8", real_pair), "mono8", HEADER)
    msg.data = bytes(msg.data) + b"\x00"
    with pytest.raises(InvalidImageError) as caught:
        thermal_to_array(msg)
    assert caught.value.reason == "thermal_data_size"


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nonfinite_32fc1_thermal_is_rejected(bad_value: float, real_pair) -> None:
    pixels = _pixels("32FC1", real_pair)
    pixels[5, 7] = bad_value
    pixels[20, 30] = bad_value
    with pytest.raises(InvalidImageError) as caught:
        thermal_to_array(array_to_image(pixels, "32FC1", HEADER))
    assert caught.value.reason == "thermal_nonfinite"
    assert "2 NaN/Inf" in str(caught.value)


def _compressed(data: bytes, fmt: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.header = HEADER
    msg.data = data
    return msg


def test_compressed_16_bit_png_thermal_keeps_16_bits(real_pair) -> None:
    counts = (27000 + _pixels("mono8", real_pair).astype(np.uint16) * 23).astype(np.uint16)
    ok, png = cv2.imencode(".png", counts)
    assert ok
    array, encoding = thermal_to_array(_compressed(png.tobytes(), "mono16; png compressed"))
    assert encoding == "mono16" and array.dtype == np.uint16
    np.testing.assert_array_equal(array, counts)
    array, encoding = thermal_to_array(_compressed(png.tobytes(), "16UC1; png compressed"))
    assert encoding == "16UC1"


def test_compressed_jpeg_rgb_decodes_to_bgr(real_pair) -> None:
    rgb = _pixels("rgb8", real_pair)
    ok, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    array, encoding = rgb_to_array(_compressed(jpeg.tobytes(), "rgb8; jpeg compressed bgr8"))
    assert encoding == "bgr8" and array.shape == rgb.shape
    assert np.abs(array[:, :, ::-1].astype(int) - rgb.astype(int)).mean() < 4.0  # JPEG loss only


@pytest.mark.parametrize(
    ("data", "fmt", "reason"),
    [
        (b"not an image at all", "jpeg", "rgb_decode"),
        (b"", "rgb8; jpeg compressed bgr8", "rgb_decode"),
        (b"\x00" * 64, "16UC1; compressedDepth png", "rgb_format"),
    ],
)
def test_compressed_invalid(data: bytes, fmt: str, reason: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        compressed_to_array(_compressed(data, fmt), which="rgb")
    assert caught.value.reason == reason


def test_compressed_colour_is_not_a_thermal_image(real_pair) -> None:
    ok, png = cv2.imencode(".png", _pixels("bgr8", real_pair))
    with pytest.raises(InvalidImageError) as caught:
        thermal_to_array(_compressed(png.tobytes(), "bgr8; png compressed"))
    assert caught.value.reason == "thermal_encoding"


def test_array_to_image_rejects_mismatched_arrays(real_pair) -> None:
    with pytest.raises(ValueError, match="dtype"):
        array_to_image(_pixels("mono16", real_pair), "mono8", HEADER)
    with pytest.raises(ValueError, match="shape"):
        array_to_image(_pixels("rgb8", real_pair), "mono8", HEADER)
    with pytest.raises(ValueError, match="encoding"):
        array_to_image(_pixels("rgb8", real_pair), "yuv422", HEADER)
