"""Soak: the live node (fallback prior, Stage I, small images) fed N pairs; memory, accounting and latency.

    python benchmarks/soak.py [--pairs 10000] [--size 64x48] [--report-every 1000] [--threads 1]

Runs the real FusionNode in-process on rclpy (its own single-threaded executor, as ``rclpy.spin`` in the node's
main) with a probe node that publishes the pairs (reliable QoS, one
pair at a time: each is sent once the previous one is accounted for, so the numbers measure the node and not
a queue) and listens to fused/stats. Prints, as JSON lines: RSS every ``--report-every`` pairs, then a summary
with published / dropped by reason / unpaired, p50 / p99 / max latency (publish -> fused/stats received) and
the RSS growth between the first report and the end. Targets (issue "Proof under load"): RSS growth < 20 MB
from pair 1 000 to pair 10 000, every pair accounted for. test/test_soak.py runs 1 500 pairs through the same
``run_soak``. Where message_filters is not installed (it is not on PyPI), the labelled test double under
test/doubles/ is used, as by the demo.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "samples" / "pairs"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, also when loaded by a test

from harness import rss_mb, summary  # noqa: E402


def _ensure_message_filters() -> str:
    if importlib.util.find_spec("message_filters") is None:
        sys.path.append(str(ROOT / "test" / "doubles"))
        return "test double (test/doubles; message_filters is not installed)"
    return "installed package"


def run_soak(
    pairs: int,
    size: tuple[int, int] = (64, 48),
    report_every: int = 1000,
    threads: int = 1,
    timeout_per_pair: float = 30.0,
    log: Callable[[dict], None] = lambda row: print(json.dumps(row), flush=True),
) -> dict:
    """Feed ``pairs`` pairs of ``size`` (width, height) to a live FusionNode; returns the summary dict.

    The summary holds ``rss_mb`` ([pairs sent, MB] per report), ``sent``, ``fused``, ``dropped_by_reason``,
    ``unpaired_thermal`` / ``unpaired_rgb``, ``accounted`` (fused + dropped == sent), latency percentiles (ms)
    and ``rss_growth_mb`` (last report minus the first).
    """
    filters = _ensure_message_filters()
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from sgdfuse_ros.msg import FusionStats
    from std_msgs.msg import Header

    from sgdfuse_ros.ros.conversion import array_to_image
    from sgdfuse_ros.ros.node import FusionNode
    from sgdfuse_ros.ros.pair_publisher import load_pair

    thermal, rgb = load_pair(PAIR / "ir" / "00537D.png", PAIR / "vi" / "00537D.png", "mono8", size)
    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = {"prior.kind": "fallback", "compute.torch_threads": threads, "node.input_qos": "reliable"}
    node = FusionNode(
        "sgdfuse_soak", context=context, parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()]
    )
    probe = rclpy.create_node("soak_probe", context=context)
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pub_t = probe.create_publisher(Image, "thermal/image", reliable)
    pub_r = probe.create_publisher(Image, "rgb/image", reliable)
    arrived: dict[int, float] = {}
    lock = threading.Lock()

    def on_stats(msg: FusionStats) -> None:
        with lock:
            arrived[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = time.perf_counter()

    probe.create_subscription(FusionStats, "fused/stats", on_stats, reliable)
    # The node spins alone in a single-threaded executor, as `rclpy.spin(node)` in its main() does; the probe
    # has its own, so the harness does not share (or contend for) the node's executor.
    executors = [SingleThreadedExecutor(context=context), SingleThreadedExecutor(context=context)]
    executors[0].add_node(node)
    executors[1].add_node(probe)
    for executor in executors:
        threading.Thread(target=executor.spin, daemon=True).start()

    def accounted() -> int:
        counts = node.counters()
        return counts["fused"] + sum(counts["dropped_by_reason"].values())

    def wait(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout_per_pair
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"soak: timed out waiting for {what}")
            time.sleep(0.002)

    latencies: list[float] = []
    rss: list[tuple[int, float]] = []
    try:
        wait(lambda: pub_t.get_subscription_count() >= 1 and pub_r.get_subscription_count() >= 1, "discovery")
        wait(lambda: node._outputs["stats"].get_subscription_count() >= 1, "the stats subscription")
        base = 1_700_000_000
        for i in range(1, pairs + 1):
            stamp = Time(sec=base + i // 10, nanosec=(i % 10) * 100_000_000)  # 10 Hz stamps
            key = stamp.sec * 10**9 + stamp.nanosec
            t_msg = array_to_image(thermal, "mono8", Header(stamp=stamp, frame_id="thermal"))
            r_msg = array_to_image(rgb, "rgb8", Header(stamp=stamp, frame_id="rgb_camera"))
            sent_at = time.perf_counter()
            pub_t.publish(t_msg)
            pub_r.publish(r_msg)
            wait(lambda n=i: accounted() >= n, f"pair {i} to be accounted for")
            with lock:
                done = arrived.pop(key, None)
            if done is None:  # fused/stats follows the image; give it a moment
                wait(lambda k=key: k in arrived, f"fused/stats of pair {i}")
                with lock:
                    done = arrived.pop(key)
            latencies.append((done - sent_at) * 1000.0)
            if i % report_every == 0 or i == pairs:
                rss.append((i, round(rss_mb(), 1)))
                log({"pairs": i, "rss_mb": rss[-1][1], "p50_ms": summary(latencies)["p50"]})
        counts = node.counters()
    finally:
        for executor in executors:
            executor.shutdown(timeout_sec=5.0)
        probe.destroy_node()
        node.destroy_node()
        context.try_shutdown()
    dropped = dict(counts["dropped_by_reason"])
    return {
        "message_filters": filters,
        "size": f"{size[0]}x{size[1]}",
        "sent": pairs,
        "fused": counts["fused"],
        "dropped_by_reason": dropped,
        "unpaired_thermal": counts["unpaired_thermal"],
        "unpaired_rgb": counts["unpaired_rgb"],
        "accounted": counts["fused"] + sum(dropped.values()) == pairs,
        "latency_ms": summary(latencies),
        "rss_mb": rss,
        "rss_growth_mb": round(rss[-1][1] - rss[0][1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--size", default="64x48", help="image size WxH (small keeps a 10 000-pair run short)")
    parser.add_argument("--report-every", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the node")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    summary = run_soak(args.pairs, (width, height), args.report_every, args.threads)
    print(json.dumps({"summary": summary}, indent=2))
    return 0 if summary["accounted"] else 1


if __name__ == "__main__":
    sys.exit(main())
