"""A bag loop (the same stamps replayed) through the node's pairing rule (sync.ApproximateSync): without a reset
the second pass pairs nothing, with the time-jump reset it pairs as many as the first pass."""

from __future__ import annotations

from sgdfuse_ros.sync import RGB, THERMAL, ApproximateSync, TimeJumpDetector

SECOND = 1_000_000_000


def one_pass() -> list[tuple[int, int]]:
    """(topic, stamp ns) in arrival order: RGB 30 Hz for 3 s, thermal 9 Hz ending 0.4 s before the RGB stream."""
    start = 1_700_000_000 * SECOND
    rgb = [(RGB, start + i * SECOND // 30) for i in range(90)]
    thermal = [(THERMAL, start + 5_000_000 + i * SECOND // 9) for i in range(24)]  # last one at 2.56 s
    return sorted(rgb + thermal, key=lambda m: (m[1], m[0]))


def pairs_per_pass(sync: ApproximateSync, passes: int = 3) -> list[int]:
    counts = []
    for _ in range(passes):
        before = sync.pairs
        for topic, stamp in one_pass():
            sync.add(topic, stamp, stamp)
        counts.append(sync.pairs - before)
    return counts


def test_bag_loop_stops_pairing_without_a_reset():
    counts = pairs_per_pass(ApproximateSync(queue_size=10, slop=0.05))
    assert 20 <= counts[0] <= 24 and counts[1:] == [0, 0]


def test_time_jump_reset_pairs_every_pass_like_the_first_and_accounts_for_every_message():
    sync = ApproximateSync(queue_size=10, slop=0.05, reset_on_time_jump=True)
    counts = pairs_per_pass(sync)
    assert counts == [counts[0]] * 3 and counts[0] >= 20
    assert sync.time_jumps == 2  # one per loop, however many messages jumped
    sync.finish()
    acc = sync.accounting()
    assert acc["time_jumps"] == 2
    for name in ("thermal", "rgb"):
        assert acc["received"][name] == acc["pairs"] + acc["unpaired"][name]
    assert acc["unpaired_by_reason"]["rgb"]["time_jump"] > 0


def test_jitter_within_the_slop_is_not_a_time_jump():
    detector = TimeJumpDetector(slop_s=0.05)
    assert not detector.check(RGB, 10 * SECOND)
    assert not detector.check(RGB, 10 * SECOND - 40_000_000)  # 40 ms out of order: delivery jitter
    assert detector.check(RGB, 10 * SECOND - 60_000_000 - 40_000_000)  # beyond the slop: a jump
    assert not detector.check(THERMAL, 5 * SECOND)  # the other stream's old time line was forgotten
    assert detector.jumps == 1
