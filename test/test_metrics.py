"""Tests for sgdfuse_ros.metrics: analytic cases, literal re-computations on small images, and a
per-image regression on the bundled MSRS pairs against test/data/metrics_reference.json."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA

from sgdfuse_ros import metrics as M

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO / "samples" / "pairs"
DATA = Path(__file__).resolve().parent / "data"
REFERENCE = json.loads((DATA / "metrics_reference.json").read_text())
SHARED_MSRS = SHARED_DATA / "msrs"
SHARED_SEAFUSION = SHARED_DATA / "peers" / "msrs" / "SeAFusion"

# Qabf sigmoid constants (Xydeas & Petrovic, as in the evaluator).
TG, KG, DG, TA, KA, DA = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8


def read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"cannot read {path}"
    return M.to_gray(img)


@pytest.fixture(scope="module")
def pair_537() -> tuple[np.ndarray, np.ndarray]:
    return read_gray(PAIRS / "ir" / "00537D.png"), read_gray(PAIRS / "vi" / "00537D.png")


@pytest.fixture(scope="module")
def small(pair_537: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real 64x72 crops (IR, VIS, pixel max) for the literal re-computations, which are slow."""
    ir, vis = pair_537
    a = ir[200:264, 300:372].copy()
    b = vis[200:264, 300:372].copy()
    return a, b, np.maximum(a, b)


# ----------------------------------------------------------------------------- literal references


