"""The Stage I quality targets, written once: the MSRS rule against a peer and pixel max, and the picture checks.

* :func:`quality_rule`: ours must be >= a published method (the ≥-within-1 % rule of :func:`at_least`) on at least
  ``min_at_least`` of the nine metrics **and** above pixel max by at least ``margin`` on at least ``min_above`` of
  the contrast/sharpness metrics (EN, SD, SF, AG, SCD). A 1 % tie counts as >=, never as "above", so copying
  ``max(IR, Y_vis)`` cannot meet it.
* :func:`stage2_rule`: Stage II must earn its cost: above F1 by ``STAGE2_GAIN`` (5 %) on at least one fidelity
  metric (MI, SCD, VIF, Qabf, SSIM) and at most ``STAGE2_MAX_LOSS`` (1 %) below F1 on every metric.
* :func:`picture_checks`: no haze (1st-percentile luminance), no border band, not soft (spatial frequency), each
  against ``max(IR, Y_vis)`` on the same pair.

Everything here is NumPy on grey images in [0, 255] (``metrics.to_gray`` of what a file reader would see).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..metrics import METRIC_NAMES, SF

__all__ = [
    "ABOVE_MARGIN",
    "TIE_TOLERANCE",
    "BAND_WIDTH",
    "CONTRAST_METRICS",
    "GREY_TOLERANCE",
    "PictureChecks",
    "RuleResult",
    "STAGE2_GAIN",
    "STAGE2_MAX_LOSS",
    "FIDELITY_METRICS",
    "Stage2RuleResult",
    "at_least",
    "border_band",
    "low_percentile",
    "mean_over",
    "picture_checks",
    "quality_rule",
    "stage2_rule",
]

#: "ours >= other" counts ties: ours >= other - TIE_TOLERANCE * |other| (1 %).
TIE_TOLERANCE = 0.01
#: Metrics on which ours must be clearly above pixel max (contrast and sharpness; SCD: complementary information).
CONTRAST_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "AG", "SCD")
#: "Above" means ours >= (1 + ABOVE_MARGIN) * pixel max.
ABOVE_MARGIN = 0.02
#: Picture checks allow this many grey levels beyond what max(IR, Y_vis) shows.
GREY_TOLERANCE = 3.0
BAND_WIDTH = 3
#: Metrics that measure what the fused image keeps of the sources (Stage II must improve one of them).
FIDELITY_METRICS: tuple[str, ...] = ("MI", "SCD", "VIF", "Qabf", "SSIM")
#: Stage II must be above F1 by this fraction on at least one fidelity metric ...
STAGE2_GAIN = 0.05
#: ... and below F1 by no more than this fraction on any metric.
STAGE2_MAX_LOSS = 0.01


def at_least(ours: float, other: float, tolerance: float = TIE_TOLERANCE) -> bool:
    """``ours >= other`` with ties within ``tolerance`` (relative to ``|other|``) counted as ``>=``.

    All nine metrics are higher-is-better. NaN on either side is never ``>=``.
    """
    if not (math.isfinite(ours) and math.isfinite(other)):
        return False
    return ours >= other - tolerance * abs(other)


@dataclass(frozen=True)
class RuleResult:
    """Outcome of :func:`quality_rule`."""

    at_least_peer: tuple[str, ...]  #: metrics where ours >= the peer (1 % ties count)
    above_max: tuple[str, ...]  #: contrast metrics where ours >= (1 + margin) * pixel max
    min_at_least: int
    min_above: int

    @property
    def passed(self) -> bool:
        return len(self.at_least_peer) >= self.min_at_least and len(self.above_max) >= self.min_above

    def describe(self) -> str:
        verdict = "met" if self.passed else "not met"
        return (
            f"{verdict}: >= peer on {len(self.at_least_peer)}/{len(METRIC_NAMES)} "
            f"({', '.join(self.at_least_peer) or 'none'}; need {self.min_at_least}), "
            f"above pixel max by >= {ABOVE_MARGIN:.0%} on {len(self.above_max)} "
            f"({', '.join(self.above_max) or 'none'}; need {self.min_above})"
        )


def quality_rule(
    ours: Mapping[str, float],
    peer: Mapping[str, float],
    pixel_max: Mapping[str, float],
    min_at_least: int = 6,
    min_above: int = 2,
    margin: float = ABOVE_MARGIN,
) -> RuleResult:
    """The Stage I acceptance rule on mean metrics (dicts keyed by ``metrics.METRIC_NAMES``).

    Args:
        ours: our mean metrics; peer: the published method's on the same pairs; pixel_max: max(IR, Y_vis)'s.
        min_at_least: how many of the nine metrics must be >= the peer (1 % ties count).
        min_above: how many of ``CONTRAST_METRICS`` must be above pixel max by ``margin`` (relative).
    """
    at_least_peer = tuple(m for m in METRIC_NAMES if at_least(ours[m], peer[m]))
    above = tuple(
        m
        for m in CONTRAST_METRICS
        if math.isfinite(ours[m]) and math.isfinite(pixel_max[m]) and ours[m] >= (1.0 + margin) * pixel_max[m]
    )
    return RuleResult(at_least_peer, above, min_at_least, min_above)


@dataclass(frozen=True)
class Stage2RuleResult:
    """Outcome of :func:`stage2_rule`: relative change per metric ((refined - F1) / |F1|)."""

    change: dict[str, float]

    @property
    def gained(self) -> tuple[str, ...]:
        """Fidelity metrics improved by at least ``STAGE2_GAIN``."""
        return tuple(m for m in FIDELITY_METRICS if self.change[m] >= STAGE2_GAIN)

    @property
    def lost(self) -> tuple[str, ...]:
        """Metrics more than ``STAGE2_MAX_LOSS`` below F1 (NaN counts as lost)."""
        return tuple(m for m in METRIC_NAMES if not self.change[m] >= -STAGE2_MAX_LOSS)

    @property
    def passed(self) -> bool:
        return bool(self.gained) and not self.lost

    def describe(self) -> str:
        verdict = "met" if self.passed else "not met"
        changes = ", ".join(f"{m} {100 * self.change[m]:+.1f} %" for m in METRIC_NAMES)
        return (
            f"{verdict}: >= +{STAGE2_GAIN:.0%} on {', '.join(self.gained) or 'no fidelity metric'}; "
            f"more than {STAGE2_MAX_LOSS:.0%} below F1 on {', '.join(self.lost) or 'none'} ({changes})"
        )


def stage2_rule(refined: Mapping[str, float], f1: Mapping[str, float]) -> Stage2RuleResult:
    """Compare Stage I + II mean metrics with Stage I's (F1's) on the same pairs (dicts keyed by METRIC_NAMES)."""
    change = {}
    for m in METRIC_NAMES:
        ok = math.isfinite(refined[m]) and math.isfinite(f1[m]) and f1[m] != 0.0
        change[m] = (refined[m] - f1[m]) / abs(f1[m]) if ok else float("nan")
    return Stage2RuleResult(change)


def low_percentile(gray: np.ndarray, q: float = 1.0) -> float:
    """The ``q``-th percentile of the grey levels [H, W] (the haze floor: dark regions lifted to grey raise it)."""
    return float(np.percentile(np.asarray(gray, dtype=np.float64), q))


def border_band(gray: np.ndarray, width: int = BAND_WIDTH) -> float:
    """|mean of the outer ``width``-px frame − mean of the next ``width`` px|, in grey levels (an edge frame)."""
    g = np.asarray(gray, dtype=np.float64)
    h, w = g.shape
    if min(h, w) <= 4 * width:
        raise ValueError(f"image {g.shape} too small for a {width}-px border band")

    def frame(outer: int) -> float:
        inner = outer + width
        region = np.ones((h, w), dtype=bool)
        region[inner : h - inner, inner : w - inner] = False
        if outer:
            region[:outer] = region[h - outer :] = False
            region[:, :outer] = region[:, w - outer :] = False
        return float(g[region].mean())

    return abs(frame(0) - frame(width))


@dataclass(frozen=True)
class PictureChecks:
    """The three picture checks of one pair, ours against max(IR, Y_vis) (grey levels, spatial frequency)."""

    p1: float
    p1_max: float
    band: float
    band_max: float
    sf: float
    sf_max: float

    @property
    def no_haze(self) -> bool:
        return self.p1 <= self.p1_max + GREY_TOLERANCE

    @property
    def no_band(self) -> bool:
        return self.band <= self.band_max + GREY_TOLERANCE

    @property
    def not_soft(self) -> bool:
        return self.sf >= self.sf_max

    @property
    def passed(self) -> bool:
        return self.no_haze and self.no_band and self.not_soft


def picture_checks(fused_gray: np.ndarray, ir_gray: np.ndarray, vis_gray: np.ndarray) -> PictureChecks:
    """Haze, band and softness of ``fused_gray`` against ``max(ir_gray, vis_gray)``; all [H, W] in [0, 255]."""
    reference = np.maximum(np.asarray(ir_gray, dtype=np.float64), np.asarray(vis_gray, dtype=np.float64))
    fused = np.asarray(fused_gray, dtype=np.float64)
    if fused.shape != reference.shape:
        raise ValueError(f"fused {fused.shape} and sources {reference.shape} differ in size")
    return PictureChecks(
        p1=low_percentile(fused),
        p1_max=low_percentile(reference),
        band=border_band(fused),
        band_max=border_band(reference),
        sf=SF(fused),
        sf_max=SF(reference),
    )


def mean_over(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over per-image rows."""
    return {m: float(np.mean([r[m] for r in rows])) for m in METRIC_NAMES}
