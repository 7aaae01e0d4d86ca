"""The live node under a seeded, fixed set of malformed messages interleaved with valid pairs: nothing escapes,
every valid pair after a bad one is published, and every bad message is counted under the reason the decoder
gives it (test_fuzz.py fuzzes the decoder itself with hypothesis)."""

from __future__ import annotations

import numpy as np
from test_node import _ns, _wait_for, live  # noqa: F401 - `live` is the module-scoped node fixture

from sgdfuse_ros.imaging import InvalidImageError
from sgdfuse_ros.messages import rgb_to_array, thermal_to_array

SEED = 20261204
CASES = 16


def _mutations(rng: np.random.Generator):
    """Ways to break one image message in place; each returns a short label."""

    def encoding(msg):
        msg.encoding = str(rng.choice(["yuv422", "bayer_rggb8", "", "16UC3", "rgb16"]))
        return "encoding"

    def truncate(msg):
        data = bytes(msg.data)
        msg.data = data[: int(rng.integers(0, len(data)))]
        return "truncate"

    def short_step(msg):
        msg.step = int(rng.integers(0, msg.step))
        msg.data = bytes(msg.step * msg.height)
        return "short step"

    def zero_size(msg):
        msg.width, msg.height, msg.step, msg.data = 0, int(rng.integers(0, 3)), 0, b""
        return "zero size"

    def huge(msg):
        msg.height, msg.step = 2**31 - 1, msg.step * 100
        return "huge"

    def flip_endianness(msg):  # valid for every encoding: decodes (possibly to other values), never crashes
        msg.is_bigendian = 1 - msg.is_bigendian
        return "endianness"

    return [encoding, truncate, short_step, zero_size, huge, flip_endianness]


def _expected_reason(thermal, rgb) -> str | None:
    try:
        thermal_to_array(thermal)
        rgb_to_array(rgb)
    except InvalidImageError as error:
        return error.reason
    return None


def test_fuzzed_messages_never_escape_and_are_counted(live) -> None:  # noqa: F811
    rng = np.random.default_rng(SEED)
    mutations = _mutations(rng)
    expected: dict[str, int] = {}
    before = dict(live.node.counters()["dropped_by_reason"])
    good_stamps = []
    for _ in range(CASES):
        stamp = live.stamp()
        thermal, rgb = live.pair(stamp)
        target = thermal if rng.random() < 0.5 else rgb
        mutations[int(rng.integers(len(mutations)))](target)
        reason = _expected_reason(thermal, rgb)
        live.send(thermal, rgb)
        if reason is None:
            live.fused(stamp)  # a harmless mutation (byte order of 8-bit data...) is fused like any pair
        else:
            expected[reason] = expected.get(reason, 0) + 1
            # Wait for the count before the next pair: a pair still queued when the next arrives would be
            # superseded (the node keeps the newest), which is accounted too but is not what this test checks.
            _wait_for(lambda r=reason: live.dropped(r) - before.get(r, 0) == expected[r], what=f"drop as {reason}")
        # A valid pair right after the bad one must still be published.
        good = live.stamp()
        live.send(*live.pair(good))
        live.fused(good)
        good_stamps.append(good)
    assert sum(expected.values()) >= CASES // 2  # the seeded set really is mostly malformed
    after = live.node.counters()["dropped_by_reason"]
    for reason, count in expected.items():
        assert after.get(reason, 0) - before.get(reason, 0) == count, (reason, after, before)
    assert all(_ns(s) in live.probe.outputs["image"] for s in good_stamps)
    errors = [r for r in after if r not in before and r not in expected]
    assert not errors, errors  # nothing dropped for a reason the decoder did not give (e.g. pipeline_error)
