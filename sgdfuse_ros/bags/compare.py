"""``sgdfuse bag compare``: frame-by-frame comparison of two output bags (live recording vs offline evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..sync import stamp_ns
from .bag_io import IMAGE_TYPES, OUTPUT_TOPICS, decode_image, deserialize, iter_raw, open_bag, typestore


def _load_outputs(path: str | Path, distro: str) -> dict[str, dict[int, Any]]:
    """{topic: {header stamp ns: decoded array (Image) or message}} for every header-carrying topic of a bag."""
    store = typestore(distro)
    outputs: dict[str, dict[int, Any]] = {}
    with open_bag(path) as bag:
        for message in iter_raw(bag, list(bag.topics)):
            msg = deserialize(bag, message, store)
            if not hasattr(msg, "header"):
                continue
            value = decode_image(msg)[0] if message.msgtype in IMAGE_TYPES else msg
            outputs.setdefault(message.topic, {})[stamp_ns(msg.header)] = value
    return outputs


def compare_outputs(live: str | Path, offline: str | Path, *, distro: str = "kilted") -> dict:
    """Frame-by-frame comparison, by header stamp, of two output bags (e.g. ``bag record`` vs ``bag eval``).

    For every image topic in both bags: stamps in both / only in one, and over the common stamps the
    largest absolute pixel difference, the largest fraction of differing pixels in one frame and the
    mean absolute difference. For the stats topic: the counters of the last common stamp.
    Topics are matched by name relative to the first output topic's namespace (a live bag recorded under
    ``/ns/fused/image`` compares with ``/fused/image``).
    """
    a, b = _load_outputs(live, distro), _load_outputs(offline, distro)

    def key(topic: str) -> str:
        for name in OUTPUT_TOPICS.values():
            if topic.endswith(name):
                return name
        return topic

    a = {key(t): v for t, v in a.items()}
    b = {key(t): v for t, v in b.items()}
    result: dict[str, Any] = {"live": str(live), "offline": str(offline), "topics": {}}
    for topic in sorted(set(a) & set(b)):
        common = sorted(set(a[topic]) & set(b[topic]))
        entry: dict[str, Any] = {
            "live": len(a[topic]),
            "offline": len(b[topic]),
            "common": len(common),
            "only_live": sorted(set(a[topic]) - set(b[topic])),
            "only_offline": sorted(set(b[topic]) - set(a[topic])),
        }
        images = [(a[topic][t], b[topic][t]) for t in common if isinstance(a[topic][t], np.ndarray)]
        if images:
            shapes_equal = all(x.shape == y.shape for x, y in images)
            entry["shapes_equal"] = shapes_equal
            if shapes_equal:
                diffs = [np.abs(x.astype(np.int32) - y.astype(np.int32)) for x, y in images]
                entry["max_abs_diff"] = int(max(int(d.max()) for d in diffs))
                entry["max_fraction_differing"] = float(max(float((d > 0).mean()) for d in diffs))
                entry["mean_abs_diff"] = float(np.mean([float(d.mean()) for d in diffs]))
        elif common:
            last_a, last_b = a[topic][common[-1]], b[topic][common[-1]]
            fields = (
                "received_thermal",
                "received_rgb",
                "paired",
                "unpaired_thermal",
                "unpaired_rgb",
                "fused",
                "dropped",
            )
            if all(hasattr(last_a, f) for f in fields):
                entry["last_common_counters"] = {f: [int(getattr(last_a, f)), int(getattr(last_b, f))] for f in fields}
                entry["stamp_difference_ms_equal"] = all(
                    abs(a[topic][t].stamp_difference_ms - b[topic][t].stamp_difference_ms) < 1e-3 for t in common
                )
        result["topics"][topic] = entry
    result["topics_only_live"] = sorted(set(a) - set(b))
    result["topics_only_offline"] = sorted(set(b) - set(a))
    return result
