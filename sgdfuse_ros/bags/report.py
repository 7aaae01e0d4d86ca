"""The report of an offline evaluation: report.json contents, report.md, contact sheet and plots.

:func:`_build_report` assembles the report dict from what :func:`~sgdfuse_ros.bags.replay.evaluate_bag`
read (:class:`ReplayInput`), wrote (:class:`OutputFormat`) and counted (:class:`ReplayTally`);
:func:`render_report_md` turns it into report.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..sync import ApproximateSync, PairAccounting
from .bag_io import OUTPUT_TOPICS

if TYPE_CHECKING:  # heavy imports (torch) only where a pipeline is built
    from ..config import FuseConfig
    from ..pipeline import FusionPipeline


@dataclass(frozen=True, kw_only=True)
class ReplayInput:
    """What an evaluation read: the bag, its two image topics and types, and the log-time span replayed."""

    bag_path: Path
    types: dict[str, str]  #: {"thermal": msgtype, "rgb": msgtype}, as :func:`~sgdfuse_ros.bags.image_topics` says
    thermal_topic: str
    rgb_topic: str
    first_log: int | None  #: log time (ns) of the first message read; None when the topics were empty
    last_log: int | None  #: log time (ns) of the last message read


@dataclass(frozen=True, kw_only=True)
class OutputFormat:
    """How the evaluation's output bag was written."""

    storage: str  #: mcap | sqlite3
    version: int  #: rosbag2 metadata version
    distro: str  #: type store the messages were serialised with


@dataclass(frozen=True, kw_only=True)
class ReplayTally:
    """What an evaluation counted and measured while replaying."""

    sync: ApproximateSync  #: the synchroniser, finished (its accounting is the report's pairing section)
    counters: PairAccounting  #: the node's pair counters (fused, dropped by reason ...), as its stats report them
    frames: list[dict]  #: one record per fused pair
    wall: float  #: seconds of the whole replay
    metrics_s: float  #: seconds of that spent on metrics and thumbnails


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(array.max()),
    }


def _thumb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 grey or RGB image -> RGB uint8 letterboxed into size (w, h)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    new = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), np.uint8)
    y, x = (height - new[1]) // 2, (width - new[0]) // 2
    canvas[y : y + new[1], x : x + new[0]] = small
    return canvas


