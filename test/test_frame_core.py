"""The rclpy-free frame core shared by the node and the offline replay: decoding, error policy (faults injected
into a real FusionPipeline), accounting, configuration generations and the FusionStats content."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sgdfuse_ros import bags
from sgdfuse_ros.config import FuseConfig
from sgdfuse_ros.frame_core import OOM_CPU_FALLBACK_AFTER, FatalDeviceError, FrameCore
from sgdfuse_ros.pipeline import FusionPipeline
from sgdfuse_ros.sync import RGB, THERMAL, PairAccounting

PAIRS = Path(__file__).resolve().parent.parent / "samples" / "pairs"
STORE = bags.typestore()


class ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def pipeline() -> FusionPipeline:
    return FusionPipeline.from_config(FuseConfig().updated({"compute.torch_threads": 1}))


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    ir = cv2.resize(cv2.imread(str(PAIRS / "ir" / "FLIR_04269.jpg"), cv2.IMREAD_GRAYSCALE), (96, 72))
    vi = cv2.resize(cv2.imread(str(PAIRS / "vi" / "FLIR_04269.jpg"), cv2.IMREAD_COLOR), (96, 72))
    return ir, np.ascontiguousarray(vi[:, :, ::-1])


class Harness:
    """A FrameCore on the real pipeline, with pairs counted the way the node's pairing counts them."""

    def __init__(self, pipeline: FusionPipeline, images: tuple[np.ndarray, np.ndarray], config: FuseConfig) -> None:
        pipeline.config = config
        pipeline.device = torch.device("cpu")
        self.clock = ManualClock()
        self.accounting = PairAccounting(0.05, 10)
        self.core = FrameCore(pipeline, self.accounting, clock=self.clock)
        self.images = images
        self.stamp = 1_700_000_000 * 10**9

    def pair(self, thermal_encoding: str = "mono8"):
        self.stamp += 10**9
        ir, vi = self.images
        thermal = bags.image_message(STORE, ir, thermal_encoding, self.stamp + 2_000_000, "thermal")
        rgb = bags.image_message(STORE, vi, "rgb8", self.stamp, "rgb")
        self.accounting.on_message(THERMAL, self.stamp + 2_000_000)
        self.accounting.on_message(RGB, self.stamp)
        self.accounting.on_pair(self.stamp + 2_000_000, self.stamp)
        return thermal, rgb

    def run(self, thermal_encoding: str = "mono8"):
        outcome = self.core.process(*self.pair(thermal_encoding), received=self.clock())
        if outcome.result is not None:
            self.clock.now += 0.04
            return outcome, self.core.complete(outcome, stamp_age_ms=12.5)
        return outcome, None


@pytest.fixture
def harness(pipeline, images):
    original = (pipeline.config, pipeline.begin, pipeline.device)
    yield lambda **overrides: Harness(pipeline, images, FuseConfig().updated({"compute.torch_threads": 1, **overrides}))
    pipeline.config = original[0]
    pipeline.device = original[2]
    if "begin" in vars(pipeline):
        del pipeline.begin


def test_a_fused_pair_counts_and_carries_the_node_stats(harness):
    h = harness()
    outcome, stats = h.run()
    assert outcome.fused and outcome.result.fused.shape == (72, 96, 3)
    fields = stats.message_fields()
    assert fields["fused"] == fields["paired"] == fields["received_rgb"] == 1 and fields["dropped"] == 0
    assert fields["stamp_difference_ms"] == pytest.approx(2.0)
    assert fields["latency_ms"] == pytest.approx(40.0) and fields["stamp_age_ms"] == 12.5
    assert fields["config_generation"] == 0 and fields["time_jumps"] == 0
    assert set(stats.timings_ms) >= {"preprocess", "prior", "stage1", "total"}


def test_invalid_input_is_dropped_with_its_reason_and_never_counted_fused(harness):
    h = harness()
    outcome, stats = h.run(thermal_encoding="bgr8")
    assert stats is None and outcome.drop_reason == "thermal_encoding" and "bgr8" in outcome.drop_message
    counts = h.accounting.snapshot()
    assert counts["dropped_by_reason"] == {"thermal_encoding": 1} and counts["fused"] == 0
    assert h.core.health().consecutive_errors == 0  # bad input is not a pipeline fault


