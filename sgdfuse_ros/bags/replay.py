"""``sgdfuse bag eval``: replay a bag through the fusion pipeline offline (:func:`evaluate_bag`).

Pairs with :class:`~sgdfuse_ros.sync.ApproximateSync`, runs each pair through the node's frame core
(:class:`~sgdfuse_ros.frame_core.FrameCore`), writes an output bag (fused image, masks,
``sgdfuse_ros/msg/FusionStats``) and a report folder (built by :mod:`sgdfuse_ros.bags.report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..sync import ApproximateSync, PairAccounting, stamp_ns
from .bag_io import (
    DEFAULT_RGB_TOPIC,
    DEFAULT_THERMAL_TOPIC,
    FUSION_STATS,
    OUTPUT_TOPICS,
    BagError,
    BagMessage,
    BagWriter,
    deserialize,
    image_message,
    image_topics,
    iter_raw,
    open_bag,
    resolve_format,
    staged_output,
    typestore,
)
from .report import OutputFormat, ReplayInput, ReplayTally, _build_report, _plot, _Samples, render_report_md

if TYPE_CHECKING:  # heavy imports (torch) only where a pipeline is built
    from ..config import FuseConfig
    from ..frame_core import FrameStats
    from ..pipeline import FusionPipeline


@dataclass
class _Pending:
    """A decoded-later image message waiting in the synchroniser."""

    message: BagMessage
    msg: Any
    stamp: int


def metric_sources(
    thermal: np.ndarray, thermal_encoding: str, rgb: np.ndarray, rgb_encoding: str, config: FuseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Source images for sgdfuse_ros.metrics, on the fused grid: (thermal uint8 [H, W], visible BGR uint8 [H, W, 3]).

    Thermal uses the *fixed* configured range (stateless, so metrics do not depend on the order of
    frames) and the configured registration, exactly like the pipeline's preprocessing.
    """
    from dataclasses import replace

    from ..imaging import ThermalScaler, register_thermal, rgb_to_float

    visible = rgb_to_float(rgb, rgb_encoding)
    scaled = ThermalScaler(replace(config.thermal, scaling="fixed")).scale(thermal, thermal_encoding)
    registered = register_thermal(scaled, visible.shape[:2], config.registration)
    ir = np.clip(np.rint(registered * 255.0), 0, 255).astype(np.uint8)
    vis = np.clip(np.rint(visible[:, :, ::-1] * 255.0), 0, 255).astype(np.uint8)
    return ir, np.ascontiguousarray(vis)


def _stats_message(store: Any, header: Any, stats: FrameStats) -> Any:
    """FusionStats (rosbags type) with the same field values the node publishes for this frame."""
    stage_timing = store.types["sgdfuse_ros/msg/StageTiming"]
    fields = stats.message_fields()
    fields["dropped_counts"] = np.array(fields["dropped_counts"], dtype=np.uint64)
    timings = [stage_timing(stage=k, milliseconds=float(v)) for k, v in stats.timings_ms.items()]
    return store.types[FUSION_STATS](header=header, timings=timings, **fields)


