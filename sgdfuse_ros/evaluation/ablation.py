"""Ablation machinery of ``sgdfuse evaluate``: the Stage II variants and the tools to re-run them.

* ``morph_mask``: grey-level erosion / dilation of a soft mask (the eroded / dilated rows).
* ``MaskTransformRefiner``: a refiner whose masks are transformed first (zeroed, eroded, dilated).
* ``CapturingRefiner``: wraps the pipeline's refiner and keeps its Stage II inputs for the re-runs.
* ``AblationVariant`` and ``build_ablation_variants``: the ablation rows for a pipeline (each with its refiner
  or the reason it is unavailable).
* ``replay_stage2``: one variant's Stage II on captured inputs, rounded as the pipeline rounds.

Stage II variants re-run only Stage II, on the very F1 and masks (float tensors) of the main run, so rows differ
by the ablated component alone. torch and the pipeline are imported only when a variant runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

    from ..pipeline import FusionPipeline, Refiner

__all__ = [
    "DEFAULT_MORPH_RADII",
    "AblationVariant",
    "CapturingRefiner",
    "MaskTransformRefiner",
    "build_ablation_variants",
    "morph_mask",
    "replay_stage2",
]

#: Mask erosion / dilation radii (pixels) of the ablation rows unless ``--morph-radii`` says otherwise.
DEFAULT_MORPH_RADII = (3, 7)


def morph_mask(mask: np.ndarray, op: str, radius: int) -> np.ndarray:
    """Grey-level erosion or dilation of a soft mask by ``radius`` pixels (elliptical element 2r+1 wide).

    Args:
        mask: float32 ``(H, W)`` in [0, 1].
        op: ``"erode"`` (local minimum: salient regions shrink by ``radius`` px) or ``"dilate"`` (grow).
        radius: pixels, >= 0 (0 returns a copy).
    Returns:
        float32 ``(H, W)`` in [0, 1].
    """
    if op not in ("erode", "dilate"):
        raise ValueError(f"op must be 'erode' or 'dilate', got {op!r}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    m = np.ascontiguousarray(mask, dtype=np.float32)
    if radius == 0:
        return m.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    fn = cv2.erode if op == "erode" else cv2.dilate
    # Replicated border: the frame edge is not a mask edge (the default border would leave it untouched anyway).
    return fn(m, kernel, borderType=cv2.BORDER_REPLICATE)


def _morph_tensor(mask: torch.Tensor, op: str, radius: int) -> torch.Tensor:
    """[N,1,H,W] tensor on any device -> same, each mask morphed with :func:`morph_mask` (on the CPU)."""
    import torch

    arrays = mask.detach().float().cpu().numpy()
    out = np.stack([morph_mask(a[0], op, radius)[None] for a in arrays])
    return torch.from_numpy(out).to(device=mask.device, dtype=mask.dtype)


def _zero(mask: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.zeros_like(mask)


class MaskTransformRefiner:
    """A Stage II refiner whose masks are transformed before they reach it (ablations: zeroed, eroded, dilated).

    Works with any ``pipeline.Refiner``: ``refine(F1, M_ir, M_vis, IR, Y_vis) = inner.refine(F1, f(M_ir), f(M_vis),
    IR, Y_vis)``.
    Zeroed masks give the same condition as ``DiffusionRefiner(..., use_masks=False)``.
    """

    def __init__(self, inner: Refiner, transform: Callable[[torch.Tensor], torch.Tensor], label: str) -> None:
        self.inner = inner
        self.transform = transform
        self.name = f"{inner.name}+{label}"

    def refine(
        self,
        preliminary: torch.Tensor,
        mask_ir: torch.Tensor,
        mask_vis: torch.Tensor,
        thermal: torch.Tensor | None = None,
        visible_y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As ``pipeline.Refiner.refine`` (all [N,C,H,W] in [0, 1]), with the masks transformed."""
        return self.inner.refine(preliminary, self.transform(mask_ir), self.transform(mask_vis), thermal, visible_y)

    def to(self, device: Any) -> MaskTransformRefiner:
        if hasattr(self.inner, "to"):
            self.inner.to(device)
        return self


