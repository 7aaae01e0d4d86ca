"""make -> play -> live node -> record, compared frame by frame with the offline eval of the same bag.

Processes (each started from a temporary folder so that the installed package, with its generated
sgdfuse_ros.msg, is imported): scripts/fusion_node (with the test-double message_filters on
PYTHONPATH when the real one is missing, via conftest.ros_subprocess_env), ``sgdfuse bag record``
and ``sgdfuse bag play``. The offline side is sgdfuse_ros.bags.evaluate_bag with the same
configuration, in this process.

Tolerance: the live node and the offline eval run the same FusionPipeline on the same decoded
arrays with one torch thread each, so the outputs are expected to be identical; the test allows a
difference of at most 1 grey level on at most 1 % of the pixels of a frame (floating-point summation
order is the only thing that could differ, e.g. another torch build's kernels). The live worker
drops pairs by design when a newer one arrives while it is busy ("superseded"); the bag is played at
half speed so that this should not happen, and any frame missing live must be counted so by the node.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sgdfuse_ros.msg")

from conftest import ros_subprocess_env  # noqa: E402

from sgdfuse_ros import bags  # noqa: E402
from sgdfuse_ros.config import FuseConfig  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PAIRS = REPO / "samples" / "pairs"
BUNDLED = REPO / "samples" / "bags" / "sample_pairs_10hz"
MAX_ABS_DIFF, MAX_FRACTION = 1, 0.01


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(args, cwd=str(cwd), env=ros_subprocess_env(), stdout=handle, stderr=subprocess.STDOUT)


def _wait(predicate, timeout: float, what: str, processes: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for name, (process, log) in processes.items():
            if process.poll() is not None and process.returncode != 0:
                pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    logs = "\n".join(f"--- {name}\n{log.read_text()}" for name, (_, log) in processes.items())
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


CASES = {
    # The bundled bag (raw Image, 30 frames at 10 Hz, 224 px wide) at half speed, wall clock.
    "raw": {"make": None, "node": [], "play": ["--rate", "0.5"], "sim_time": False},
    # CompressedImage input (16-bit PNG thermal, JPEG RGB), bag time on /clock and use_sim_time.
    "compressed_sim_time": {
        "make": bags.MakeOptions(
            resize="160x120",
            count=8,
            thermal_encoding="mono16",
            thermal_compression="png",
            rgb_compression="jpeg",
            offset=-0.01,
            jitter=0.005,
        ),
        "node": ["-p", "node.thermal_compressed:=true", "-p", "node.rgb_compressed:=true", "-p", "use_sim_time:=true"],
        "play": ["--rate", "0.5", "--clock", "50"],
        "sim_time": True,
    },
}


#: The bundled bag with two unusable frames in the middle: a thermal image in a colour encoding and an RGB
#: image whose data is half its declared size. Live and offline must drop the same pairs for the same reasons.
CASES["bad_frames"] = {"make": "bad_frames", "node": [], "play": ["--rate", "0.5"], "sim_time": False}
BAD_FRAMES = {"/thermal/image": (8, "thermal_encoding"), "/rgb/image": (18, "rgb_data_size")}
#: The same with compute.pipeline_prior on both sides: the next pair begun before the current one is finished
#: (offline always, live when pairs queue up) must change nothing in outputs, order, stamps or accounting.
CASES["bad_frames_pipelined"] = {**CASES["bad_frames"], "node": ["-p", "compute.pipeline_prior:=true"],
                                 "config": {"compute.pipeline_prior": True}}


def _bag_with_bad_frames(path: Path) -> Path:
    from dataclasses import replace

    messages = [(topic, log_time, msg) for topic, (log_time, msg) in _topic_messages(BUNDLED)]
    seen: dict[str, int] = {}
    for k, (topic, log_time, msg) in enumerate(messages):
        seen[topic] = seen.get(topic, -1) + 1
        if topic == "/thermal/image" and seen[topic] == BAD_FRAMES[topic][0]:
            messages[k] = (topic, log_time, replace(msg, encoding="bgr8"))
        elif topic == "/rgb/image" and seen[topic] == BAD_FRAMES[topic][0]:
            messages[k] = (topic, log_time, replace(msg, data=msg.data[: len(msg.data) // 2]))
    return bags.write_bag(path, messages)


def _topic_messages(path: Path) -> list:
    store = bags.typestore()
    with bags.open_bag(path) as bag:
        return [(m.topic, (m.log_time, bags.deserialize(bag, m, store))) for m in bags.iter_raw(bag, list(bag.topics))]


@pytest.mark.parametrize("case", list(CASES))
def test_live_node_outputs_equal_the_offline_eval(tmp_path, stage1_weights, case):
    spec = CASES[case]
    bag = BUNDLED
    if spec["make"] == "bad_frames":
        bag = _bag_with_bad_frames(tmp_path / "input")
    elif spec["make"] is not None:
        bag = Path(bags.make_bag(PAIRS, tmp_path / "input", spec["make"])["path"])
    namespace = f"/bagtest_{case}"
    weights = ["-p", f"stage1.weights:={stage1_weights}"] if stage1_weights else []
    node_args = [
        sys.executable,
        str(REPO / "scripts" / "fusion_node"),
        "--ros-args",
        "-r",
        f"__ns:={namespace}",
        "-p",
        "compute.torch_threads:=1",
        "-p",
        "node.input_qos:=reliable",  # no transport losses: every difference is the node's own doing
        "-p",
        "node.diagnostics_period:=0.5",
        *weights,
        *spec["node"],
    ]
    cli = [sys.executable, "-m", "sgdfuse_ros.cli", "bag"]
    outputs = {f"{namespace}{t}": m for t, m in (("/fused/image", bags.IMAGE), ("/fused/mask/ir", bags.IMAGE))}
    outputs[f"{namespace}/fused/mask/vis"] = bags.IMAGE
    outputs[f"{namespace}/fused/stats"] = bags.FUSION_STATS
    outputs["/diagnostics"] = "diagnostic_msgs/msg/DiagnosticArray"
    record_args = [*cli, "record", "--out", str(tmp_path / "live"), "--idle-timeout", "5", "--duration", "180"]
    record_args += ["--ready-file", str(tmp_path / "ready"), "--wait-for-publishers", "90"]
    for topic, msgtype in outputs.items():
        record_args += ["--topic", f"{topic}:{msgtype}"]
    play_args = [*cli, "play", str(bag), *spec["play"], "--wait-for-subscribers", "60", "--settle", "1"]
    play_args += ["--topics", "/thermal/image", "/rgb/image"]
    play_args += [
        "--remap",
        f"/thermal/image:={namespace}/thermal/image",
        "--remap",
        f"/rgb/image:={namespace}/rgb/image",
    ]

    logs = {name: tmp_path / f"{name}.log" for name in ("node", "recorder", "player")}
    processes: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        processes["node"] = (_start(node_args, tmp_path, logs["node"]), logs["node"])
        processes["recorder"] = (_start(record_args, tmp_path, logs["recorder"]), logs["recorder"])
        _wait(lambda: "fusing '" in logs["node"].read_text(), 120, "the node to start", processes)
        _wait(lambda: (tmp_path / "ready").exists(), 60, "the recorder to subscribe", processes)
        processes["player"] = (_start(play_args, tmp_path, logs["player"]), logs["player"])
        _wait(lambda: processes["player"][0].poll() is not None, 180, "the player to finish", processes)
        assert processes["player"][0].returncode == 0, logs["player"].read_text()
        _wait(lambda: processes["recorder"][0].poll() is not None, 60, "the recorder to stop", processes)
        assert processes["recorder"][0].returncode == 0, logs["recorder"].read_text()
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process, _ in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert "published /rgb/image: " in logs["player"].read_text()

    overrides = {"compute.torch_threads": 1, **spec.get("config", {})}
    if stage1_weights:
        overrides["stage1.weights"] = stage1_weights
    config = FuseConfig().updated(overrides)
    report = bags.evaluate_bag(bag, tmp_path / "offline", config, metrics=False)
    comparison = bags.compare_outputs(tmp_path / "live", tmp_path / "offline" / "bag")

    live_stats = sorted(
        (msg for _, msg in _messages(tmp_path / "live", f"{namespace}/fused/stats")), key=lambda m: m.fused
    )
    assert live_stats, (logs["node"].read_text(), logs["recorder"].read_text())
    last = live_stats[-1]
    live_drops = dict(zip(last.dropped_reasons, last.dropped_counts, strict=True))
    superseded = live_drops.pop("superseded", 0)
    offline_frames = report["pairing"]["fused"]
    offline_drops = report["pairing"]["dropped_by_reason"]
    expected_drops = {reason: 1 for _, reason in BAD_FRAMES.values()} if spec["make"] == "bad_frames" else {}
    assert offline_drops == expected_drops
    assert report["pairing"]["pairs"] == offline_frames + sum(offline_drops.values())
    # The node received and paired exactly what the offline rule paired; it dropped the same unusable pairs
    # for the same reasons (unless a newer pair superseded one first), and frames missing live were superseded.
    assert (last.received_thermal, last.received_rgb) == tuple(report["pairing"]["received"].values())
    assert last.paired == report["pairing"]["pairs"]
    assert all(live_drops.get(r, 0) <= n for r, n in offline_drops.items()) and set(live_drops) <= set(offline_drops)
    assert sum(offline_drops.values()) - sum(live_drops.values()) <= superseded
    assert last.fused + superseded + sum(live_drops.values()) == last.paired
    assert last.fused >= offline_frames // 2, "played slowly, the node should fuse most frames"

    for topic in ("/fused/image", "/fused/mask/ir", "/fused/mask/vis"):
        entry = comparison["topics"][topic]
        assert entry["only_live"] == [], f"{topic}: live frames with no offline twin"
        assert entry["common"] == entry["live"] == last.fused, topic
        assert entry["max_abs_diff"] <= MAX_ABS_DIFF and entry["max_fraction_differing"] <= MAX_FRACTION, entry
    stats = comparison["topics"]["/fused/stats"]
    assert stats["stamp_difference_ms_equal"] and stats["only_live"] == []
    counters = stats["last_common_counters"]
    for key in ("received_thermal", "received_rgb", "paired", "unpaired_thermal", "unpaired_rgb"):
        assert counters[key][0] == counters[key][1], (key, counters)

    # use_sim_time: the node's clock followed /clock (bag time), so its diagnostics carry bag-time stamps.
    diagnostics = [bags.stamp_ns(msg.header) for _, msg in _messages(tmp_path / "live", "/diagnostics")]
    assert diagnostics
    with bags.open_bag(bag) as opened:
        start, end = opened.reader.start_time, opened.reader.end_time
    on_bag_time = [start - 10**9 <= t <= end + 10**9 for t in diagnostics]
    if spec["sim_time"]:
        assert any(on_bag_time), diagnostics
    else:
        assert not any(on_bag_time), diagnostics


def _messages(path: Path, topic: str) -> list:
    store = bags.typestore()
    with bags.open_bag(path) as bag:
        return [(m.log_time, bags.deserialize(bag, m, store)) for m in bags.iter_raw(bag, [topic])]


def test_player_timing_start_offset_loop_remap_and_clock(tmp_path):
    """BagPlayer in-process: messages equal the bag's, spaced by log time / rate, after the start offset,
    repeated by loop, on the remapped topic, with /clock carrying bag time."""
    import threading

    from rclpy.executors import MultiThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from sgdfuse_ros.ros.bag_player import BagPlayer, PlayOptions

    bag = bags.make_bag(PAIRS, tmp_path / "bag", bags.MakeOptions(resize="32x24", count=12, rate=10.0))["path"]
    content = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: m for _, m in _messages(Path(bag), "/rgb/image")}
    t0 = min(content)
    context = rclpy.Context()
    rclpy.init(context=context)
    received: list[tuple[float, Image]] = []
    clock: list[int] = []
    lock = threading.Lock()
    sub_node = rclpy.create_node("player_probe", context=context)
    play_node = rclpy.create_node("player_under_test", context=context)

    def on_image(msg: Image) -> None:
        with lock:
            received.append((time.monotonic(), msg))

    def on_clock(msg: Clock) -> None:
        with lock:
            clock.append(msg.clock.sec * 10**9 + msg.clock.nanosec)

    sub_node.create_subscription(Image, "/remapped/rgb", on_image, 50)
    sub_node.create_subscription(Clock, "/clock", on_clock, 50)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(sub_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        options = PlayOptions(
            rate=2.0, loop=True, start_offset=0.15, topics=["/rgb/image"], remap={"/rgb/image": "/remapped/rgb"},
            clock_hz=100.0, wait_for_subscribers=30.0,
        )  # fmt: skip
        player = BagPlayer(play_node, bag, options)
        passes = []

        publish_times: list[float] = []

        def stop_after_two_passes(topic: str, log_time: int) -> None:
            passes.append(log_time)
            publish_times.append(time.monotonic())
            if len(passes) == 20:
                player.stop()

        result = player.play(on_message=stop_after_two_passes)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < 20:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        sub_node.destroy_node()
        play_node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert result["published"] == {"/rgb/image": 20} and result["loops"] == 2
    stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec - t0 for _, m in received]
    assert stamps == [k * 100_000_000 for k in range(2, 12)] * 2  # frames before 0.15 s skipped, then looped
    for _, msg in received:  # field for field what the bag holds
        original = content[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec]
        assert (msg.encoding, msg.width, msg.height, msg.step) == (original.encoding, 32, 24, original.step)
        assert bytes(msg.data) == original.data.tobytes() and msg.header.frame_id == "rgb_camera"
    # Pacing, measured where the player publishes: no message leaves before its time (bag time / rate after
    # the first; 0.1 s of bag time at rate 2 = 0.05 s), and the median gap over the 10 messages of the first
    # pass is 0.8-2x the expected 0.05 s: a player 2x too slow fails, one scheduler hiccup does not.
    first_pass = publish_times[:10]
    offsets = [t - first_pass[0] for t in first_pass]
    assert all(offset >= 0.05 * k - 0.02 for k, offset in enumerate(offsets)), offsets  # 0.02: first publish
    gaps = sorted(b - a for a, b in zip(first_pass[:-1], first_pass[1:], strict=True))
    assert 0.8 * 0.05 <= gaps[len(gaps) // 2] <= 2.0 * 0.05, gaps
    assert clock and all(t0 + 150_000_000 <= c <= t0 + 1_100_000_000 for c in clock)
    clock_pass = clock[: next((i for i in range(1, len(clock)) if clock[i] < clock[i - 1]), len(clock))]
    assert clock_pass == sorted(clock_pass) and len(clock_pass) >= 5  # 100 Hz over >= 0.1 s of wall time