class _Samples:
    """Thumbnails of evenly spaced frames for the contact sheet."""

    COLUMNS = ("thermal", "visible", "fused", "mask_ir", "mask_vis")
    CELL = (192, 144)

    def __init__(self, expected: int, wanted: int) -> None:
        wanted = max(0, min(wanted, expected))
        self.indices = set(np.linspace(0, expected - 1, wanted).round().astype(int).tolist()) if wanted else set()
        self.rows: list[tuple[str, list[np.ndarray]]] = []

    def offer(self, index: int, label: str, images: Sequence[np.ndarray]) -> None:
        if index in self.indices:
            self.rows.append((label, [_thumb(image, self.CELL) for image in images]))

    def write(self, path: Path) -> bool:
        if not self.rows:
            return False
        width, height = self.CELL
        header = np.full((24, width * len(self.COLUMNS), 3), 255, np.uint8)
        for col, name in enumerate(self.COLUMNS):
            cv2.putText(header, name, (col * width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        blocks = [header]
        for label, cells in self.rows:
            row = np.concatenate(cells, axis=1)
            cv2.putText(row, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
            blocks.append(row)
        sheet = np.concatenate(blocks, axis=0)
        return bool(cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)))


def _plot(report: dict, folder: Path) -> list[str]:
    """metrics.png and latency.png (matplotlib, Agg canvas; no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = report["frames"]
    written = []
    if not frames:
        return written
    t0 = frames[0]["stamp_ns"]
    times = np.array([(f["stamp_ns"] - t0) / 1e9 for f in frames])
    names = [n for n in report["metrics"]["mean"]] if report.get("metrics") else []
    if names:
        fig = Figure(figsize=(12, 8), dpi=90)
        FigureCanvasAgg(fig)
        for k, name in enumerate(names):
            ax = fig.add_subplot(3, 3, k + 1)
            values = [f["metrics"].get(name, np.nan) for f in frames]
            ax.plot(times, values, ".-", linewidth=0.8, markersize=3)
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.supxlabel("RGB stamp - first stamp (s)")
        fig.suptitle(f"Fusion metrics per frame: {report['input']['path']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / "metrics.png")
        written.append("metrics.png")
    latency = np.array([f["latency_ms"] for f in frames])
    fig = Figure(figsize=(12, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(times, latency, ".-", linewidth=0.8, markersize=3)
    ax.set_xlabel("RGB stamp - first stamp (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.hist(latency, bins=min(40, max(5, len(latency) // 2)))
    stats = report["latency_ms"]
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ax2.axvline(stats[key], color="k", linestyle=style, label=f"{key} {stats[key]:.1f} ms")
    ax2.set_xlabel("latency (ms)")
    ax2.legend(fontsize=8)
    fig.suptitle("Per-frame latency (pair complete -> outputs ready), offline", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "latency.png")
    written.append("latency.png")
    return written


def _build_report(
    inputs: ReplayInput,
    output: OutputFormat,
    tally: ReplayTally,
    config: FuseConfig,
    pipeline: FusionPipeline,
    *,
    metrics: bool,
) -> dict:
    """The report dict (report.json) of one evaluation; ``metrics``: whether frames carry fusion metrics."""
    from ..metrics import METRIC_NAMES

    frames, fused, wall, metrics_s = tally.frames, tally.counters.fused, tally.wall, tally.metrics_s
    dropped = dict(tally.counters.dropped)
    pairing = tally.sync.accounting()
    pending_thermal, pending_rgb = tally.counters.pending()
    pairing.update(
        slop_s=config.node.sync_slop,
        queue_size=config.node.sync_queue_size,
        fused=fused,
        dropped=sum(dropped.values()),
        dropped_by_reason=dict(sorted(dropped.items())),
        node_counters={
            "paired": tally.counters.paired,
            "unpaired_thermal": tally.counters.unpaired[0],
            "unpaired_rgb": tally.counters.unpaired[1],
            "pending_thermal": pending_thermal,
            "pending_rgb": pending_rgb,
        },
    )
    stamp_differences = [abs(f["stamp_difference_ms"]) for f in frames]
    first_log, last_log = inputs.first_log, inputs.last_log
    duration = (last_log - first_log) / 1e9 if first_log is not None and last_log is not None else 0.0
    report: dict[str, Any] = {
        "input": {
            "path": str(inputs.bag_path),
            "thermal_topic": inputs.thermal_topic,
            "thermal_type": inputs.types["thermal"],
            "rgb_topic": inputs.rgb_topic,
            "rgb_type": inputs.types["rgb"],
            "duration_s": duration,
        },
        "pipeline": {
            "prior": pipeline.prior_name,
            "device": str(pipeline.device),
            "stage1_weights": config.stage1.weights or "shipped default",
            "thermal_scaling": config.thermal.scaling,
            "registration": config.registration.mode,
        },
        "output": {
            "bag": "bag",
            "storage": output.storage,
            "version": output.version,
            "distro": output.distro,
            "topics": dict(OUTPUT_TOPICS),
        },
        "pairing": pairing,
        "stamp_difference_abs_ms": _percentiles(stamp_differences),
        "latency_ms": _percentiles([f["latency_ms"] for f in frames]),
        "fusion_total_ms": _percentiles([f["timings_ms"].get("total", 0.0) for f in frames]),
        "throughput": {
            "frames": fused,
            "wall_s": wall,
            "metrics_s": metrics_s,
            "fps": fused / (wall - metrics_s) if wall > metrics_s else None,
            "bag_duration_s": duration,
            "realtime_factor": duration / (wall - metrics_s) if wall > metrics_s and duration > 0 else None,
        },
        "metrics": None,
        "frames": frames,
        "files": ["bag", "report/report.json", "report/report.md"],
    }
    if metrics and frames:
        table = {name: np.array([f["metrics"][name] for f in frames]) for name in METRIC_NAMES}
        report["metrics"] = {
            stat: {name: float(fn(values)) for name, values in table.items()}
            for stat, fn in (
                ("mean", np.mean),
                ("std", np.std),
                ("min", np.min),
                ("median", np.median),
                ("max", np.max),
            )
        }
    return report


def render_report_md(report: dict) -> str:
    """Human-readable summary of an evaluation report (report.md)."""
    p = report["pairing"]
    lat, fus, thr = report["latency_ms"], report["fusion_total_ms"], report["throughput"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"# Offline evaluation of `{report['input']['path']}`",
        "",
        f"Thermal `{report['input']['thermal_topic']}` ({report['input']['thermal_type']}), RGB "
        f"`{report['input']['rgb_topic']}` ({report['input']['rgb_type']}); bag span "
        f"{report['input']['duration_s']:.2f} s. Prior `{report['pipeline']['prior']}` on "
        f"`{report['pipeline']['device']}`, Stage I weights: {report['pipeline']['stage1_weights']}; image "
        f"messages decoded by `{report['pipeline'].get('decoder', '?')}`.",
        "",
        "## Pairing (ApproximateTimeSynchronizer rule, docs/bags.md)",
        "",
        f"slop {p['slop_s'] * 1000:.1f} ms, queue size {p['queue_size']}",
        "",
        "| | thermal | RGB |",
        "|---|---|---|",
        f"| messages in | {p['received']['thermal']} | {p['received']['rgb']} |",
        f"| paired | {p['pairs']} | {p['pairs']} |",
        f"| unpaired | {p['unpaired']['thermal']} | {p['unpaired']['rgb']} |",
    ]
    reasons = sorted(set(p["unpaired_by_reason"]["thermal"]) | set(p["unpaired_by_reason"]["rgb"]))
    for reason in reasons:
        lines.append(
            f"| - {reason} | {p['unpaired_by_reason']['thermal'].get(reason, 0)} | "
            f"{p['unpaired_by_reason']['rgb'].get(reason, 0)} |"
        )
    lines += [
        f"| stamps going backwards | {p['stamps_backwards']['thermal']} | {p['stamps_backwards']['rgb']} |",
        f"| stamps repeated | {p['stamps_repeated']['thermal']} | {p['stamps_repeated']['rgb']} |",
        "",
        f"Pairs formed {p['pairs']}, fused {p['fused']}, dropped {p['dropped']}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in p["dropped_by_reason"].items()) + ")" if p["dropped"] else "")
        + f". |thermal - RGB stamp| of fused pairs: p50 {ms(report['stamp_difference_abs_ms']['p50'])} ms, "
        f"max {ms(report['stamp_difference_abs_ms']['max'])} ms.",
        "",
        "## Latency and throughput",
        "",
        "| ms | mean | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
        f"| latency (pair complete -> outputs ready) | {ms(lat['mean'])} | {ms(lat['p50'])} | {ms(lat['p95'])} | "
        f"{ms(lat['p99'])} | {ms(lat['max'])} |",
        f"| pipeline total | {ms(fus['mean'])} | {ms(fus['p50'])} | {ms(fus['p95'])} | {ms(fus['p99'])} | "
        f"{ms(fus['max'])} |",
        "",
        f"{thr['frames']} frames in {thr['wall_s'] - thr['metrics_s']:.2f} s of reading, decoding, fusing and "
        f"writing = "
        + (f"{thr['fps']:.2f} frames/s" if thr["fps"] else "-")
        + (f", {thr['realtime_factor']:.2f}x the bag's real time" if thr["realtime_factor"] else "")
        + f" (metrics took another {thr['metrics_s']:.2f} s).",
        "",
        "Node-rule counters (what the live node's fused/stats would report, PairAccounting): "
        f"paired {p['node_counters']['paired']}, unpaired thermal {p['node_counters']['unpaired_thermal']} / "
        f"RGB {p['node_counters']['unpaired_rgb']}, still pending at the end thermal "
        f"{p['node_counters']['pending_thermal']} / RGB {p['node_counters']['pending_rgb']}.",
        "",
    ]
    if report.get("metrics"):
        names = list(report["metrics"]["mean"])
        lines += [
            "## Fusion metrics (sgdfuse_ros.metrics)",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for stat in ("mean", "std", "min", "median", "max"):
            lines.append(f"| {stat} | " + " | ".join(f"{report['metrics'][stat][n]:.4g}" for n in names) + " |")
        lines.append("")
    images = [f for f in report["files"] if f.endswith(".png")]
    if images:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in images] + [""]
    return "\n".join(lines)
