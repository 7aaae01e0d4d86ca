"""Stage I validation: a held-out part of the training folder, in daylight and as a night proxy, against pixel max.

Architectures, losses and checkpoints are chosen here, never on the evaluation sets (MSRS, M3FD). The split is
every ``VALIDATION_EVERY``-th pair of the sorted names (after the bundled held-out pairs are removed); the night
proxy darkens each visible image with ``data.darken`` (0.25 · Y^1.5) so that a haze the model would lift over dark
scenes shows up in validation, as it does out of domain.

The score compares the model with ``max(IR, Y_vis)`` on the same images, per condition (day, night). It is
lexicographic: first the number of pairs passing all three picture checks (haze, band, softness; these are hard
requirements), then the rule of ``evaluation.targets`` summed over both conditions: metrics at least as good as
the maximum (1 % ties) plus contrast metrics clearly above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..evaluation.targets import mean_over, picture_checks, quality_rule
from ..metrics import evaluate
from .data import PairSet, darken

__all__ = [
    "CONDITIONS",
    "VALIDATION_EVERY",
    "ValidationResult",
    "split_validation",
    "validate_stage1",
    "validation_indices",
]

VALIDATION_EVERY = 10
CONDITIONS = ("day", "night")


def validation_indices(count: int, every: int = VALIDATION_EVERY) -> set[int]:
    """Indices (into ``count`` pairs sorted by name) of the validation pairs: every ``every``-th from the
    ``every // 2``-th on (the last one when there are fewer). Stage I and Stage II hold out the same pairs.
    Raises ValueError for fewer than two pairs."""
    if count < 2:
        raise ValueError(f"a validation split needs at least 2 pairs, got {count}")
    return set(range(min(every // 2, count - 1), count, every))


def split_validation(data: PairSet, every: int = VALIDATION_EVERY) -> tuple[PairSet, PairSet]:
    """(training, validation) by ``validation_indices``. Raises ValueError for fewer than two pairs."""
    val_idx = validation_indices(len(data), every)

    def subset(keep: bool) -> PairSet:
        idx = [i for i in range(len(data)) if (i in val_idx) == keep]
        return PairSet([data.names[i] for i in idx], [data.ir[i] for i in idx], [data.vis_y[i] for i in idx])

    return subset(False), subset(True)


@dataclass
class ValidationResult:
    """Mean metrics per condition for the model and for pixel max, and the derived score (higher is better)."""

    ours: dict[str, dict[str, float]]
    pixel_max: dict[str, dict[str, float]]
    at_least_max: dict[str, int]  #: per condition: metrics (of 9) where ours >= max (1 % ties)
    above_max: dict[str, int]  #: per condition: contrast metrics (of 5) where ours >= 1.02 * max
    pictures_passed: dict[str, int]  #: per condition: pairs passing haze, band and softness checks
    pairs: int

    @property
    def score(self) -> tuple[int, int]:
        """(pairs passing the picture checks, rule counts), both summed over day and night; compare as tuples."""
        pictures = sum(self.pictures_passed[c] for c in CONDITIONS)
        return pictures, sum(self.at_least_max[c] + self.above_max[c] for c in CONDITIONS)

    def row(self) -> dict[str, float]:
        """Flat record for the validation log."""
        out: dict[str, float] = {"pictures_passed": self.score[0], "rule_counts": self.score[1]}
        for c in CONDITIONS:
            out[f"{c}_at_least_max"] = self.at_least_max[c]
            out[f"{c}_above_max"] = self.above_max[c]
            out[f"{c}_pictures_passed"] = self.pictures_passed[c]
            for m in ("SD", "SF", "AG", "VIF", "Qabf", "SSIM"):
                out[f"{c}_{m}_vs_max"] = round(self.ours[c][m] / self.pixel_max[c][m], 4)
        return out


def _gray(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0)


@torch.no_grad()
def validate_stage1(model: torch.nn.Module, data: PairSet, device: torch.device | str = "cpu") -> ValidationResult:
    """Run ``model`` on every validation pair at full size, by day and as the night proxy, and score it."""
    was_training = model.training
    model.eval()
    ours: dict[str, list[dict[str, float]]] = {c: [] for c in CONDITIONS}
    maxed: dict[str, list[dict[str, float]]] = {c: [] for c in CONDITIONS}
    passed = dict.fromkeys(CONDITIONS, 0)
    try:
        for ir, y in zip(data.ir, data.vis_y, strict=True):
            for condition in CONDITIONS:
                vis = y if condition == "day" else darken(y)
                t_ir = torch.from_numpy(ir)[None, None].to(device)
                t_vis = torch.from_numpy(np.ascontiguousarray(vis))[None, None].to(device)
                fused = model(t_ir, t_vis)[0, 0].float().cpu().numpy()
                g_f, g_ir, g_vis = _gray(fused), _gray(ir), _gray(vis)
                ours[condition].append(evaluate(g_f, g_ir, g_vis))
                maxed[condition].append(evaluate(np.maximum(g_ir, g_vis), g_ir, g_vis))
                passed[condition] += picture_checks(g_f, g_ir, g_vis).passed
    finally:
        model.train(was_training)
    ours_mean = {c: mean_over(ours[c]) for c in CONDITIONS}
    max_mean = {c: mean_over(maxed[c]) for c in CONDITIONS}
    rules = {c: quality_rule(ours_mean[c], max_mean[c], max_mean[c]) for c in CONDITIONS}
    return ValidationResult(
        ours=ours_mean,
        pixel_max=max_mean,
        at_least_max={c: len(rules[c].at_least_peer) for c in CONDITIONS},
        above_max={c: len(rules[c].above_max) for c in CONDITIONS},
        pictures_passed=passed,
        pairs=len(data),
    )
