"""The run behind `sgdfuse evaluate`: fuse a dataset folder, compare with baselines, published outputs, ablations.

This module holds pair and peer selection, the comparisons, ``run_evaluation`` and the summary it writes to
``results.json``. The command line is in ``command``, the ablation variants in ``ablation``.

For every pair ``DIR/ir/<stem>.*`` + ``DIR/vi/<stem>.*`` the pipeline runs once; that one call gives our final
output and Stage I's F1 (and the masks). Every metric of ``sgdfuse_ros.metrics`` is computed for

* ours (final) and ours (F1, when a Stage II refiner is configured, otherwise final == F1);
* the classical baselines (``baselines.BASELINES``) on the grayscale sources;
* each peer ``<peers>/<Method>/<stem>.*`` (matched by file stem), on exactly the pairs that peer covers, next to
  our mean on that same subset (the tables give n per row);
* with ``--ablations``: Stage I only, Stage II with zeroed masks, Stage II without HFAH (separately trained
  weights; "not trained" when there are none), and Stage II with the prior's masks eroded / dilated by a few
  pixels. Stage II variants re-run only Stage II, on the very F1 and masks (float tensors) of the main run, so
  rows differ by the ablated component alone.

Metrics see images as the reference evaluator reads files (``cv2.imread`` colour -> ``metrics.to_gray``); our
RGB outputs are converted exactly as if written to PNG and read back. Outputs go to ``--out``: ``report.md``,
``results.json`` (means and per-image values), ``contact_sheet.png``, ``metrics_bar.png`` and, unless
``--no-images``, the fused images under ``images/``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..files import IMAGE_SUFFIXES
from ..metrics import METRIC_NAMES, evaluate, to_gray
from .ablation import DEFAULT_MORPH_RADII, AblationVariant, CapturingRefiner, build_ablation_variants, replay_stage2
from .baselines import BASELINES, maximum_with_visible_chroma
from .targets import TIE_TOLERANCE, at_least, quality_rule, stage2_rule

if TYPE_CHECKING:  # torch and the pipeline are imported only when fusing (the CLI stays fast to start)
    from ..pipeline import FusionPipeline

__all__ = [
    "OURS",
    "OURS_F1",
    "TIE_TOLERANCE",
    "at_least",
    "choose_sheet_stems",
    "find_peers",
    "run_evaluation",
    "select_pairs",
]

#: Method keys of our two outputs in results.json.
OURS = "ours"
OURS_F1 = "ours_f1"


# ----------------------------------------------------------------------------------------------------------
# Pair and peer selection
# ----------------------------------------------------------------------------------------------------------


def select_pairs(
    pairs: Sequence[tuple[str, Path, Path]],
    stems: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[tuple[str, Path, Path]]:
    """The pairs to evaluate: those named in ``stems`` (if given), then ``limit`` of them evenly spaced.

    Evenly spaced over the sorted names (first and last included) rather than the first ``limit``, so that a
    subset of e.g. MSRS mixes day (``...D``) and night (``...N``) scenes. Raises ValueError for unknown stems.
    """
    selected = list(pairs)
    if stems:
        by_stem = {p[0]: p for p in selected}
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise ValueError(f"--stems not found as pairs in the data folder: {', '.join(missing)}")
        selected = [by_stem[s] for s in sorted(set(stems))]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        if limit < len(selected):
            index = np.round(np.linspace(0, len(selected) - 1, limit)).astype(int)
            selected = [selected[i] for i in index]
    return selected


def find_peers(peers_dir: str | Path | None, stems: Sequence[str]) -> dict[str, dict[str, Path]]:
    """``{method: {stem: path}}`` for each ``peers_dir/<Method>/`` folder, restricted to ``stems``.

    Files are matched to pairs by stem only (peers' outputs are PNG even for JPEG inputs). Methods covering none
    of ``stems`` are left out. Sorted by coverage (most first), then name.
    """
    if peers_dir is None:
        return {}
    root = Path(peers_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"peers folder not found: {root}")
    wanted = set(stems)
    found: dict[str, dict[str, Path]] = {}
    for method_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {
            p.stem: p for p in sorted(method_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in wanted
        }
        if files:
            found[method_dir.name] = files
    return dict(sorted(found.items(), key=lambda item: (-len(item[1]), item[0])))


def choose_sheet_stems(stems: Sequence[str], peers: dict[str, dict[str, Path]], rows: int) -> list[str]:
    """Pairs shown in the contact sheet (at most ``rows``, in dataset order).

    Greedy: each next pair is the one showing the most peers not shown yet (so every peer appears when the rows
    allow it; ties go to the earlier name); once no pair adds a peer, the rest are evenly spaced over the others.
    """
    stems = list(stems)
    chosen: list[str] = []
    shown: set[str] = set()
    while len(chosen) < min(rows, len(stems)):
        gains = [
            (len({name for name, files in peers.items() if stem in files} - shown), -i)
            for i, stem in enumerate(stems)
            if stem not in chosen
        ]
        best_gain, best_index = max(gains) if gains else (0, 0)
        if best_gain == 0:
            break
        chosen.append(stems[-best_index])
        shown |= {name for name, files in peers.items() if stems[-best_index] in files}
    rest = [s for s in stems if s not in chosen]
    missing = min(rows, len(stems)) - len(chosen)
    if missing > 0 and rest:
        index = np.round(np.linspace(0, len(rest) - 1, missing)).astype(int)
        chosen += [rest[i] for i in sorted(set(index.tolist()))]
    return sorted(chosen, key=stems.index)


# ----------------------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------------------


def compare(ours: dict[str, float], other: dict[str, float]) -> dict[str, Any]:
    """``{"count": k, "metrics": [names where ours >= other (1 % ties)]}`` over METRIC_NAMES."""
    names = [m for m in METRIC_NAMES if at_least(ours[m], other[m])]
    return {"count": len(names), "of": len(METRIC_NAMES), "metrics": names}


def mean_metrics(per_image: dict[str, dict[str, float]], stems: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over ``stems`` (NaN when a value is NaN: the tables then show it)."""
    return {m: float(np.mean([per_image[s][m] for s in stems])) for m in METRIC_NAMES}


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


def _read_bgr(path: Path) -> np.ndarray:
    """A file as the reference evaluator reads it: ``cv2.imread`` colour (BGR uint8 [H, W, 3])."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image: {path}")
    return image


def _gray_of_rgb(rgb: np.ndarray) -> np.ndarray:
    """Our uint8 RGB output as the evaluator would see its PNG (RGB -> BGR -> to_gray)."""
    return to_gray(np.ascontiguousarray(rgb[..., ::-1]))


def _write(path: Path, image: np.ndarray, rgb: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if rgb and image.ndim == 3 else image
    if not cv2.imwrite(str(path), data):
        raise OSError(f"cannot write {path}")


@dataclass
class _Method:
    key: str
    label: str
    kind: str  # "ours" | "baseline" | "peer" | "ablation"
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        stems = list(self.per_image)
        return {
            "label": self.label,
            "kind": self.kind,
            "n": len(stems),
            "stems": stems,
            "mean": mean_metrics(self.per_image, stems) if stems else None,
            "per_image": self.per_image,
            "skipped": self.skipped,
        }


def run_evaluation(
    pairs: Sequence[tuple[str, Path, Path]],
    pipeline: FusionPipeline,
    out_dir: str | Path,
    peers_dir: str | Path | None = None,
    ablations: bool = False,
    morph_radii: Sequence[int] = DEFAULT_MORPH_RADII,
    no_hfah_weights: str | Path | None = None,
    sampler_steps: Sequence[int] = (),
    sampler_strengths: Sequence[float] = (),
    sheet_rows: int = 4,
    sheet_tile: int = 240,
    sheet_peers: Sequence[str] | None = None,
    save_images: bool = True,
    dataset: str = "",
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fuse ``pairs`` with ``pipeline``, compute the metrics of every method and write the reports.

    Args:
        pairs: (stem, ir path, vi path) as from ``cli.find_pairs``.
        pipeline: a built FusionPipeline; its ``refiner`` (None = Stage I only) is the full model.
        out_dir: report folder (created).
        peers_dir: folder of ``<Method>/<stem>.*`` fused outputs of published methods, or None.
        ablations: also evaluate the ablation variants (``build_ablation_variants``, with ``morph_radii``,
            ``no_hfah_weights``, ``sampler_steps`` and ``sampler_strengths``).
    Returns:
        The summary written to ``results.json`` (see docs/evaluation.md for its layout).
    """
    from . import report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = [p[0] for p in pairs]
    if not stems:
        raise ValueError("no pairs to evaluate")
    peers = find_peers(peers_dir, stems)
    shown_peers = {k: v for k, v in peers.items() if sheet_peers is None or k in sheet_peers}
    sheet_stems = set(choose_sheet_stems(stems, shown_peers, sheet_rows))
    has_stage2 = pipeline.refiner is not None

    ours_label = "SGDFuse (ours, Stage I + II)" if has_stage2 else "SGDFuse (ours, Stage I only)"
    methods: dict[str, _Method] = {OURS: _Method(OURS, ours_label, "ours")}
    if has_stage2:
        methods[OURS_F1] = _Method(OURS_F1, "ours, Stage I F1", "ours")
    for name in BASELINES:
        methods[name] = _Method(name, name, "baseline")
    for name in peers:
        methods[f"peer:{name}"] = _Method(f"peer:{name}", name, "peer")

    variants = (
        build_ablation_variants(pipeline, morph_radii, no_hfah_weights, sampler_steps, sampler_strengths)
        if ablations
        else []
    )
    ablation_rows = {v.key: _Method(v.key, v.label, "ablation") for v in variants}
    runnable = [v for v in variants if v.refiner is not None and not v.unavailable and v.key != "full"]
    capture = CapturingRefiner(pipeline.refiner) if (has_stage2 and runnable) else None

    from ..files import read_thermal, read_visible

    sheet: list[dict[str, Any]] = []
    timings: list[dict[str, float]] = []
    log(
        f"evaluating {len(stems)} pair(s) from {dataset or 'data'}; prior {pipeline.prior_name}; "
        f"Stage II {pipeline.refiner.name if has_stage2 else 'none'}; peers: "
        + (", ".join(f"{k} ({len(v)})" for k, v in peers.items()) or "none")
        + (f"; ablations: {len(runnable)} Stage II re-run(s) per pair" if ablations else "")
    )
    jsonl = (out / "per_image.jsonl").open("w")
    original_refiner = pipeline.refiner
    try:
        if capture is not None:
            pipeline.refiner = capture
        for index, (stem, ir_path, vi_path) in enumerate(pairs, 1):
            thermal, thermal_encoding = read_thermal(ir_path)
            visible, visible_encoding = read_visible(vi_path)
            # F1 is scored (OURS_F1), written (images/f1) and shown on the contact sheet.
            result = pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding, keep_preliminary=True)
            timing = dict(result.timings_ms)
            t_fused = time.perf_counter()

            ir_bgr, vi_bgr = _read_bgr(ir_path), _read_bgr(vi_path)
            ir_gray, vi_gray = to_gray(ir_bgr), to_gray(vi_bgr)
            if result.fused.shape[:2] != ir_gray.shape or ir_gray.shape != vi_gray.shape:
                raise ValueError(
                    f"{stem}: sizes differ (ir {ir_gray.shape}, vi {vi_gray.shape}, fused {result.fused.shape[:2]});"
                    " evaluation needs registered pairs of one size"
                )
            row: dict[str, dict[str, float]] = {}
            row[OURS] = evaluate(_gray_of_rgb(result.fused), ir_gray, vi_gray)
            if has_stage2:
                row[OURS_F1] = evaluate(_gray_of_rgb(result.preliminary), ir_gray, vi_gray)
            for name, fn in BASELINES.items():
                row[name] = evaluate(fn(ir_gray, vi_gray), ir_gray, vi_gray)
            peer_images: dict[str, np.ndarray] = {}
            for name, files in peers.items():
                if stem not in files:
                    continue
                image = _read_bgr(files[stem])
                if image.shape[:2] != ir_gray.shape:
                    methods[f"peer:{name}"].skipped[stem] = f"size {image.shape[1]}x{image.shape[0]} != input"
                    log(f"  {stem}: {name} output has another size, skipped")
                    continue
                row[f"peer:{name}"] = evaluate(image, ir_gray, vi_gray)
                peer_images[name] = image[..., ::-1]
            for key, values in row.items():
                methods[key].per_image[stem] = values

            ablation_images: dict[str, np.ndarray] = {}
            for variant in variants:
                if variant.unavailable:
                    continue
                if variant.key == "full":
                    ablation_rows["full"].per_image[stem] = row[OURS]
                elif variant.key == "stage1_only":
                    ablation_rows["stage1_only"].per_image[stem] = row.get(OURS_F1, row[OURS])
                else:
                    t_v = time.perf_counter()
                    if capture is None or capture.captured is None:
                        raise RuntimeError("Stage II did not run in the pipeline: nothing to re-run the ablation on")
                    fused_v = replay_stage2(pipeline, variant.refiner, capture.captured)
                    timing[f"ablation:{variant.key}"] = (time.perf_counter() - t_v) * 1000.0
                    ablation_rows[variant.key].per_image[stem] = evaluate(_gray_of_rgb(fused_v), ir_gray, vi_gray)
                    ablation_images[variant.key] = fused_v
            if capture is not None:
                capture.captured = None  # free the tensors

            if save_images:
                img = out / "images"
                _write(img / "final" / f"{stem}.png", result.fused)
                _write(img / "f1" / f"{stem}.png", result.preliminary)
                _write(img / "mask_ir" / f"{stem}.png", result.mask_ir, rgb=False)
                _write(img / "mask_vis" / f"{stem}.png", result.mask_vis, rgb=False)
                for key, image in ablation_images.items():
                    _write(img / "ablations" / key / f"{stem}.png", image)
            if stem in sheet_stems:
                sheet.append(
                    {
                        "stem": stem,
                        "ir": ir_gray.astype(np.uint8),
                        "vis": vi_bgr[..., ::-1].copy(),
                        "mask_ir": result.mask_ir,
                        "mask_vis": result.mask_vis,
                        "f1": result.preliminary,
                        "final": result.fused,
                        "pixel_max": maximum_with_visible_chroma(ir_gray, vi_bgr[..., ::-1]),
                        "peers": {k: v for k, v in peer_images.items() if sheet_peers is None or k in sheet_peers},
                    }
                )
            replays = sum(v for k, v in timing.items() if k.startswith("ablation:"))
            timing["metrics"] = (time.perf_counter() - t_fused) * 1000.0 - replays
            timings.append(timing)
            jsonl.write(json.dumps({"stem": stem, "metrics": row, "timings_ms": timing}, default=_json_default) + "\n")
            jsonl.flush()
            log(
                f"[{index}/{len(pairs)}] {stem}: fuse {timing['total']:.0f} ms, "
                f"metrics {timing['metrics']:.0f} ms"
                + (f", ablation re-runs {replays:.0f} ms" if replays else "")
                + ", "
                f"ours EN {row[OURS]['EN']:.3f} Qabf {row[OURS]['Qabf']:.3f}"
            )
    finally:
        pipeline.refiner = original_refiner
        jsonl.close()

    summary = _summarise(
        methods, ablation_rows, variants, peers, stems, pipeline, timings, dataset, command, has_stage2
    )
    (out / "results.json").write_text(json.dumps(_sanitise(summary), indent=1) + "\n")
    report.write_reports(summary, out, sheet, tile_width=sheet_tile)
    log(f"wrote {out / 'report.md'}, {out / 'results.json'}, {out / 'contact_sheet.png'}, {out / 'metrics_bar.png'}")
    return summary