def test_oom_backs_off_and_retries_on_the_gpu_by_default(harness, pipeline):
    h = harness()
    pipeline.device = torch.device("cuda:0")  # no GPU here: the policy, not the allocator, is under test
    pipeline.begin = lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried"))
    backoffs = []
    for count in range(1, OOM_CPU_FALLBACK_AFTER + 3):
        outcome, _ = h.run()
        assert outcome.drop_reason == "cuda_oom" and f"{count} in a row" in outcome.drop_message
        backoffs.append(h.core.backoff_remaining())
    assert backoffs == [0.25, 0.5, 1.0, 2.0, 4.0]  # doubling, capped
    assert pipeline.device.type == "cuda" and h.core.health().device_note == ""  # never left the GPU
    h.clock.now += 4.0
    assert h.core.backoff_remaining() == 0.0
    pipeline.device = torch.device("cpu")
    del pipeline.begin
    outcome, _ = h.run()
    assert outcome.fused and h.core.health().consecutive_oom == 0  # success resets the streak


def test_oom_cpu_fallback_only_when_allowed_with_the_thread_count_set(harness, pipeline, monkeypatch, caplog):
    h = harness(**{"compute.oom_cpu_fallback": True, "compute.torch_threads": 1})
    pipeline.device = torch.device("cuda:0")
    moved = []

    def move(device):
        moved.append(str(device))
        pipeline.device = torch.device(device)

    monkeypatch.setattr(pipeline, "to", move)
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    pipeline.begin = lambda *a, **k: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    for _ in range(OOM_CPU_FALLBACK_AFTER):
        h.run()
    assert moved == ["cpu"] and threads == [1]
    assert "to the CPU (1 threads) after 3 consecutive" in h.core.health().device_note
    notes = [r.getMessage() for r in caplog.records if r.name == "sgdfuse_ros.frame_core" and r.levelname == "ERROR"]
    assert notes == [h.core.health().device_note]  # said once, through the library logger the node forwards


def test_sticky_cuda_error_is_fatal_after_the_configured_count_and_other_errors_are_not(harness, pipeline):
    h = harness(**{"compute.cuda_error_exit_after": 3})
    errors = iter(
        [RuntimeError("CUDA error: an illegal memory access was encountered")] * 2
        + [ValueError("shape mismatch")]  # breaks the streak
        + [RuntimeError("CUDA error: an illegal memory access was encountered")] * 3
    )

    def fuse(*args, **kwargs):
        raise next(errors)

    pipeline.begin = fuse
    for _ in range(5):
        outcome, _ = h.run()
        assert outcome.drop_reason == "pipeline_error"
    with pytest.raises(FatalDeviceError, match="3 consecutive CUDA errors"):
        h.run()
    counts = h.accounting.snapshot()
    assert counts["dropped_by_reason"] == {"pipeline_error": 6} and counts["paired"] == 6  # the fatal one counted
    assert h.core.health().consecutive_errors == 6


def test_cuda_error_exit_can_be_disabled(harness, pipeline):
    h = harness(**{"compute.cuda_error_exit_after": 0})
    pipeline.begin = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA error: device-side assert triggered"))
    for _ in range(5):
        assert h.run()[0].drop_reason == "pipeline_error"


def test_reconfigure_applies_between_frames_and_numbers_the_generation(harness, pipeline, images):
    h = harness()
    _, before = h.run()
    new = h.core.config.updated({"thermal.counts_min": 100.0, "prior.pred_iou_thresh": 0.5})
    assert h.core.reconfigure(new, {"thermal.counts_min", "prior.pred_iou_thresh"}) == 1
    assert pipeline.thermal_scaler.config.counts_min == 100.0 and pipeline.config is new
    outcome, after = h.run()
    assert before.config_generation == 0 and after.config_generation == outcome.config_generation == 1


