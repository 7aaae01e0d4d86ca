"""Input preparation on the bundled real pairs: encodings, deterministic thermal scaling, registration."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros.config import RegistrationConfig, ThermalConfig
from sgdfuse_ros.imaging import (
    InvalidImageError,
    ThermalScaler,
    merge_luma_chroma,
    register_thermal,
    rgb_to_float,
    split_luma_chroma,
)

PAIRS = Path(__file__).resolve().parents[1] / "samples" / "pairs"


@pytest.fixture(scope="module")
def pair():
    ir = cv2.imread(str(PAIRS / "ir" / "FLIR_04598.jpg"), cv2.IMREAD_GRAYSCALE)
    bgr = cv2.imread(str(PAIRS / "vi" / "FLIR_04598.jpg"), cv2.IMREAD_COLOR)
    return ir, bgr


def counts_from_8bit(ir: np.ndarray, low: float = 27000.0, high: float = 33000.0) -> np.ndarray:
    return np.round(low + ir.astype(np.float64) / 255.0 * (high - low)).astype(np.uint16)


def test_every_rgb_encoding_gives_the_same_rgb(pair):
    _, bgr = pair
    rgb = bgr[:, :, ::-1]
    reference = rgb_to_float(np.ascontiguousarray(rgb), "rgb8")
    assert reference.shape == (*bgr.shape[:2], 3) and reference.dtype == np.float32
    alpha = np.full(bgr.shape[:2] + (1,), 7, np.uint8)
    np.testing.assert_array_equal(rgb_to_float(bgr, "bgr8"), reference)
    np.testing.assert_array_equal(rgb_to_float(np.concatenate([rgb, alpha], 2), "rgba8"), reference)
    np.testing.assert_array_equal(rgb_to_float(np.concatenate([bgr, alpha], 2), "bgra8"), reference)
    grey = rgb_to_float(bgr[:, :, 1], "mono8")
    np.testing.assert_array_equal(grey[:, :, 0], grey[:, :, 2])


@pytest.mark.parametrize(
    ("array", "encoding", "reason"),
    [
        (np.zeros((4, 4, 3), np.uint8), "yuv422", "rgb_encoding"),
        (np.zeros((0, 4, 3), np.uint8), "rgb8", "rgb_empty"),
        (np.zeros((4, 4), np.uint8), "rgb8", "rgb_shape"),
        (np.zeros((4, 4, 3), np.uint16), "rgb8", "rgb_dtype"),
    ],
)
def test_bad_rgb_input_names_the_reason(array, encoding, reason):
    with pytest.raises(InvalidImageError) as info:
        rgb_to_float(array, encoding)
    assert info.value.reason == reason


def test_mono16_counts_with_default_range_recover_the_8bit_image(pair):
    ir, _ = pair
    scaler = ThermalScaler(ThermalConfig())
    scaled = scaler.scale(counts_from_8bit(ir), "mono16")
    np.testing.assert_allclose(scaled, ir / 255.0, atol=0.5 / 255.0)
    np.testing.assert_array_equal(scaler.scale(counts_from_8bit(ir), "16UC1"), scaled)


def test_fixed_scaling_is_not_per_frame_min_max(pair):
    """A hot object entering the frame must not change the brightness of everything else (no flicker)."""
    ir, _ = pair
    counts = counts_from_8bit(ir)
    scaler = ThermalScaler(ThermalConfig())
    before = scaler.scale(counts, "mono16")
    hot = counts.copy()
    hot[:10, :10] = 40000
    after = scaler.scale(hot, "mono16")
    np.testing.assert_array_equal(after[10:, 10:], before[10:, 10:])
    assert after[:10, :10].max() == 1.0


def test_32fc1_temperatures_and_nonfinite_rejection():
    temperatures = np.linspace(-20.0, 60.0, 80 * 60, dtype=np.float32).reshape(60, 80)
    scaled = ThermalScaler(ThermalConfig()).scale(temperatures, "32FC1")
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    np.testing.assert_allclose(scaled[temperatures == temperatures[30, 40]], (temperatures[30, 40] + 10) / 60, 1e-6)
    for bad in (np.nan, np.inf):
        broken = temperatures.copy()
        broken[5, 5] = bad
        with pytest.raises(InvalidImageError) as info:
            ThermalScaler(ThermalConfig()).scale(broken, "32FC1")
        assert info.value.reason == "thermal_nonfinite" and "NaN/Inf" in str(info.value)


def test_tracked_scaling_adapts_slowly_and_reproducibly(pair):
    ir, _ = pair
    # A camera whose scene occupies counts 29000-31000: tracking should tighten the range towards it.
    counts = counts_from_8bit(ir, 29000.0, 31000.0)
    config = ThermalConfig(scaling="tracked", tracking_rate=0.1)
    first, second = ThermalScaler(config), ThermalScaler(config)
    outputs = [first.scale(counts, "mono16") for _ in range(40)]
    repeat = [second.scale(counts, "mono16") for _ in range(40)]
    for a, b in zip(outputs, repeat, strict=True):
        np.testing.assert_array_equal(a, b)
    # Frame-to-frame change is bounded by the rate (no jump), yet contrast grows over time.
    steps = [np.abs(b - a).max() for a, b in zip(outputs[:-1], outputs[1:], strict=True)]
    assert max(steps) < 0.12
    assert outputs[-1].std() > 2.0 * outputs[0].std()
    low, high = first.current_range("mono16")
    assert 28500 < low < 29500 and 30500 < high < 31500


@pytest.mark.parametrize(
    ("array", "encoding", "reason"),
    [
        (np.zeros((4, 4), np.uint16), "bayer_rggb8", "thermal_encoding"),
        (np.zeros((4, 0), np.uint16), "mono16", "thermal_empty"),
        (np.zeros((4, 4), np.uint8), "mono16", "thermal_dtype"),
        (np.zeros((4, 4, 3), np.uint8), "mono8", "thermal_shape"),
    ],
)
def test_bad_thermal_input_names_the_reason(array, encoding, reason):
    with pytest.raises(InvalidImageError) as info:
        ThermalScaler(ThermalConfig()).scale(array, encoding)
    assert info.value.reason == reason


def test_registration_resize_and_homography(pair):
    ir, _ = pair
    thermal = ir.astype(np.float32) / 255.0
    resized = register_thermal(thermal, (240, 320), RegistrationConfig())
    assert resized.shape == (240, 320)
    assert abs(resized.mean() - thermal.mean()) < 0.01
    shift = RegistrationConfig(mode="homography", homography=[1, 0, 12, 0, 1, 5, 0, 0, 1])
    warped = register_thermal(thermal, thermal.shape, shift)
    np.testing.assert_allclose(warped[5:, 12:], thermal[:-5, :-12], atol=1e-6)
    assert (warped[:5] == 0).all() and (warped[:, :12] == 0).all()


def test_luma_chroma_round_trip_keeps_visible_colour(pair):
    _, bgr = pair
    rgb = torch.from_numpy(rgb_to_float(bgr, "bgr8")).permute(2, 0, 1)[None]
    y, chroma = split_luma_chroma(rgb)
    assert y.shape == (1, 1, *bgr.shape[:2])
    np.testing.assert_allclose(merge_luma_chroma(y, chroma).numpy(), rgb.numpy(), atol=1e-5)
    # BT.601 luma of the visible image matches OpenCV's grey conversion.
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    np.testing.assert_allclose(y[0, 0].numpy(), grey, atol=1.0 / 255.0)
