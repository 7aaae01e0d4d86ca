"""No-reference and reference-based image-fusion metrics: EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM.

The definitions follow the Python ``Evaluator`` used by CDDFuse / VIF-Benchmark style repositories
(``utils/Evaluator.py``), so that numbers are comparable with tables published with those methods.
That evaluator depends on scipy, scikit-learn and scikit-image; this module re-implements the same
arithmetic with numpy and OpenCV only (vectorised, float64). Where the evaluator has quirks they are
kept on purpose and documented in the function concerned (see also docs/metrics.md).

Conventions
-----------
* Every metric takes grayscale ``float64`` arrays of shape ``(H, W)`` with values in ``[0, 255]``
  (integer-valued for the figures to be comparable: the evaluator works on rounded grey levels).
  ``fused`` is the fused image ``F``; ``ir`` (``A``) and ``vis`` (``B``) are the source images.
* Use :func:`to_gray` to turn an 8-bit image (grayscale, or BGR as returned by ``cv2.imread``) into
  that representation exactly as the evaluator does, and :func:`evaluate` for the whole set.
* Logarithms: EN in bits (log2); MI in nats (natural log, as ``sklearn.metrics.mutual_info_score``).
* The metric functions carry the published upper-case names (``EN``, ``Qabf``, ...), hence the
  ``noqa: N802`` markers; ``getattr(metrics, name)`` works for every name in :data:`METRIC_NAMES`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "AG",
    "EN",
    "METRIC_NAMES",
    "MI",
    "SCD",
    "SD",
    "SF",
    "SSIM",
    "VIF",
    "Qabf",
    "evaluate",
    "ssim_single",
    "to_gray",
    "viff_single",
]

#: Metric keys of :func:`evaluate`, in the order used in tables.
METRIC_NAMES: tuple[str, ...] = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM")

#: SSIM ``data_range`` (sets ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2``). 255 reproduces the reference
#: table (docs/metrics.md). Calling the evaluator's ``ssim(F, A)`` on float images without a
#: ``data_range`` gives L = 2 with older scikit-image (float dtype range [-1, 1]) and about 30 %
#: lower sums on MSRS; recent scikit-image refuses that call.
SSIM_DATA_RANGE: float = 255.0


# --------------------------------------------------------------------------------------- input handling


def to_gray(image: np.ndarray) -> np.ndarray:
    """Grayscale ``float64`` image in ``[0, 255]`` as the reference evaluator reads it.

    The evaluator reads every file with ``cv2.imread`` (3-channel BGR, also for grayscale PNGs),
    converts it to ``float32``, applies ``cv2.COLOR_BGR2GRAY`` (``0.299 R + 0.587 G + 0.114 B``
    in floating point) and rounds (half to even). Converting in float and then rounding differs from
    OpenCV's fixed-point ``uint8`` conversion for a few pixels, hence the detour through float32.

    Args:
        image: ``uint8`` array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA
            (alpha is dropped, as ``cv2.imread`` does by default). A 2-D floating-point array is
            taken as already grayscale in ``[0, 255]`` and returned as ``float64`` unchanged.

    Returns:
        ``float64`` array ``(H, W)`` with integer values in ``[0, 255]`` (for ``uint8`` input).
    """
    arr = np.asarray(image)
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64, copy=False)
    if arr.dtype != np.uint8:
        raise TypeError(f"to_gray expects uint8 images (or a 2-D float array), got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        # Equal B, G, R channels: the weighted sum is the value itself up to float32 rounding, which
        # the evaluator's np.round removes again, so the grey level is unchanged.
        return arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"to_gray expects (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}")
    bgr = np.ascontiguousarray(arr[:, :, :3]).astype(np.float32)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return np.round(gray).astype(np.float64)


def _check_one(img: np.ndarray, name: str = "image") -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D grayscale array (H, W), got shape {arr.shape}")
    return arr


def _check_three(
    fused: np.ndarray,
    ir: np.ndarray,
    vis: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = _check_one(fused, "fused")
    a = _check_one(ir, "ir")
    b = _check_one(vis, "vis")
    if not (f.shape == a.shape == b.shape):
        raise ValueError(f"shape mismatch: fused {f.shape}, ir {a.shape}, vis {b.shape}")
    return f, a, b


# --------------------------------------------------------------------------------------- single-image


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def EN(fused: np.ndarray) -> float:  # noqa: N802
    """Shannon entropy of the 256-bin grey-level histogram, in bits.

    The image is rounded to integer grey levels first (values are clipped to ``[0, 255]``; the
    evaluator's ``np.uint8`` cast would wrap out-of-range values instead).

    Range: ``[0, 8]``; 0 for a constant image, 8 for a uniform histogram over all 256 levels.
    """
    f = _check_one(fused, "fused")
    levels = np.clip(np.round(f), 0, 255).astype(np.intp).ravel()
    return _entropy_bits(np.bincount(levels, minlength=256))


def SD(fused: np.ndarray) -> float:  # noqa: N802
    """Standard deviation of the grey levels (population, ``ddof=0``).

    Range: ``[0, 127.5]`` for images in ``[0, 255]``; 0 for a constant image.
    """
    return float(np.std(_check_one(fused, "fused")))


def SF(fused: np.ndarray) -> float:  # noqa: N802
    """Spatial frequency ``sqrt(RF^2 + CF^2)``.

    ``RF^2`` is the mean squared difference between horizontal neighbours and ``CF^2`` the mean squared
    difference between vertical neighbours (each averaged over its own number of differences).

    Range: ``[0, 255 * sqrt(2)]``; 0 for a constant image.
    """
    f = _check_one(fused, "fused")
    rf2 = np.mean(np.diff(f, axis=1) ** 2) if f.shape[1] > 1 else 0.0
    cf2 = np.mean(np.diff(f, axis=0) ** 2) if f.shape[0] > 1 else 0.0
    return float(np.sqrt(rf2 + cf2))


def AG(fused: np.ndarray) -> float:  # noqa: N802
    """Average gradient ``mean(sqrt((Gx^2 + Gy^2) / 2))``.

    ``Gx``/``Gy`` are central differences ``(x[i+1] - x[i-1]) / 2`` inside the image and one-sided
    differences on the first and last column/row (``numpy.gradient`` with unit spacing).

    Range: ``[0, 255]``; 0 for a constant image. Needs ``H, W >= 2``.
    """
    f = _check_one(fused, "fused")
    if min(f.shape) < 2:
        raise ValueError(f"AG needs an image of at least 2x2 pixels, got {f.shape}")
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# --------------------------------------------------------------------------------------- mutual information


def _labels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense labels ``0..n-1`` of the distinct values of ``x`` (as scikit-learn treats them)."""
    flat = x.ravel()
    if flat.size and flat.min() >= 0 and flat.max() <= 255 and np.array_equal(flat, np.round(flat)):
        # Fast path for integer grey levels: the level itself is the label (empty bins are harmless).
        return flat.astype(np.intp), 256
    uniq, inv = np.unique(flat, return_inverse=True)
    return inv.ravel().astype(np.intp), int(uniq.size)


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information (nats) between the value labels of two equally-shaped arrays."""
    lx, nx = _labels(x)
    ly, ny = _labels(y)
    joint = np.bincount(lx * ny + ly, minlength=nx * ny).reshape(nx, ny).astype(np.float64)
    n = joint.sum()
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)
    ix, iy = np.nonzero(joint)
    pxy = joint[ix, iy]
    # sum p_xy * log(p_xy / (p_x p_y)) with counts: log(n * c_xy / (c_x c_y)).
    terms = pxy / n * (np.log(pxy) + math.log(n) - np.log(px[ix]) - np.log(py[iy]))
    # As scikit-learn: rounding-level terms are zeroed and the sum is clipped at 0 (so that e.g. a
    # constant image gets exactly 0).
    terms[np.abs(terms) < np.finfo(np.float64).eps] = 0.0
    return max(float(np.sum(terms)), 0.0)


def MI(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:  # noqa: N802
    """Mutual information ``MI(F, A) + MI(F, B)`` in nats.

    Each term is ``sklearn.metrics.mutual_info_score`` on the raw pixel values: every distinct value
    is its own histogram bin (256 bins for integer grey levels), natural logarithm.

    Range: ``[0, H(A) + H(B)]`` with ``H`` in nats (``<= 2 ln 256 ~= 11.09``); ``MI(A, A, A)`` is
    ``2 H(A)``.
    """
    f, a, b = _check_three(fused, ir, vis)
    return _mutual_information(f, a) + _mutual_information(f, b)


# --------------------------------------------------------------------------------------- SCD


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    xd = x - x.mean()
    yd = y - y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(xd * yd) / np.sqrt(np.sum(xd * xd) * np.sum(yd * yd)))


def SCD(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:  # noqa: N802
    """Sum of the correlations of differences: ``corr(F - B, A) + corr(F - A, B)``.

    Range: ``[-2, 2]`` (Pearson correlations). NaN when a term is undefined, i.e. when ``A``, ``B``,
    ``F - A`` or ``F - B`` is constant (the evaluator divides 0 by 0 there too).
    """
    f, a, b = _check_three(fused, ir, vis)
    return _corr(a, f - b) + _corr(b, f - a)


# --------------------------------------------------------------------------------------- VIF (VIFF)


def _gaussian_1d(n: int) -> np.ndarray:
    """1-D factor of the evaluator's ``n x n`` MATLAB-style Gaussian window (sigma = n / 5).

    The 2-D window ``exp(-(x^2 + y^2) / (2 sd^2))`` normalised to unit sum is the outer product of this
    normalised 1-D window with itself (the evaluator's "< eps * max" zeroing never triggers for the
    sizes used: the corner value is ``exp(-12.5) * ...`` >> eps).
    """
    sd = n / 5.0
    r = (n - 1) / 2.0
    x = np.arange(-r, r + 1.0)
    g = np.exp(-(x * x) / (2.0 * sd * sd))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``convolve2d(img, outer(g, g), mode='valid')`` for a symmetric separable kernel."""
    k = g.size
    h, w = img.shape
    if h < k or w < k:
        return np.zeros((max(h - k + 1, 0), max(w - k + 1, 0)))
    rows = g[0] * img[0 : h - k + 1]
    for i in range(1, k):
        rows = rows + g[i] * img[i : h - k + 1 + i]
    out = g[0] * rows[:, 0 : w - k + 1]
    for j in range(1, k):
        out = out + g[j] * rows[:, j : w - k + 1 + j]
    return out


def viff_single(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain VIF (Sheikh & Bovik 2006, ``vifp_mscale``) of ``dist`` against ``ref``.

    Four scales; at scale ``s`` a Gaussian window of size ``2^(5-s) + 1`` (sigma = size / 5) computes
    local statistics ('valid' region only), and from scale 2 on both images are first low-passed with
    that window and decimated by 2. ``sigma_nsq = 2``. Returns ``sum(num) / sum(den)`` over scales,
    and 1.0 when that is NaN (e.g. constant ``ref``), as the evaluator does.

    Range: ``[0, inf)``; 1 for ``dist == ref``, above 1 for contrast enhancement.
    """
    r = _check_one(ref, "ref")
    d = _check_one(dist, "dist")
    if r.shape != d.shape:
        raise ValueError(f"shape mismatch: ref {r.shape}, dist {d.shape}")
    sigma_nsq = 2.0
    eps = 1e-10
    num = 0.0
    den = 0.0
    for scale in range(1, 5):
        g = _gaussian_1d(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            r = _filter_valid(r, g)[::2, ::2]
            d = _filter_valid(d, g)[::2, ::2]
        mu1 = _filter_valid(r, g)
        mu2 = _filter_valid(d, g)
        sigma1_sq = _filter_valid(r * r, g) - mu1 * mu1
        sigma2_sq = _filter_valid(d * d, g) - mu2 * mu2
        sigma12 = _filter_valid(r * d, g) - mu1 * mu2

        sigma1_sq = np.maximum(sigma1_sq, 0.0)
        sigma2_sq = np.maximum(sigma2_sq, 0.0)
        gain = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - gain * sigma12

        # Same order of special cases as the evaluator (later rules override earlier ones).
        low1 = sigma1_sq < eps
        gain[low1] = 0.0
        sv_sq[low1] = sigma2_sq[low1]
        sigma1_sq[low1] = 0.0
        low2 = sigma2_sq < eps
        gain[low2] = 0.0
        sv_sq[low2] = 0.0
        neg = gain < 0
        sv_sq[neg] = sigma2_sq[neg]
        gain[neg] = 0.0
        sv_sq[sv_sq <= eps] = eps

        num += float(np.sum(np.log10(1.0 + gain * gain * sigma1_sq / (sv_sq + sigma_nsq))))
        den += float(np.sum(np.log10(1.0 + sigma1_sq / sigma_nsq)))
    with np.errstate(divide="ignore", invalid="ignore"):
        vifp = np.float64(num) / np.float64(den)
    return 1.0 if np.isnan(vifp) else float(vifp)


def VIF(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:  # noqa: N802
    """Visual information fidelity for fusion: ``VIFF(A, F) + VIFF(B, F)`` (see :func:`viff_single`).

    This is the evaluator's "VIFF" (a sum of two multi-scale pixel-domain VIF terms), not Han et al.'s
    VIFF for fusion. Range: ``[0, inf)``; 2 for ``F = A = B``; typically 0.5-1.2 for fused images.
    """
    f, a, b = _check_three(fused, ir, vis)
    return viff_single(a, f) + viff_single(b, f)


# --------------------------------------------------------------------------------------- Qabf


def _sobel_same(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``convolve2d(img, K, mode='same')`` (zero padding) for the evaluator's two Sobel kernels.

    ``sx`` uses ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]`` and ``sy`` uses ``[[1, 2, 1], [0, 0, 0],
    [-1, -2, -1]]``, both as true convolutions (kernel flipped).
    """
    p = np.pad(img, 1)
    # Convolution with K is correlation with K rotated by 180 degrees.
    left, right = p[:, :-2], p[:, 2:]
    colx = left - right  # conv with [-1, 0, 1] along x == correlation with [1, 0, -1]
    sx = colx[:-2] + 2.0 * colx[1:-1] + colx[2:]
    up, down = p[:-2], p[2:]
    rowy = down - up  # conv with [1, 0, -1]^T along y == correlation with [-1, 0, 1]^T
    sy = rowy[:, :-2] + 2.0 * rowy[:, 1:-1] + rowy[:, 2:]
    return sx, sy


def _qabf_arrays(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy = _sobel_same(img)
    g = np.sqrt(sx * sx + sy * sy)
    a = np.full_like(img, math.pi / 2)
    nz = sx != 0
    a[nz] = np.arctan(sy[nz] / sx[nz])
    return g, a


def _qabf_edge_preservation(
    a_src: np.ndarray,
    g_src: np.ndarray,
    a_f: np.ndarray,
    g_f: np.ndarray,
) -> np.ndarray:
    tg, kg, dg = 0.9994, -15.0, 0.5
    ta, ka, da = 0.9879, -22.0, 0.8
    ratio = np.zeros_like(g_src)
    gt = g_src > g_f
    ratio[gt] = g_f[gt] / g_src[gt]
    # The evaluator sets the ratio to g_F (not 1) where both gradients are equal; kept as is: it only
    # matters where g_F = g_src > 0, and there the sigmoid is saturated (>= 0.9988 vs 0.9988 for 1).
    eq = g_src == g_f
    ratio[eq] = g_f[eq]
    lt = g_src < g_f
    ratio[lt] = g_src[lt] / g_f[lt]
    orient = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = tg / (1.0 + np.exp(kg * (ratio - dg)))
    q_a = ta / (1.0 + np.exp(ka * (orient - da)))
    return q_g * q_a


def Qabf(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:  # noqa: N802
    """Gradient-based fusion quality Q^{AB/F} (Xydeas & Petrovic 2000), evaluator variant.

    Sobel gradients (zero padding), edge strength and orientation ``arctan(Sy / Sx)`` (``pi/2`` where
    ``Sx = 0``), sigmoid preservation with ``Tg=0.9994, kg=-15, Dg=0.5, Ta=0.9879, ka=-22, Da=0.8``,
    weights ``w = g_A`` and ``g_B`` (exponent L = 1).

    Range: ``[0, ~0.9753]``: the sigmoid constants cap every pixel at ``Tg * Ta / (1 + exp(-4.4))``, so
    even ``F = A = B`` gives about 0.975. NaN when ``A`` and ``B`` are both constant (zero total weight).
    """
    f, a, b = _check_three(fused, ir, vis)
    g_a, a_a = _qabf_arrays(a)
    g_b, a_b = _qabf_arrays(b)
    g_f, a_f = _qabf_arrays(f)
    q_af = _qabf_edge_preservation(a_a, g_a, a_f, g_f)
    q_bf = _qabf_edge_preservation(a_b, g_b, a_f, g_f)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(q_af * g_a + q_bf * g_b) / np.sum(g_a + g_b))


# --------------------------------------------------------------------------------------- SSIM


def _box_valid(img: np.ndarray, k: int) -> np.ndarray:
    """Mean over every ``k x k`` window fully inside ``img`` (integral image; exact for integer data)."""
    c = np.zeros((img.shape[0] + 1, img.shape[1] + 1))
    np.cumsum(np.cumsum(img, axis=0), axis=1, out=c[1:, 1:])
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s / float(k * k)


def ssim_single(x: np.ndarray, y: np.ndarray, data_range: float = SSIM_DATA_RANGE) -> float:
    """Mean SSIM as ``skimage.metrics.structural_similarity(x, y)`` with its defaults.

    7x7 uniform window, sample covariance (``N / (N - 1)``), ``K1 = 0.01``, ``K2 = 0.03``, mean over the
    windows that lie fully inside the image (skimage crops 3 pixels on each side), with
    ``data_range = 255`` by default (see ``SSIM_DATA_RANGE``).

    Range: ``[-1, 1]``; 1 iff ``x == y``.
    """
    a = _check_one(x, "x")
    b = _check_one(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    win = 7
    if min(a.shape) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {a.shape}")
    cov_norm = win * win / (win * win - 1.0)
    ux = _box_valid(a, win)
    uy = _box_valid(b, win)
    vx = cov_norm * (_box_valid(a * a, win) - ux * ux)
    vy = cov_norm * (_box_valid(b * b, win) - uy * uy)
    vxy = cov_norm * (_box_valid(a * b, win) - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def SSIM(  # noqa: N802
    fused: np.ndarray,
    ir: np.ndarray,
    vis: np.ndarray,
    data_range: float = SSIM_DATA_RANGE,
) -> float:
    """``SSIM(F, A) + SSIM(F, B)`` (see :func:`ssim_single`). Range: ``[-2, 2]``; 2 for ``F = A = B``."""
    f, a, b = _check_three(fused, ir, vis)
    return ssim_single(f, a, data_range) + ssim_single(f, b, data_range)


# --------------------------------------------------------------------------------------- all metrics


def evaluate(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for one fused image and its two sources.

    Args:
        fused, ir, vis: images of the same height and width, each ``uint8`` grayscale ``(H, W)`` or BGR
            ``(H, W, 3)`` (as from ``cv2.imread``), or ``float64`` grayscale ``(H, W)`` in ``[0, 255]``.
            Colour images are converted with :func:`to_gray`.

    Returns:
        ``{"EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM"} -> float`` (see each function
        for its range).
    """
    f, a, b = _check_three(to_gray(fused), to_gray(ir), to_gray(vis))
    return {
        "EN": EN(f),
        "SD": SD(f),
        "SF": SF(f),
        "AG": AG(f),
        "MI": MI(f, a, b),
        "SCD": SCD(f, a, b),
        "VIF": VIF(f, a, b),
        "Qabf": Qabf(f, a, b),
        "SSIM": SSIM(f, a, b),
    }