def test_stats_fields_match_the_message_definition():
    """Every FusionStats field but header/timings comes from FrameStats.message_fields, and nothing else."""
    definition = (Path(bags.__file__).resolve().parent.parent / "message_definitions" / "FusionStats.msg").read_text()
    names = {line.split()[1] for line in definition.splitlines() if line.strip() and not line.lstrip().startswith("#")}
    from sgdfuse_ros.frame_core import FrameStats

    counters = {"dropped_by_reason": {}, "dropped": 0, "time_jumps": 0}
    counters.update({k: 0 for k in ("received_thermal", "received_rgb", "paired", "unpaired_thermal", "unpaired_rgb")})
    counters["fused"] = 0
    stats = FrameStats("fallback", "cpu", {}, 1.0, math.nan, 0.0, counters, 0)
    assert set(stats.message_fields()) | {"header", "timings"} == names


# ---- one pair in flight (compute.pipeline_prior) ------------------------------------------------------------


def _submit_all(h: Harness, encodings: list[str]) -> list:
    """Submit pairs with these thermal encodings, then flush; [(tag, drop reason or fused arrays)] in delivery order."""
    delivered = []

    def take(done):
        for tag, outcome in done:
            result = outcome.result
            delivered.append((tag, outcome.drop_reason if result is None else (result.fused, result.mask_ir)))
            if result is not None:
                h.core.complete(outcome)

    for k, encoding in enumerate(encodings):
        take(h.core.submit(*h.pair(encoding), received=h.clock(), tag=k))
    take(h.core.flush())
    return delivered


def test_pipelined_submission_delivers_the_serial_outcomes_in_order(harness):
    encodings = ["mono8", "mono8", "bgr8", "mono8", "mono8"]  # the third pair is unusable
    serial_harness = harness()  # (the harnesses share one pipeline: the last one built sets its config)
    assert not serial_harness.core.pipelined
    serial = _submit_all(serial_harness, encodings)
    serial_counts = serial_harness.accounting.snapshot()
    h = harness(**{"compute.pipeline_prior": True})
    assert h.core.pipelined
    first = h.core.submit(*h.pair(), received=h.clock(), tag="a")
    assert first == [] and h.core.in_flight  # begun, waiting for the next pair or a flush
    (tag, outcome), = h.core.submit(*h.pair("bgr8"), received=h.clock(), tag="b")[:1]
    assert tag == "a" and outcome.fused
    h.core.complete(outcome)
    assert not h.core.in_flight  # "b" was dropped while beginning: delivered right after "a"
    h = harness(**{"compute.pipeline_prior": True})
    pipelined = _submit_all(h, encodings)
    assert [tag for tag, _ in pipelined] == [0, 1, 2, 3, 4]
    for (_, a), (_, b) in zip(serial, pipelined, strict=True):
        if isinstance(a, str):
            assert a == b == "thermal_encoding"
        else:
            assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert h.accounting.snapshot() == serial_counts


def test_a_fatal_error_counts_the_pair_in_flight_too(harness, pipeline):
    h = harness(**{"compute.pipeline_prior": True, "compute.cuda_error_exit_after": 1})
    assert h.core.submit(*h.pair(), received=h.clock(), tag=0) == []
    pipeline.begin = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA error: unspecified launch failure"))
    with pytest.raises(FatalDeviceError):
        h.core.submit(*h.pair(), received=h.clock(), tag=1)
    counts = h.accounting.snapshot()
    assert counts["paired"] == 2 and counts["dropped"] == 2 and counts["fused"] == 0
    assert not h.core.in_flight


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the prior's own stream)")
def test_on_cuda_the_prior_stream_changes_no_output(images):
    """Runs where CUDA exists (none here): the prior on its own stream beside Stage I, against one stream."""
    outputs = {}
    for pipelined in (False, True):
        config = FuseConfig().updated({"compute.device": "cuda", "compute.pipeline_prior": pipelined})
        h = Harness(FusionPipeline.from_config(config), images, config)
        h.core.pipeline.device = torch.device("cuda")
        assert (h.core.pipeline.prior_stream is not None) == pipelined
        delivered = _submit_all(h, ["mono8"] * 4)
        outputs[pipelined] = [arrays for _, arrays in delivered]
        assert h.accounting.snapshot()["fused"] == 4
    for a, b in zip(outputs[False], outputs[True], strict=True):
        for x, y in zip(a, b, strict=True):
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