def _summarise(
    methods: dict[str, _Method],
    ablation_rows: dict[str, _Method],
    variants: list[AblationVariant],
    peers: dict[str, dict[str, Path]],
    stems: list[str],
    pipeline: FusionPipeline,
    timings: list[dict[str, float]],
    dataset: str,
    command: str,
    has_stage2: bool,
) -> dict[str, Any]:
    method_summaries = {key: m.summary() for key, m in methods.items()}
    ours = methods[OURS].per_image

    comparisons = []
    for key, m in methods.items():
        if m.kind == "ours" or not m.per_image:
            continue
        subset = list(m.per_image)
        ours_mean = mean_metrics(ours, subset)
        other_mean = method_summaries[key]["mean"]
        entry = {
            "method": key,
            "label": m.label,
            "kind": m.kind,
            "n": len(subset),
            "stems": subset,
            "other_mean": other_mean,
            "ours_mean": ours_mean,
            "ours_at_least": compare(ours_mean, other_mean),
        }
        if has_stage2:
            f1_mean = mean_metrics(methods[OURS_F1].per_image, subset)
            entry["ours_f1_mean"] = f1_mean
            entry["ours_f1_at_least"] = compare(f1_mean, other_mean)
        comparisons.append(entry)

    # The Stage I target rule, against every peer that covers all pairs (and pixel max on the same pairs).
    pixel_max = method_summaries.get("pixel maximum", {}).get("mean")
    rules = []
    for entry in comparisons:
        if entry["kind"] == "peer" and entry["n"] == len(stems) and pixel_max:
            for key in ("ours", "ours_f1") if has_stage2 else ("ours",):
                rule = quality_rule(entry[f"{key}_mean"], entry["other_mean"], pixel_max)
                rules.append(
                    {
                        "ours": key,
                        "peer": entry["label"],
                        "passed": rule.passed,
                        "at_least_peer": list(rule.at_least_peer),
                        "above_max": list(rule.above_max),
                        "text": rule.describe(),
                    }
                )

    stage2_check = None
    if has_stage2:
        result = stage2_rule(mean_metrics(ours, stems), mean_metrics(methods[OURS_F1].per_image, stems))
        stage2_check = {"passed": result.passed, "change": result.change, "text": result.describe()}

    ablation = None
    if variants:
        full = ablation_rows["full"].per_image
        rows = []
        for v in variants:
            m = ablation_rows[v.key]
            entry: dict[str, Any] = {
                "key": v.key,
                "label": v.label,
                "description": v.description,
                "available": not v.unavailable,
                "note": v.unavailable,
                "refiner": getattr(v.refiner, "name", None) if not v.unavailable else None,
                "n": len(m.per_image),
            }
            if m.per_image:
                entry["mean"] = mean_metrics(m.per_image, list(m.per_image))
                entry["per_image"] = m.per_image
                if full and v.key != "full":
                    entry["full_at_least"] = compare(mean_metrics(full, list(m.per_image)), entry["mean"])
            rows.append(entry)
        ablation = {"n": len(stems), "rows": rows}

    order = ["preprocess", "prior", "stage1", "stage2", "postprocess", "total", "metrics"]
    stage_names = sorted({k for t in timings for k in t}, key=lambda k: (order.index(k) if k in order else 99, k))
    timing_mean = {k: float(np.mean([t[k] for t in timings if k in t])) for k in stage_names}
    refiner = pipeline.refiner
    return {
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": command,
        "dataset": dataset,
        "n_pairs": len(stems),
        "stems": stems,
        "metric_names": list(METRIC_NAMES),
        "tie_tolerance": TIE_TOLERANCE,
        "pipeline": {
            "prior": pipeline.prior_name,
            "stage2": refiner.name if refiner is not None else None,
            "device": str(pipeline.device),
            "config": pipeline.config.as_flat_dict(),
        },
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "peers": {name: sorted(files) for name, files in peers.items()},
        "methods": method_summaries,
        "comparisons": comparisons,
        "quality_rule": rules,
        "stage2_rule": stage2_check,
        "ablations": ablation,
        "timings_ms_mean": timing_mean,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _sanitise(value: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitise(v) for v in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value