def evaluate_bag(
    bag_path: str | Path,
    out: str | Path,
    config: FuseConfig,
    *,
    thermal_topic: str = DEFAULT_THERMAL_TOPIC,
    rgb_topic: str = DEFAULT_RGB_TOPIC,
    distro: str = "kilted",
    storage: str | None = None,
    version: int | None = None,
    metrics: bool = True,
    sample_frames: int = 6,
    overwrite: bool = False,
    pipeline: FusionPipeline | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Replay a bag through the node's fusion path offline; write ``out/bag`` and ``out/report/``.

    Messages of the two topics go, in log-time order, through :class:`ApproximateSync` configured
    with ``node.sync_queue_size`` / ``node.sync_slop`` (reset after a backwards time jump, as the node's
    pairing); every pair goes through the node's frame core (:class:`~sgdfuse_ros.frame_core.FrameCore`:
    decoding, error policy, accounting, stats), unlike the live node never dropping a pair for being busy.
    A sticky CUDA error (FatalDeviceError) ends the run with BagError.

    The output bag holds /fused/image (rgb8), /fused/mask/ir,
    /fused/mask/vis (mono8), all with the RGB header, and /fused/stats (sgdfuse_ros/msg/FusionStats),
    logged at the log time of the message that completed the pair. The report folder holds
    report.json, report.md, contact_sheet.png, metrics.png and latency.png.

    ``out`` appears only when everything succeeded (BagError otherwise, saying nothing was written).
    Returns the report dict.
    """
    from .. import metrics as fusion_metrics
    from ..frame_core import FatalDeviceError, FrameCore, FrameOutcome

    say = progress or (lambda text: None)
    store = typestore(distro)
    storage, version = resolve_format(distro, storage, version)
    bag_path = Path(bag_path)
    slop, queue_size = config.node.sync_slop, config.node.sync_queue_size
    with open_bag(bag_path) as bag, staged_output(out, overwrite=overwrite) as staging:
        types = image_topics(bag, thermal_topic, rgb_topic)
        counts = {c.topic: int(c.msgcount) for c in bag.reader.connections}
        expected_pairs = min(counts.get(thermal_topic, 0), counts.get(rgb_topic, 0))
        if pipeline is None:
            from ..pipeline import FusionPipeline

            pipeline = FusionPipeline.from_config(config)
        say(f"prior: {pipeline.prior_name}; device: {pipeline.device}")
        staging.mkdir()
        report_dir = staging / "report"
        report_dir.mkdir()
        writer = BagWriter(staging / "bag", storage, version, distro)
        sync = ApproximateSync(queue_size, slop, reset_on_time_jump=True)
        counters = PairAccounting(slop, queue_size)
        core = FrameCore(pipeline, counters)
        samples = _Samples(expected_pairs, sample_frames)
        metrics_s = 0.0
        frames: list[dict] = []
        first_log = last_log = None

        def deliver(thermal_item: _Pending, rgb_item: _Pending, log_time: int, outcome: FrameOutcome) -> None:
            """Write one completed pair's outputs (at the log time of the message that completed it) and report it."""
            nonlocal metrics_s
            if outcome.result is None:
                say(f"dropped pair at RGB stamp {rgb_item.stamp} ({outcome.drop_reason}): {outcome.drop_message}")
                return
            result = outcome.result
            header = rgb_item.msg.header
            for key, image, encoding in (
                ("fused", result.fused, "rgb8"),
                ("mask_ir", result.mask_ir, "mono8"),
                ("mask_vis", result.mask_vis, "mono8"),
            ):
                out_msg = image_message(store, image, encoding, rgb_item.stamp, header.frame_id)
                writer.write(OUTPUT_TOPICS[key], out_msg, log_time)
            stats = core.complete(outcome)
            writer.write(OUTPUT_TOPICS["stats"], _stats_message(store, header, stats), log_time)
            index_fused = stats.counters["fused"] - 1
            frames.append(
                {
                    "index": index_fused,
                    "stamp_ns": rgb_item.stamp,
                    "thermal_stamp_ns": thermal_item.stamp,
                    "stamp_difference_ms": stats.stamp_difference_ms,
                    "log_time_ns": log_time,
                    "latency_ms": stats.latency_ms,
                    "timings_ms": dict(result.timings_ms),
                    "width": int(result.fused.shape[1]),
                    "height": int(result.fused.shape[0]),
                }
            )
            metrics_started = time.perf_counter()
            if metrics or index_fused in samples.indices:
                ir_src, vis_src = metric_sources(*outcome.inputs, config)
                if metrics:
                    values = fusion_metrics.evaluate(
                        np.ascontiguousarray(result.fused[:, :, ::-1]), ir_src, vis_src
                    )
                    frames[-1]["metrics"] = {k: float(v) for k, v in values.items()}
                samples.offer(
                    index_fused,
                    f"#{index_fused} t={rgb_item.stamp / 1e9:.3f}",
                    (ir_src, vis_src[:, :, ::-1], result.fused, result.mask_ir, result.mask_vis),
                )
            metrics_s += time.perf_counter() - metrics_started
            if (index_fused + 1) % 10 == 0:
                say(f"{index_fused + 1} frames fused")

        started = time.perf_counter()
        try:
            for message in iter_raw(bag, (thermal_topic, rgb_topic)):
                first_log = message.log_time if first_log is None else first_log
                last_log = message.log_time
                msg = deserialize(bag, message, store)
                index = 0 if message.topic == thermal_topic else 1
                stamp = stamp_ns(msg.header)
                jumps_before = sync.time_jumps
                pair = sync.add(index, stamp, _Pending(message, msg, stamp))
                if sync.time_jumps > jumps_before:  # the node resets its pairing the same way
                    counters.on_time_jump()
                    say(f"time jump at stamp {stamp} on {('thermal', 'rgb')[index]}: pairing reset")
                counters.on_message(index, stamp)
                if pair is None:
                    continue
                thermal_item, rgb_item = pair
                counters.on_pair(thermal_item.stamp, rgb_item.stamp)
                try:
                    done = core.submit(thermal_item.msg, rgb_item.msg, time.monotonic(),
                                       (thermal_item, rgb_item, message.log_time))
                except FatalDeviceError as error:
                    raise BagError(f"{error}; nothing was written") from None
                for tag, outcome in done:
                    deliver(*tag, outcome)
            try:
                for tag, outcome in core.flush():  # the pair still in flight (compute.pipeline_prior)
                    deliver(*tag, outcome)
            except FatalDeviceError as error:
                raise BagError(f"{error}; nothing was written") from None
            sync.finish()
        finally:
            writer.close()
        wall = time.perf_counter() - started
        report = _build_report(
            ReplayInput(
                bag_path=bag_path,
                types=types,
                thermal_topic=thermal_topic,
                rgb_topic=rgb_topic,
                first_log=first_log,
                last_log=last_log,
            ),
            OutputFormat(storage=storage, version=version, distro=distro),
            ReplayTally(
                sync=sync,
                counters=counters,
                frames=frames,
                wall=wall,
                metrics_s=metrics_s,
            ),
            config,
            pipeline,
            metrics=metrics,
        )
        report["pipeline"]["decoder"] = "sgdfuse_ros.messages"
        if samples.write(report_dir / "contact_sheet.png"):
            report["files"].append("report/contact_sheet.png")
        report["files"] += [f"report/{name}" for name in _plot(report, report_dir)]
        (report_dir / "report.json").write_text(json.dumps(report, indent=2))
        (report_dir / "report.md").write_text(render_report_md(report))
    return report
