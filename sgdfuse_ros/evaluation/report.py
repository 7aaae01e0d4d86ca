"""Reports of an evaluation run: markdown tables, contact sheet and bar chart (results.json is written by ``run``).

Everything here reads the summary dictionary built by ``run.run_evaluation`` (the layout of results.json, see
docs/evaluation.md), so reports can be regenerated from a saved results.json:

    python -m sgdfuse_ros.evaluation.report out/eval/msrs/results.json     # rewrites report.md and the chart
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..metrics import METRIC_NAMES

__all__ = ["bar_chart", "comparison_sheet", "contact_sheet", "markdown_report", "write_reports"]

OURS = "ours"
OURS_F1 = "ours_f1"


# ----------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return f"{value:.4f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _bold_best(rows: list[list[str]], values: list[dict[str, float] | None], first_metric_col: int) -> None:
    """Bold the best value of each metric column among ``rows`` (in place)."""
    for j, name in enumerate(METRIC_NAMES):
        column = [v[name] if v and v[name] is not None and math.isfinite(v[name]) else -math.inf for v in values]
        if not column or max(column) == -math.inf:
            continue
        best = max(column)
        for i, value in enumerate(column):
            # Bold every row within display rounding of the best (4 decimals).
            if abs(value - best) < 5e-5:
                rows[i][first_metric_col + j] = f"**{rows[i][first_metric_col + j]}**"


def _count(entry: dict[str, Any] | None) -> str:
    return f"{entry['count']}/{entry['of']}" if entry else ""


def main_table(summary: dict[str, Any]) -> str:
    """Methods evaluated on every pair: ours, baselines and peers that cover all pairs."""
    n = summary["n_pairs"]
    comparisons = {c["method"]: c for c in summary["comparisons"]}
    rows, values = [], []
    for key, m in summary["methods"].items():
        if m["n"] != n:
            continue
        c = comparisons.get(key)
        rows.append(
            [m["label"], str(m["n"]), *(_fmt(m["mean"][k]) for k in METRIC_NAMES), _count(c and c["ours_at_least"])]
        )
        values.append(m["mean"])
    _bold_best(rows, values, 2)
    return _table(["method", "n", *METRIC_NAMES, "ours ≥ it (of 9)"], rows)


def peer_table(summary: dict[str, Any]) -> str:
    """Each published method on exactly the pairs it covers, next to our mean on that same subset."""
    rows = []
    for c in summary["comparisons"]:
        if c["kind"] != "peer":
            continue
        rows.append([c["label"], str(c["n"]), *(_fmt(c["other_mean"][k]) for k in METRIC_NAMES), ""])
        rows.append(
            [
                f"ours on the same {c['n']}",
                str(c["n"]),
                *(_fmt(c["ours_mean"][k]) for k in METRIC_NAMES),
                _count(c["ours_at_least"]),
            ]
        )
        if "ours_f1_mean" in c:
            rows.append(
                [
                    f"ours F1 on the same {c['n']}",
                    str(c["n"]),
                    *(_fmt(c["ours_f1_mean"][k]) for k in METRIC_NAMES),
                    _count(c["ours_f1_at_least"]),
                ]
            )
    if not rows:
        return "_No peer outputs found for these pairs._"
    return _table(["method", "n", *METRIC_NAMES, "ours ≥ peer (of 9)"], rows)


def _deltas(full: dict[str, float] | None, variant: dict[str, float] | None, threshold: float = 1.0) -> str:
    """Relative change of ``variant`` against ``full`` per metric, largest first, only beyond ``threshold`` %."""
    if not full or not variant:
        return ""
    changes = []
    for name in METRIC_NAMES:
        a, b = full[name], variant[name]
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == 0:
            continue
        changes.append((100.0 * (b - a) / abs(a), name))
    shown = sorted((c for c in changes if abs(c[0]) >= threshold), key=lambda c: -abs(c[0]))
    if not shown:
        return f"all within {threshold:g} %"
    return ", ".join(f"{name} {value:+.1f} %" for value, name in shown)


def ablation_table(summary: dict[str, Any]) -> str:
    """Ablation rows; unavailable variants say why instead of showing numbers."""
    ablation = summary.get("ablations")
    if not ablation:
        return "_Ablations not run (use --ablations)._"
    full = next((r.get("mean") for r in ablation["rows"] if r["key"] == "full"), None)
    rows, values = [], []
    for r in ablation["rows"]:
        if r.get("mean"):
            cells = [_fmt(r["mean"][k]) for k in METRIC_NAMES]
            values.append(r["mean"])
        else:
            cells = ["—"] * len(METRIC_NAMES)
            values.append(None)
        delta = _deltas(full, r.get("mean")) if r["key"] != "full" else ""
        rows.append(
            [
                r["label"],
                str(r["n"]),
                *cells,
                _count(r.get("full_at_least")),
                delta,
                r["note"] or r["description"],
            ]
        )
    _bold_best(rows, values, 2)
    return _table(["variant", "n", *METRIC_NAMES, "full ≥ it (of 9)", "change vs full (beyond ±1 %)", "note"], rows)


def rule_lines(summary: dict[str, Any]) -> str:
    """One line per (our output, peer covering every pair): the target rule's verdict."""
    rules = summary.get("quality_rule") or []
    if not rules:
        return "No published method covers every pair: the rule needs one (and pixel max)."
    return "\n".join(f"- {r['ours']} vs {r['peer']} and pixel maximum: {r['text']}" for r in rules)