class CapturingRefiner:
    """Delegates to the pipeline's refiner and keeps its inputs (F1, masks, sources) for the ablation re-runs."""

    def __init__(self, inner: Refiner) -> None:
        self.inner = inner
        self.name = inner.name
        self.captured: tuple[torch.Tensor | None, ...] | None = None

    def refine(
        self,
        preliminary: torch.Tensor,
        mask_ir: torch.Tensor,
        mask_vis: torch.Tensor,
        thermal: torch.Tensor | None = None,
        visible_y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """As ``pipeline.Refiner.refine`` (all [N,C,H,W] in [0, 1]); the inputs are kept in ``captured``."""
        self.captured = (preliminary, mask_ir, mask_vis, thermal, visible_y)
        return self.inner.refine(preliminary, mask_ir, mask_vis, thermal, visible_y)

    def to(self, device: Any) -> CapturingRefiner:
        if hasattr(self.inner, "to"):
            self.inner.to(device)
        return self


@dataclass
class AblationVariant:
    """One ablation row. ``refiner`` None with an empty ``unavailable`` means "Stage I only" (F1)."""

    key: str
    label: str
    description: str
    refiner: Any = None
    unavailable: str = ""

    @property
    def needs_stage2(self) -> bool:
        return self.key != "stage1_only"


def _default_no_hfah_weights() -> Path | None:
    """A shipped Stage II checkpoint trained without HFAH, if any (``weights/stage2*no*hfah*.pt``)."""
    weights = Path(__file__).resolve().parent.parent / "weights"
    found = sorted(weights.glob("stage2*no*hfah*.pt")) if weights.is_dir() else []
    return found[0] if found else None


def build_ablation_variants(
    pipeline: FusionPipeline,
    radii: Sequence[int] = DEFAULT_MORPH_RADII,
    no_hfah_weights: str | Path | None = None,
    sampler_steps: Sequence[int] = (),
    sampler_strengths: Sequence[float] = (),
) -> list[AblationVariant]:
    """The ablation rows for ``pipeline`` (its refiner is the full model); unavailable rows carry the reason.

    Without a Stage II refiner every row but "Stage I only" is unavailable. The no-HFAH row loads
    ``no_hfah_weights`` (default: a shipped ``weights/stage2*no*hfah*.pt``) with the full refiner's sampler
    settings (steps, strength, seed); it is "not trained" when no such checkpoint exists. ``sampler_steps`` and
    ``sampler_strengths`` add rows with the same network sampled with another number of DDIM steps or another
    start strength (the other settings as configured).
    """
    base = pipeline.refiner
    variants = [
        AblationVariant("full", "full (Stage I + Stage II, masks)", "the configured pipeline", refiner=base),
        AblationVariant("stage1_only", "Stage I only (F1)", "no diffusion refinement: F1 is the output"),
        AblationVariant(
            "no_masks",
            "Stage II, masks zeroed",
            "M_ir = M_vis = 0 in the Stage II condition (no semantic prior)",
            refiner=MaskTransformRefiner(base, _zero, "zero-masks") if base is not None else None,
        ),
    ]
    hfah = AblationVariant("no_hfah", "Stage II without HFAH", "plain head on the finest decoder level")
    variants.append(hfah)
    for op in ("erode", "dilate"):
        for r in radii:
            variants.append(
                AblationVariant(
                    f"{op}_{r}",
                    f"masks {'eroded' if op == 'erode' else 'dilated'} {r} px",
                    f"prior's masks {op}d (grey-level, elliptical element {2 * r + 1} px) before Stage II",
                    refiner=(
                        MaskTransformRefiner(base, lambda m, op=op, r=r: _morph_tensor(m, op, r), f"{op}{r}")
                        if base is not None
                        else None
                    ),
                )
            )
    if base is None:
        for v in variants:
            if v.needs_stage2:
                v.unavailable = "unavailable: no Stage II refiner configured"
        return variants

    path = Path(no_hfah_weights) if no_hfah_weights else _default_no_hfah_weights()
    if path is None:
        hfah.unavailable = "not trained (no Stage II weights without HFAH)"
    elif not path.is_file():
        hfah.unavailable = f"not available: {path} does not exist"
    else:
        from ..models.stage2 import DiffusionRefiner, load_stage2

        model, schedule = load_stage2(path, pipeline.device)
        if model.config.use_hfah:
            hfah.unavailable = f"not available: {path.name} was trained with HFAH"
        elif not isinstance(base, DiffusionRefiner):
            hfah.unavailable = f"not available: the configured refiner is not a DiffusionRefiner ({base.name})"
        else:
            hfah.refiner = DiffusionRefiner(
                model, schedule, steps=base.steps, strength=base.strength, seed=base.seed, use_masks=base.use_masks
            )
            hfah.description += f" ({path.name})"
    for steps, strength in [(n, None) for n in sampler_steps] + [(None, x) for x in sampler_strengths]:
        key = f"steps_{steps}" if steps is not None else f"strength_{strength:g}"
        label = f"{steps} DDIM step(s)" if steps is not None else f"strength {strength:g}"
        variant = AblationVariant(key, label, "the full model sampled differently")
        if not hasattr(base, "model") or not hasattr(base, "schedule"):
            variant.unavailable = f"not available: the configured refiner is not a DiffusionRefiner ({base.name})"
        else:
            from ..models.stage2 import DiffusionRefiner

            variant.refiner = DiffusionRefiner(
                base.model,
                base.schedule,
                steps=steps if steps is not None else base.steps,
                strength=strength if strength is not None else base.strength,
                seed=base.seed,
                use_masks=base.use_masks,
            )
        variants.append(variant)
    return variants


def replay_stage2(pipeline: FusionPipeline, refiner: Refiner, captured: tuple) -> np.ndarray:
    """Run ``refiner`` on captured (F1, M_ir, M_vis, IR, Y_vis) as the pipeline runs its Stage II -> uint8 RGB.

    Args:
        pipeline: the FusionPipeline whose Stage II inputs were captured (its autocast setting is used).
        refiner: the variant's refiner.
        captured: ``CapturingRefiner.captured``: [1,C,H,W] tensors in [0, 1] (IR and Y_vis may be None).
    Returns:
        uint8 RGB ``(H, W, 3)`` in [0, 255], rounded exactly as the pipeline rounds its output.
    """
    import torch

    from ..pipeline import _to_uint8  # the pipeline's own rounding, so rows differ by the variant only

    with torch.inference_mode(), pipeline._autocast():
        out = refiner.refine(*captured).float()
    return _to_uint8(out)