def conv2d(img: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """2-D convolution by its definition (kernel flipped, zero fill), 'full', 'same' or 'valid'."""
    h, w = img.shape
    kh, kw = kernel.shape
    full = np.zeros((h + kh - 1, w + kw - 1))
    for m in range(kh):
        for n in range(kw):
            full[m : m + h, n : n + w] += kernel[m, n] * img
    if mode == "full":
        return full
    if mode == "same":
        top, left = (kh - 1) // 2, (kw - 1) // 2
        return full[top : top + h, left : left + w]
    return full[kh - 1 : h, kw - 1 : w]


def viff_literal(ref: np.ndarray, dist: np.ndarray) -> float:
    """Multi-scale pixel VIF with a full (non-separable) MATLAB-style Gaussian window per scale."""
    num = den = 0.0
    eps, sigma_nsq = 1e-10, 2.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        sd = n / 5.0
        y, x = np.mgrid[-(n - 1) / 2 : (n + 1) / 2, -(n - 1) / 2 : (n + 1) / 2]
        win = np.exp(-(x * x + y * y) / (2 * sd * sd))
        win[win < np.finfo(float).eps * win.max()] = 0
        win /= win.sum()
        if scale > 1:
            ref = conv2d(ref, win, "valid")[::2, ::2]
            dist = conv2d(dist, win, "valid")[::2, ::2]
        mu1, mu2 = conv2d(ref, win, "valid"), conv2d(dist, win, "valid")
        s1 = np.maximum(conv2d(ref * ref, win, "valid") - mu1**2, 0)
        s2 = np.maximum(conv2d(dist * dist, win, "valid") - mu2**2, 0)
        s12 = conv2d(ref * dist, win, "valid") - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        for i in np.ndindex(g.shape):  # per-pixel rules, in the evaluator's order
            if s1[i] < eps:
                g[i], sv[i], s1[i] = 0, s2[i], 0
            if s2[i] < eps:
                g[i], sv[i] = 0, 0
            if g[i] < 0:
                sv[i], g[i] = s2[i], 0
            if sv[i] <= eps:
                sv[i] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    return 1.0 if math.isnan(num / den) else num / den


def ssim_literal(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """Mean over every 7x7 window inside the image, with sample (N-1) statistics."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - 6):
        for j in range(x.shape[1] - 6):
            a = x[i : i + 7, j : j + 7].ravel()
            b = y[i : i + 7, j : j + 7].ravel()
            cov = np.cov(a, b, ddof=1)
            ua, ub = a.mean(), b.mean()
            vals.append(
                (2 * ua * ub + c1) * (2 * cov[0, 1] + c2) / ((ua**2 + ub**2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
            )
    return float(np.mean(vals))


def qabf_literal(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    hy = np.array([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
    hx = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])

    def grads(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx, sy = conv2d(img, hx, "same"), conv2d(img, hy, "same")
        with np.errstate(divide="ignore", invalid="ignore"):
            ang = np.where(sx == 0, math.pi / 2, np.arctan(sy / sx))
        return np.hypot(sx, sy), ang

    def q(gs: np.ndarray, as_: np.ndarray, gf: np.ndarray, af: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(gs > gf, gf / gs, np.where(gs == gf, gf, gs / gf))
        orient = 1 - np.abs(as_ - af) / (math.pi / 2)
        return TG / (1 + np.exp(KG * (ratio - DG))) * TA / (1 + np.exp(KA * (orient - DA)))

    (ga, aa), (gb, ab), (gf, af) = grads(a), grads(b), grads(f)
    return float(np.sum(q(ga, aa, gf, af) * ga + q(gb, ab, gf, af) * gb) / np.sum(ga + gb))


def mi_literal(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information in nats with every distinct value its own bin (pure Python counting)."""
    xs, ys = x.ravel().tolist(), y.ravel().tolist()
    n = len(xs)
    cx, cy, cxy = Counter(xs), Counter(ys), Counter(zip(xs, ys, strict=True))
    return sum(c / n * math.log(n * c / (cx[u] * cy[v])) for (u, v), c in cxy.items())


# ----------------------------------------------------------------------------- analytic cases


def test_constant_image_has_zero_information() -> None:
    img = np.full((48, 64), 117.0)
    assert M.EN(img) == 0.0
    assert M.SD(img) == 0.0
    assert M.SF(img) == 0.0
    assert M.AG(img) == 0.0


def test_entropy_of_known_histograms() -> None:
    halves = np.zeros((32, 32))
    halves[:, 16:] = 200.0
    assert M.EN(halves) == pytest.approx(1.0, abs=1e-12)
    quarters = np.repeat(np.array([0.0, 50.0, 100.0, 250.0]), 64).reshape(16, 16)
    assert M.EN(quarters) == pytest.approx(2.0, abs=1e-12)
    uniform = np.arange(256, dtype=np.float64).reshape(16, 16)
    assert M.EN(uniform) == pytest.approx(8.0, abs=1e-12)
    # Non-integer values are rounded to grey levels before counting (0.4 -> 0, 199.6 -> 200).
    assert M.EN(halves + np.where(halves > 0, -0.4, 0.4)) == pytest.approx(1.0, abs=1e-12)


def test_sd_sf_ag_on_simple_patterns() -> None:
    halves = np.zeros((32, 32))
    halves[:, 16:] = 255.0
    assert M.SD(halves) == pytest.approx(127.5)
    ramp = np.tile(np.arange(40, dtype=np.float64) * 3.0, (30, 1))  # +3 per column
    assert M.SF(ramp) == pytest.approx(3.0)
    assert M.AG(ramp) == pytest.approx(3.0 / math.sqrt(2.0))
    # AG uses one-sided differences on the border: a single step column gives known values.
    step = np.zeros((4, 4))
    step[:, 2:] = 10.0
    gx = np.array([0.0, 5.0, 5.0, 0.0])  # columns: (x1-x0), (x2-x0)/2, (x3-x1)/2, (x3-x2)
    assert M.AG(step) == pytest.approx(np.mean(np.abs(gx) / math.sqrt(2.0)))


def test_mutual_information_identities(pair_537: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = pair_537
    en_nats = M.EN(ir) * math.log(2.0)
    assert M.MI(ir, ir, ir) == pytest.approx(2.0 * en_nats, rel=1e-12)
    # A one-to-one relabelling (here to half-integer values) carries the same information.
    assert M.MI(ir / 2.0, ir, ir) == pytest.approx(2.0 * en_nats, rel=1e-12)
    # A constant fused image shares no information with anything.
    assert M.MI(np.full_like(ir, 9.0), ir, vis) == pytest.approx(0.0, abs=1e-12)
    assert M.MI(vis, ir, ir) == pytest.approx(M.MI(ir, vis, vis), rel=1e-12)  # I(A; B) is symmetric


def test_ssim_of_identical_images(pair_537: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = pair_537
    assert M.ssim_single(vis, vis) == pytest.approx(1.0, abs=1e-12)
    assert M.SSIM(ir, ir, ir) == pytest.approx(2.0, abs=1e-12)
    assert M.ssim_single(ir, vis) < 0.9


def test_vif_of_identical_images_and_constant_reference(pair_537: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = pair_537
    assert M.VIF(vis, vis, vis) == pytest.approx(2.0, abs=1e-6)
    # Constant reference: 0 / 0, which the evaluator maps to 1.
    assert M.viff_single(np.full((80, 80), 50.0), vis[:80, :80]) == 1.0
    # Contrast stretch of the reference gives VIF > 1 (the metric rewards enhancement).
    assert M.viff_single(vis, 1.5 * (vis - vis.mean()) + vis.mean()) > 1.0


def test_scd_analytic(pair_537: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = pair_537
    # F = A + B: F - B = A and F - A = B, so both correlations are 1.
    assert M.SCD(ir + vis, ir, vis) == pytest.approx(2.0, abs=1e-12)
    # F = A = B: F - A is constant, the correlation is undefined (NaN, as in the evaluator).
    assert math.isnan(M.SCD(ir, ir, ir))


def test_qabf_when_fused_equals_both_sources(pair_537: tuple[np.ndarray, np.ndarray]) -> None:
    ir, _ = pair_537
    # Independent gradient: OpenCV's Sobel (correlation; the sign does not change the magnitude).
    gx = cv2.Sobel(ir, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_CONSTANT)
    gy = cv2.Sobel(ir, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_CONSTANT)
    g = np.hypot(gx, gy)
    # Equal gradients: orientation term at AAF = 1, strength term at the evaluator's ratio (= g_F).
    q = TG / (1 + np.exp(KG * (g - DG))) * TA / (1 + np.exp(KA * (1.0 - DA)))
    expected = float(np.sum(q * g) / np.sum(g))
    got = M.Qabf(ir, ir, ir)
    assert got == pytest.approx(expected, rel=1e-12)
    assert 0.974 < got < 0.976


def test_pixel_maximum_beats_average_on_edges(pair_537: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = pair_537
    assert M.Qabf(np.maximum(ir, vis), ir, vis) > M.Qabf(np.round((ir + vis) / 2), ir, vis)


# ----------------------------------------------------------------------------- literal re-computations


def test_vif_matches_literal_definition(small: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, f = small
    assert M.viff_single(a, f) == pytest.approx(viff_literal(a, f), rel=1e-9)
    assert M.VIF(f, a, b) == pytest.approx(viff_literal(a, f) + viff_literal(b, f), rel=1e-9)


def test_ssim_matches_literal_definition(small: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, f = small
    a, b, f = a[:24, :30], b[:24, :30], f[:24, :30]
    assert M.ssim_single(f, a) == pytest.approx(ssim_literal(f, a), rel=1e-9)
    assert M.SSIM(f, a, b, data_range=2.0) == pytest.approx(ssim_literal(f, a, 2.0) + ssim_literal(f, b, 2.0), rel=1e-9)


def test_qabf_matches_literal_definition(small: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, f = small
    assert M.Qabf(f, a, b) == pytest.approx(qabf_literal(f, a, b), rel=1e-12)
    avg = np.round((a + b) / 2)
    assert M.Qabf(avg, a, b) == pytest.approx(qabf_literal(avg, a, b), rel=1e-12)


def test_mi_matches_literal_definition(small: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, f = small
    assert M.MI(f, a, b) == pytest.approx(mi_literal(f, a) + mi_literal(f, b), rel=1e-12)
    half = (a + b) / 2  # half-integer values: each distinct value is its own bin
    assert M.MI(half, a, b) == pytest.approx(mi_literal(half, a) + mi_literal(half, b), rel=1e-12)


# ----------------------------------------------------------------------------- input handling


def test_to_gray_matches_float_bt601_and_keeps_gray_levels() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    exact = 0.299 * r + 0.587 * g + 0.114 * b
    not_a_tie = np.abs(exact - np.floor(exact) - 0.5) > 1e-3
    got = M.to_gray(bgr)
    assert got.dtype == np.float64 and got.shape == (50, 60)
    assert np.array_equal(got[not_a_tie], np.round(exact[not_a_tie]))
    gray = bgr[:, :, 1]
    assert np.array_equal(M.to_gray(gray), gray.astype(np.float64))
    assert np.array_equal(M.to_gray(cv2.merge([gray, gray, gray])), gray.astype(np.float64))
    with pytest.raises(TypeError):
        M.to_gray(bgr.astype(np.uint16))


def test_evaluate_accepts_gray_and_bgr_inputs() -> None:
    ir_gray = cv2.imread(str(PAIRS / "ir" / "00004N.png"), cv2.IMREAD_GRAYSCALE)
    ir_bgr = cv2.imread(str(PAIRS / "ir" / "00004N.png"), cv2.IMREAD_COLOR)
    vi_bgr = cv2.imread(str(PAIRS / "vi" / "00004N.png"), cv2.IMREAD_COLOR)
    crop = (slice(100, 228), slice(200, 360))
    fused = np.maximum(ir_gray, cv2.cvtColor(vi_bgr, cv2.COLOR_BGR2GRAY))
    r1 = M.evaluate(fused[crop], ir_gray[crop], vi_bgr[crop])
    r2 = M.evaluate(cv2.merge([fused, fused, fused])[crop], ir_bgr[crop], vi_bgr[crop])
    assert tuple(r1) == M.METRIC_NAMES
    assert r1 == r2
    with pytest.raises(ValueError, match="shape mismatch"):
        M.evaluate(fused[crop], ir_gray[crop], vi_bgr[:10, :10])


# ----------------------------------------------------------------------------- per-image regression


def _check_against_reference(group: str, name: str, got: dict[str, float]) -> None:
    want = REFERENCE["values"][group][name]
    for metric in M.METRIC_NAMES:
        assert got[metric] == pytest.approx(want[metric], rel=1e-7, abs=1e-9), (group, name, metric)


@pytest.mark.parametrize("name", ["00004N", "00537D"])
def test_regression_on_bundled_pairs(name: str) -> None:
    ir = read_gray(PAIRS / "ir" / f"{name}.png")
    vis = read_gray(PAIRS / "vi" / f"{name}.png")
    _check_against_reference("pixel maximum", name, M.evaluate(np.maximum(ir, vis), ir, vis))
    _check_against_reference("pixel average", name, M.evaluate(np.round((ir + vis) / 2), ir, vis))
    seafusion = cv2.imread(str(DATA / "peers" / "SeAFusion" / f"{name}.png"), cv2.IMREAD_COLOR)
    _check_against_reference("SeAFusion", name, M.evaluate(seafusion, ir, vis))


@pytest.mark.skipif(not SHARED_MSRS.is_dir(), reason="needs ../shared/data/msrs (or SGDFUSE_SHARED_DATA)")
def test_regression_on_workplace_pair() -> None:
    name = "00055D"
    ir = read_gray(SHARED_MSRS / "ir" / f"{name}.png")
    vis = read_gray(SHARED_MSRS / "vi" / f"{name}.png")
    _check_against_reference("pixel maximum", name, M.evaluate(np.maximum(ir, vis), ir, vis))
    _check_against_reference("pixel average", name, M.evaluate(np.round((ir + vis) / 2), ir, vis))
    fused = cv2.imread(str(SHARED_SEAFUSION / f"{name}.png"), cv2.IMREAD_COLOR)
    _check_against_reference("SeAFusion", name, M.evaluate(fused, ir, vis))