def markdown_report(summary: dict[str, Any]) -> str:
    """The whole report.md."""
    pipe = summary["pipeline"]
    lines = [
        f"# Evaluation: {summary['dataset'] or 'dataset'}",
        "",
        f"- command: `{summary['command']}`" if summary.get("command") else "- command: (library call)",
        f"- created: {summary['created']}; {summary['n_pairs']} pair(s)",
        f"- pipeline: prior `{pipe['prior']}`, Stage II `{pipe['stage2'] or 'none (Stage I only)'}`, "
        f"device `{pipe['device']}`",
        "- metrics: sgdfuse_ros.metrics (all higher is better), on the grayscale images as the reference "
        "evaluator reads the files; means over the n pairs of each row.",
        f'- "ours ≥ X (of 9)": metrics where our mean ≥ X\'s mean on the same pairs, ties within '
        f"{summary['tie_tolerance'] * 100:g} % counted as ≥. Bold: best in the column.",
        "",
        f"## All {summary['n_pairs']} pairs",
        "",
        main_table(summary),
        "",
        "## Published methods, each on the pairs it covers",
        "",
        peer_table(summary),
        "",
        "## Stage I target rule (evaluation.targets.quality_rule)",
        "",
        rule_lines(summary),
        "",
        "## Stage II rule (evaluation.targets.stage2_rule)",
        "",
        (summary.get("stage2_rule") or {}).get("text", "Stage II did not run."),
        "",
        "## Ablations",
        "",
        ablation_table(summary),
        "",
        "## Mean time per pair (ms)",
        "",
        _table(
            ["stage", "ms"],
            [[k, f"{v:.0f}"] for k, v in summary["timings_ms_mean"].items()],
        ),
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Contact sheet
# ----------------------------------------------------------------------------------------------------------

_LABEL_H = 20
_PAD = 4


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return image


def _tile(image: np.ndarray | None, label: str, width: int, height: int) -> np.ndarray:
    """One labelled tile: a label bar above ``image`` resized to ``width`` x ``height`` (grey when missing)."""
    tile = np.full((_LABEL_H + height, width, 3), 255, np.uint8)
    if image is None:
        tile[_LABEL_H:] = 200
        cv2.putText(
            tile,
            "n/a",
            (width // 2 - 15, _LABEL_H + height // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (90, 90, 90),
            1,
            cv2.LINE_AA,
        )
    else:
        tile[_LABEL_H:] = cv2.resize(_as_rgb(image), (width, height), interpolation=cv2.INTER_AREA)
    cv2.putText(tile, label[:34], (3, _LABEL_H - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def contact_sheet(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    peer_order: Sequence[str] = (),
    stage2: bool = True,
    tile_width: int = 240,
) -> np.ndarray | None:
    """Write a PNG with one row per sample pair: IR, VIS, M_ir, M_vis, F1, final, pixel max, then the peers.

    Args:
        rows: dicts with "stem", "ir" (uint8 [H,W]), "vis", "f1", "final" (uint8 RGB [H,W,3]), "mask_ir",
            "mask_vis" (uint8 [H,W]), optionally "pixel_max" (uint8 RGB: max(IR, Y_vis) with the visible colour)
            and "peers" ({method: uint8 RGB [H,W,3]}).
        peer_order: peer columns, in this order (only those present in some row are shown).
    Returns:
        The sheet as uint8 RGB, or None when ``rows`` is empty (nothing is written).
    """
    if not rows:
        return None
    present = {name for r in rows for name in r["peers"]}
    peers = [p for p in peer_order if p in present] + sorted(present - set(peer_order))
    final_label = "final (Stage II)" if stage2 else "final (= F1, no Stage II)"
    lines = []
    for r in rows:
        h, w = r["final"].shape[:2]
        height = max(1, round(tile_width * h / w))
        tiles = [
            _tile(r["ir"], f"IR {r['stem']}", tile_width, height),
            _tile(r["vis"], "VIS", tile_width, height),
            _tile(r["mask_ir"], "M_ir", tile_width, height),
            _tile(r["mask_vis"], "M_vis", tile_width, height),
            _tile(r["f1"], "F1 (Stage I)", tile_width, height),
            _tile(r["final"], final_label, tile_width, height),
        ]
        if "pixel_max" in r:
            tiles.append(_tile(r["pixel_max"], "max(IR, Y_vis) + colour", tile_width, height))
        tiles += [_tile(r["peers"].get(p), p, tile_width, height) for p in peers]
        spacer = np.full((_LABEL_H + height, _PAD, 3), 255, np.uint8)
        line = np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1)
        lines.append(line)
        lines.append(np.full((_PAD, line.shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(lines[:-1], axis=0)
    _write_png(sheet, path)
    return sheet


def _write_png(sheet: np.ndarray, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Highest PNG compression: the sheets are committed under docs/ and should stay small.
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")


def _stack_rows(rows_of_tiles: Sequence[list[np.ndarray]]) -> np.ndarray:
    """Tiles of equal height per row -> one image, rows left-aligned on white, ``_PAD`` px apart."""
    lines = []
    for tiles in rows_of_tiles:
        spacer = np.full((tiles[0].shape[0], _PAD, 3), 255, np.uint8)
        lines.append(np.concatenate([x for t in tiles for x in (t, spacer)][:-1], axis=1))
    width = max(line.shape[1] for line in lines)
    padded = []
    for line in lines:
        line = np.pad(line, ((0, _PAD), (0, width - line.shape[1]), (0, 0)), constant_values=255)
        padded.append(line)
    return np.concatenate(padded, axis=0)[:-_PAD]


def comparison_sheet(
    rows: Sequence[dict[str, Any]], path: str | Path, stage2_name: str = "", tile_width: int = 160
) -> np.ndarray:
    """Write a PNG with one row per pair: IR, VIS, F1, final, a peer's output, pixel max (``sgdfuse sheet``).

    Args:
        rows: dicts with "label", "ir" (uint8 [H,W]), "vis", "f1", "final", "pixel_max" (uint8 RGB [H,W,3]),
            "peer" (uint8 RGB or None) and "peer_name"; pairs may differ in size (each row keeps its aspect).
        stage2_name: the Stage II refiner's name ("" when the final image is F1).
    Returns:
        The sheet as uint8 RGB.
    """
    final_label = "final (Stage I+II)" if stage2_name else "final (= F1)"
    lines = []
    for r in rows:
        h, w = r["final"].shape[:2]
        height = max(1, round(tile_width * h / w))
        lines.append(
            [
                _tile(r["ir"], f"IR {r['label']}", tile_width, height),
                _tile(r["vis"], "VIS", tile_width, height),
                _tile(r["f1"], "F1 (Stage I)", tile_width, height),
                _tile(r["final"], final_label, tile_width, height),
                _tile(r["peer"], r["peer_name"], tile_width, height),
                _tile(r["pixel_max"], "max(IR, Y_vis)", tile_width, height),
            ]
        )
    sheet = _stack_rows(lines)
    _write_png(sheet, path)
    return sheet


# ----------------------------------------------------------------------------------------------------------
# Bar chart
# ----------------------------------------------------------------------------------------------------------


def bar_chart(summary: dict[str, Any], path: str | Path) -> list[str]:
    """Grouped bars of the metric means of the methods covering every pair, each metric divided by its best.

    Normalising per metric (best method = 1) puts EN (~7), SD (~40) and Qabf (~0.7) on one axis; the table has
    the raw values. Peers covering only some pairs are left out (they are compared on their subsets in the
    tables). Returns the labels of the methods drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = summary["n_pairs"]
    chosen = [(m["label"], m["mean"]) for m in summary["methods"].values() if m["n"] == n and m["mean"]]
    values = np.array([[mean[k] if mean[k] is not None else np.nan for k in METRIC_NAMES] for _, mean in chosen])
    scale = np.nanmax(np.abs(values), axis=0)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    normalised = values / scale
    fig, ax = plt.subplots(figsize=(13, 5.2), dpi=110)
    width = 0.8 / max(1, len(chosen))
    x = np.arange(len(METRIC_NAMES))
    for i, (label, _) in enumerate(chosen):
        ax.bar(x + (i - (len(chosen) - 1) / 2) * width, normalised[i], width, label=label)
    ax.set_xticks(x, [f"{k}\n(best {v:.3g})" for k, v in zip(METRIC_NAMES, scale, strict=True)])
    ax.set_ylabel("mean / best mean of the metric")
    ax.set_ylim(min(0.0, float(np.nanmin(normalised)) - 0.05), 1.08)
    ax.axhline(1.0, color="grey", lw=0.6)
    name = Path(summary["dataset"]).name if summary.get("dataset") else "dataset"
    ax.set_title(f"{name}: {n} pairs, each metric normalised by its best method")
    # Legend under the axes: inside, it would hide the short bars.
    ax.legend(fontsize=8, ncol=min(4, len(chosen)), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    plt.close(fig)
    return [label for label, _ in chosen]


# ----------------------------------------------------------------------------------------------------------


def write_reports(
    summary: dict[str, Any], out_dir: str | Path, sheet_rows: Sequence[dict[str, Any]] = (), tile_width: int = 240
) -> None:
    """report.md and metrics_bar.png from ``summary``; contact_sheet.png from ``sheet_rows`` (if any)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown_report(summary))
    bar_chart(summary, out / "metrics_bar.png")
    contact_sheet(
        sheet_rows,
        out / "contact_sheet.png",
        peer_order=list(summary["peers"]),
        stage2=bool(summary["pipeline"]["stage2"]),
        tile_width=tile_width,
    )


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sgdfuse_ros.evaluation.report RESULTS_JSON", file=sys.stderr)
        return 2
    path = Path(argv[0])
    summary = json.loads(path.read_text())
    write_reports(summary, path.parent)
    print(f"wrote {path.parent / 'report.md'} and {path.parent / 'metrics_bar.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
