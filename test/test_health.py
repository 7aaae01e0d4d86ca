"""The diagnostics core (sgdfuse_ros.health): each level and what it names, with diagnostic_updater's meaning."""

from __future__ import annotations

from collections import Counter

import pytest

from sgdfuse_ros.frame_core import FaultState
from sgdfuse_ros.health import ERROR, OK, STALE, WARN, FusionHealth, HealthReport, HealthSettings
from sgdfuse_ros.sync import RGB, THERMAL


class World:
    """Counters as PairAccounting.snapshot() reports them, a manual clock, and the health under test."""

    def __init__(self, **settings) -> None:
        self.now = 0.0
        self.health = FusionHealth(HealthSettings(**settings), clock=lambda: self.now)
        self.counts = dict.fromkeys(
            ("received_thermal", "received_rgb", "paired", "unpaired_thermal", "unpaired_rgb", "fused", "time_jumps"),
            0,
        )
        self.drops: Counter[str] = Counter()
        self.faults = FaultState()

    def second(self, thermal: int = 10, rgb: int = 10, pairs: int = 10, fused: int = 10, **drops: int) -> None:
        """One second of traffic, spread evenly."""
        for k in range(max(thermal, rgb)):
            self.now += 1.0 / max(thermal, rgb, 1)
            if k < thermal:
                self.health.on_input(THERMAL)
            if k < rgb:
                self.health.on_input(RGB)
        if not thermal and not rgb:
            self.now += 1.0
        self.counts["received_thermal"] += thermal
        self.counts["received_rgb"] += rgb
        self.counts["paired"] += pairs
        self.counts["fused"] += fused
        for _ in range(fused):
            self.health.on_published(age_s=0.08, latency_ms=40.0)
        self.drops.update(drops)

    def report(self) -> HealthReport:
        snapshot = dict(self.counts, dropped=sum(self.drops.values()), dropped_by_reason=dict(self.drops))
        return self.health.report(snapshot, self.faults)


def values(report: HealthReport) -> dict[str, str]:
    return dict(report.values)


def test_ok_reports_the_fused_rate_and_the_timestamp_age():
    world = World(expected_rate=10.0)
    world.second()
    report = world.report()
    assert (report.level, report.message) == (OK, "fusing at 10.0 Hz")
    v = values(report)
    assert v["fused rate (Hz)"] == "10.00" and v["minimum acceptable rate (Hz)"] == "9.00"
    assert v["timestamp age p50 (ms)"] == v["timestamp age p99 (ms)"] == "80.0"


def test_superseded_is_excluded_from_the_drop_rate():
    world = World(expected_rate=4.0)
    world.second(pairs=30, fused=5, superseded=25)  # 30 Hz cameras, fusion at 5 Hz: normal
    report = world.report()
    assert report.level == OK, report.message
    assert values(report)["superseded in period"] == "25"
    assert values(report)["drop rate excluding superseded"] == "0.000"


def test_other_drops_above_the_threshold_warn_and_name_the_reason():
    world = World(drop_warn_fraction=0.1)
    world.second(pairs=10, fused=9, thermal_encoding=1)  # 10 %: not above
    assert world.report().level == OK
    world.second(pairs=10, fused=8, thermal_encoding=2)
    report = world.report()
    assert report.level == WARN and "2 of 10 pair(s) dropped (thermal_encoding: 2)" in report.message


def test_fused_rate_below_expected_times_tolerance_warns():
    world = World(expected_rate=10.0, rate_tolerance=0.2)
    world.second(pairs=10, fused=8)  # 8 Hz >= 10 x 0.8
    assert world.report().level == OK
    world.second(pairs=10, fused=7, superseded=3)
    report = world.report()
    assert report.level == WARN and report.message == "fused rate too low: 7.0 Hz < 8.0 Hz"


def test_without_an_expected_rate_rates_are_not_judged():
    world = World()
    world.second(pairs=2, fused=1, superseded=1)
    report = world.report()
    assert report.level == OK and values(report)["expected rate (Hz)"] == "not set"


def test_one_silent_camera_is_an_error_naming_it():
    world = World(stale_after=2.0)
    world.second()
    world.report()
    for _ in range(3):
        world.second(thermal=0, rgb=10, pairs=0, fused=0)
    report = world.report()
    assert report.level == ERROR
    assert report.message.startswith("no thermal input for 3.0 s while rgb delivers")


def test_both_cameras_silent_is_stale_and_never_ok_waiting():
    world = World(stale_after=2.0)
    world.now = 2.5  # nothing ever arrived
    report = world.report()
    assert report.level == STALE and report.message == "no input yet on thermal and rgb for 2.5 s"
    world.second()
    assert world.report().level == OK
    world.now += 5.0
    report = world.report()
    assert report.level == STALE and report.message == "no input on thermal and rgb for 5.0 s"


def test_inputs_without_pairs_warn():
    world = World()
    world.second(pairs=0, fused=0)
    report = world.report()
    assert report.level == WARN and "no pair forms" in report.message


def test_consecutive_pipeline_failures_are_an_error_and_time_jumps_warn():
    world = World()
    world.second(pairs=10, fused=7, pipeline_error=3)
    world.faults = FaultState(consecutive_errors=3, last_error="RuntimeError: boom")
    report = world.report()
    assert report.level == ERROR and "pipeline failed 3 times in a row (last: RuntimeError: boom)" in report.message
    world.faults = FaultState()
    world.counts["time_jumps"] += 1
    world.second()
    report = world.report()
    assert report.level == WARN and "pairing reset after 1 backwards time jump(s)" in report.message
    assert values(report)["time jumps"] == "1"


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ((WARN, "a"), (WARN, "b"), (WARN, "a; b")),
        ((WARN, "a"), (ERROR, "b"), (ERROR, "a; b")),
        ((OK, "fine"), (WARN, "b"), (WARN, "b")),
    ],
)
def test_merge_follows_merge_summary(first, second, expected):
    report = HealthReport()
    report.merge(*first)
    report.merge(*second)
    assert (report.level, report.message) == expected
