"""1 500 pairs through the live node (benchmarks/soak.py's harness, the 10 000-pair soak's short version):
exact accounting and bounded memory growth. The numbers of the full soak are in docs/node.md."""

from __future__ import annotations

from conftest import load_benchmark


def _load_soak():
    return load_benchmark("soak")


def test_1500_pairs_are_all_fused_and_memory_stays_flat() -> None:
    summary = _load_soak().run_soak(1500, size=(64, 48), report_every=500, log=lambda row: None)
    assert summary["sent"] == summary["fused"] == 1500, summary
    assert summary["dropped_by_reason"] == {} and summary["accounted"]
    assert summary["unpaired_thermal"] == summary["unpaired_rgb"] == 0
    assert [n for n, _ in summary["rss_mb"]] == [500, 1000, 1500]
    # Allocator noise is a few MB; keeping every 64x48 frame set (about 27 kB a pair) would add about 27 MB here.
    assert summary["rss_growth_mb"] < 20.0, summary["rss_mb"]
