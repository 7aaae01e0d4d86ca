"""Rosbag workflow without a ROS runtime (sgdfuse_ros.bags, `sgdfuse bag ...`), on the bundled real pairs.

* make -> eval round trip: fused images and per-frame metrics equal the direct FusionPipeline + metrics.
* bags readable with the Kilted, Jazzy and Humble type stores (sqlite3 + metadata v8 for Humble),
  raw, compressed (JPEG RGB, 16-bit PNG thermal) and mono16 content decoding back to the source.
* the pairing rule against message_filters' ApproximateTimeSynchronizer (real one, or its test double).
* stamps going backwards / repeating, invalid images, and every bad-input case: clear errors naming
  file and topic, and nothing written at the output path.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from sgdfuse_ros import bags
from sgdfuse_ros.cli import find_pairs, main, read_thermal, read_visible
from sgdfuse_ros.config import FuseConfig
from sgdfuse_ros.metrics import METRIC_NAMES, evaluate

REPO = Path(__file__).resolve().parent.parent
PAIRS = REPO / "samples" / "pairs"
BUNDLED = REPO / "samples" / "bags" / "sample_pairs_10hz"
#: The command of docs/bags.md that made the bundled bag.
BUNDLED_MAKE = ["--max-width", "224", "--count", "30", "--offset", "0.015", "--jitter", "0.01", "--seed", "0"]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> FuseConfig:
    """Default configuration with the shipped Stage I weights, or an untrained checkpoint of the same
    format while the shipped ones are not in this checkout (the round trip holds for any weights)."""
    import torch

    from sgdfuse_ros.models.stage1 import build_stage1, default_stage1_weights_path, stage1_checkpoint

    overrides = {"compute.torch_threads": 1}
    if not default_stage1_weights_path().is_file():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("weights") / "stage1_untrained.pt"
        torch.save(stage1_checkpoint(build_stage1()), path)
        overrides["stage1.weights"] = str(path)
    return FuseConfig().updated(overrides)


@pytest.fixture(scope="module")
def pipeline(config):
    from sgdfuse_ros.pipeline import FusionPipeline

    return FusionPipeline.from_config(config)


def _read(path: Path, distro: str = "kilted") -> dict[str, list[tuple[int, object]]]:
    """{topic: [(log time, rosbags message), ...]} of a bag."""
    store = bags.typestore(distro)
    out: dict[str, list] = {}
    with bags.open_bag(path) as bag:
        for message in bags.iter_raw(bag, list(bag.topics)):
            out.setdefault(message.topic, []).append((message.log_time, bags.deserialize(bag, message, store)))
    return out


def _no_partial_output(folder: Path) -> bool:
    return not any(p.name.startswith(".") and ".partial-" in p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------ make -> eval


@pytest.mark.slow
def test_make_then_eval_equals_the_direct_pipeline_on_the_bundled_pairs(tmp_path, config, pipeline):
    summary = bags.make_bag(PAIRS, tmp_path / "pairs_bag", bags.MakeOptions(rgb_encoding="bgr8"))
    assert summary["frames_per_topic"] == 7 and summary["storage"] == "mcap" and summary["version"] == 9
    report = bags.evaluate_bag(tmp_path / "pairs_bag", tmp_path / "eval", config, pipeline=pipeline)

    # Direct path, as `sgdfuse fuse` runs it: files -> FusionPipeline.fuse -> metrics.evaluate.
    direct = []
    for _, ir_path, vi_path in find_pairs(PAIRS):
        thermal, thermal_encoding = read_thermal(ir_path)
        visible, visible_encoding = read_visible(vi_path)
        result = pipeline.fuse(thermal, visible, thermal_encoding, visible_encoding)
        direct.append((result, evaluate(cv2.cvtColor(result.fused, cv2.COLOR_RGB2BGR), thermal, visible)))

    assert report["pairing"]["pairs"] == report["pairing"]["fused"] == 7
    assert report["pairing"]["unpaired"] == {"thermal": 0, "rgb": 0} and report["pairing"]["dropped"] == 0
    assert [f["stamp_ns"] for f in report["frames"]] == [int(1.7e18) + i * 100_000_000 for i in range(7)]
    for frame, (_, metrics) in zip(report["frames"], direct, strict=True):
        for name in METRIC_NAMES:
            assert frame["metrics"][name] == pytest.approx(metrics[name], rel=1e-9, abs=1e-12), name
    means = report["metrics"]["mean"]
    for name in METRIC_NAMES:
        assert means[name] == pytest.approx(np.mean([m[name] for _, m in direct]), rel=1e-9, abs=1e-12)

    outputs = _read(tmp_path / "eval" / "bag")
    assert sorted(outputs) == sorted(bags.OUTPUT_TOPICS.values())
    for (_, fused_msg), (result, _) in zip(outputs["/fused/image"], direct, strict=True):
        fused, encoding = bags.decode_image(fused_msg)
        assert encoding == "rgb8" and fused_msg.header.frame_id == "rgb_camera"
        np.testing.assert_array_equal(fused, result.fused)
    for (_, mask_msg), (result, _) in zip(outputs["/fused/mask/ir"], direct, strict=True):
        np.testing.assert_array_equal(bags.decode_image(mask_msg)[0], result.mask_ir)
    stats = [msg for _, msg in outputs["/fused/stats"]]
    assert [s.fused for s in stats] == list(range(1, 8)) and stats[-1].paired == 7
    assert stats[-1].received_thermal == stats[-1].received_rgb == 7 and stats[-1].prior == "fallback"
    assert {t.stage for t in stats[0].timings} >= {"preprocess", "prior", "stage1", "total"}

    # The report folder: JSON + Markdown with latency percentiles and pairing accounting, PNGs.
    folder = tmp_path / "eval" / "report"
    on_disk = json.loads((folder / "report.json").read_text())
    latency = on_disk["latency_ms"]
    assert latency["count"] == 7 and 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert on_disk["throughput"]["frames"] == 7 and on_disk["throughput"]["fps"] > 0
    for name in ("contact_sheet.png", "metrics.png", "latency.png"):
        image = cv2.imread(str(folder / name))
        assert image is not None and image.shape[0] > 100, name
    markdown = (folder / "report.md").read_text()
    assert "| messages in | 7 | 7 |" in markdown and "p99" in markdown and "Qabf" in markdown


def test_bundled_bag_is_what_the_documented_command_makes(tmp_path):
    size = sum(p.stat().st_size for p in BUNDLED.iterdir())
    assert size <= 5_000_000
    assert main(["bag", "make", "--pairs", str(PAIRS), "--out", str(tmp_path / "again"), *BUNDLED_MAKE]) == 0
    bundled, again = _read(BUNDLED), _read(tmp_path / "again")
    assert sorted(bundled) == ["/rgb/image", "/thermal/image"]
    for topic in bundled:
        assert len(bundled[topic]) == len(again[topic]) == 30
        for (log_a, a), (log_b, b) in zip(bundled[topic], again[topic], strict=True):
            assert log_a == log_b == bags.stamp_ns(a.header) == bags.stamp_ns(b.header)
            assert (a.encoding, a.width, a.height, a.header.frame_id) == (
                b.encoding,
                b.width,
                b.height,
                b.header.frame_id,
            )
            # Same pixels up to OpenCV resize rounding differences between versions.
            assert np.abs(bags.decode_image(a)[0].astype(int) - bags.decode_image(b)[0].astype(int)).max() <= 1
    rgb = [bags.stamp_ns(m.header) for _, m in bundled["/rgb/image"]]
    thermal = [bags.stamp_ns(m.header) for _, m in bundled["/thermal/image"]]
    # 10 Hz with +-10 ms jitter, thermal 15 ms after RGB: every difference within the node's 50 ms slop.
    assert all(80e6 < b - a < 120e6 for a, b in zip(rgb, rgb[1:], strict=False))
    assert all(abs(t - r - 15e6) <= 20e6 + 1 for t, r in zip(thermal, rgb, strict=True))


def test_cli_make_info_eval_on_a_small_bag(tmp_path, capsys, config):
    bag = tmp_path / "small"
    args = ["bag", "make", "--pairs", str(PAIRS), "--out", str(bag), "--resize", "96x72", "--count", "9"]
    assert main([*args, "--offset", "-0.02", "--jitter", "0.005", "--rate", "5"]) == 0
    assert "9 frames per topic from 7 pairs" in capsys.readouterr().out
    assert main(["bag", "info", str(bag), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["topics"]["/rgb/image"]["count"] == 9 and info["topics"]["/thermal/image"]["width"] == 96
    assert info["topics"]["/rgb/image"]["rate_hz"] == pytest.approx(5.0, rel=0.05)
    weights = ["--set", f"stage1.weights={config.stage1.weights}"] if config.stage1.weights else []
    out = tmp_path / "eval"
    assert (
        main(["bag", "eval", str(bag), "--out", str(out), "--no-metrics", "--set", "compute.torch_threads=1", *weights])
        == 0
    )
    printed = capsys.readouterr().out
    assert "pairs 9" in printed and "latency ms p50" in printed
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["metrics"] is None and report["pairing"]["fused"] == 9
    assert all(-30 <= f["stamp_difference_ms"] <= -10 for f in report["frames"])


# ----------------------------------------------------------------------------------- distros, content


@pytest.mark.parametrize(
    ("distro", "storage", "version", "suffix"),
    [("kilted", "mcap", 9, ".mcap"), ("jazzy", "mcap", 9, ".mcap"), ("humble", "sqlite3", 8, ".db3")],
)
def test_bags_are_readable_with_the_kilted_jazzy_and_humble_type_stores(tmp_path, distro, storage, version, suffix):
    options = bags.MakeOptions(distro=distro, resize="64x48", count=3)
    summary = bags.make_bag(PAIRS, tmp_path / "bag", options)
    assert (summary["storage"], summary["version"]) == (storage, version)
    metadata = (tmp_path / "bag" / "metadata.yaml").read_text()
    assert f"version: {version}" in metadata and f"storage_identifier: {storage}" in metadata
    assert (tmp_path / "bag" / f"bag{suffix}").is_file()
    stem, ir_path, vi_path = find_pairs(PAIRS)[0]
    thermal = cv2.resize(read_thermal(ir_path)[0], (64, 48), interpolation=cv2.INTER_AREA)
    rgb = cv2.resize(read_visible(vi_path)[0], (64, 48), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    for reader_distro in bags.DISTROS:
        content = _read(tmp_path / "bag", reader_distro)
        assert [len(content[t]) for t in ("/thermal/image", "/rgb/image")] == [3, 3]
        first_thermal, first_rgb = content["/thermal/image"][0][1], content["/rgb/image"][0][1]
        assert first_thermal.data.dtype == np.uint8 and first_thermal.header.frame_id == "thermal"
        np.testing.assert_array_equal(bags.decode_image(first_thermal, "thermal")[0], thermal)
        np.testing.assert_array_equal(bags.decode_image(first_rgb, "rgb")[0], rgb)


def test_humble_refuses_version_9_and_unknown_choices_are_named():
    with pytest.raises(bags.BagError, match="Humble.*version 9"):
        bags.resolve_format("humble", "sqlite3", 9)
    with pytest.raises(bags.BagError, match="jpeg cannot hold mono16"):
        bags.MakeOptions(thermal_encoding="mono16", thermal_compression="jpeg").check()
    with pytest.raises(bags.BagError, match="rate must be > 0"):
        bags.MakeOptions(rate=0).check()


def test_output_bag_with_fusion_stats_reads_with_every_type_store(tmp_path, config, pipeline):
    bags.make_bag(PAIRS, tmp_path / "in", bags.MakeOptions(resize="64x48", count=2, distro="humble"))
    bags.evaluate_bag(tmp_path / "in", tmp_path / "out", config, pipeline=pipeline, metrics=False, distro="humble")
    assert "storage_identifier: sqlite3" in (tmp_path / "out" / "bag" / "metadata.yaml").read_text()
    for distro in bags.DISTROS:
        stats = [msg for _, msg in _read(tmp_path / "out" / "bag", distro)["/fused/stats"]]
        assert [s.fused for s in stats] == [1, 2] and stats[0].__msgtype__ == bags.FUSION_STATS
    # The hash in the metadata is the one rosidl generated for the installed message (when installed).
    generated = Path(sys.prefix) / "share" / "sgdfuse_ros" / "msg" / "FusionStats.json"
    if generated.is_file():
        expected = json.loads(generated.read_text())["type_hashes"][0]["hash_string"]
        assert bags.typestore("kilted").hash_rihs01(bags.FUSION_STATS) == expected


def test_compressed_and_mono16_bags_decode_to_the_source_pixels(tmp_path, config, pipeline):
    options = bags.MakeOptions(
        resize="128x96", count=4, thermal_encoding="mono16", thermal_compression="png", rgb_compression="jpeg"
    )
    bags.make_bag(PAIRS, tmp_path / "bag", options)
    content = _read(tmp_path / "bag")
    for i, (_, ir_path, vi_path) in enumerate(find_pairs(PAIRS)[:4]):
        thermal_msg, rgb_msg = content["/thermal/image"][i][1], content["/rgb/image"][i][1]
        assert thermal_msg.format == "mono16; png compressed mono16"
        assert rgb_msg.format == "rgb8; jpeg compressed bgr8"
        gray = cv2.resize(read_thermal(ir_path)[0], (128, 96), interpolation=cv2.INTER_AREA)
        counts, encoding = bags.decode_image(thermal_msg, "thermal")
        assert encoding == "mono16" and counts.dtype == np.uint16 and counts.min() >= 27000
        # The node's default fixed scaling (27000-33000 counts) maps the counts back to the grey levels.
        back = np.rint((counts.astype(np.float64) - 27000.0) / 6000.0 * 255.0)
        np.testing.assert_array_equal(back, gray)
        bgr, encoding = bags.decode_image(rgb_msg, "rgb")
        source = cv2.resize(read_visible(vi_path)[0], (128, 96), interpolation=cv2.INTER_AREA)
        assert encoding == "bgr8" and np.abs(bgr.astype(int) - source.astype(int)).mean() < 4.0  # JPEG q90
    report = bags.evaluate_bag(tmp_path / "bag", tmp_path / "eval", config, pipeline=pipeline, metrics=False)
    assert report["input"]["thermal_type"] == bags.COMPRESSED_IMAGE and report["pairing"]["fused"] == 4


def test_decoding_is_the_same_on_rosbags_and_rclpy_messages(tmp_path):
    """bags.decode_image is the node's decoding (sgdfuse_ros.messages, re-exported by ros.conversion) and
    works on any object with the message fields: rosbags objects (data a NumPy array) and rclpy messages
    deserialized from the same CDR bytes (data an array.array) decode to the same pixels and encoding."""
    serialization = pytest.importorskip("rclpy.serialization")
    sensor_msgs = pytest.importorskip("sensor_msgs.msg")
    from sgdfuse_ros.ros import conversion

    assert conversion.thermal_to_array is sys.modules["sgdfuse_ros.messages"].thermal_to_array
    rclpy_types = {bags.IMAGE: sensor_msgs.Image, bags.COMPRESSED_IMAGE: sensor_msgs.CompressedImage}
    store = bags.typestore()
    cases = [
        bags.MakeOptions(resize="80x60", count=2),
        bags.MakeOptions(resize="80x60", count=2, thermal_encoding="mono16", rgb_encoding="bgr8"),
        bags.MakeOptions(resize="80x60", count=2, thermal_compression="png", rgb_compression="png"),
        bags.MakeOptions(resize="80x60", count=2, thermal_encoding="mono16", thermal_compression="png"),
    ]
    decoded = 0
    for k, options in enumerate(cases):
        bags.make_bag(PAIRS, tmp_path / f"b{k}", options)
        with bags.open_bag(tmp_path / f"b{k}") as bag:
            for message in bags.iter_raw(bag, ["/thermal/image", "/rgb/image"]):
                which = "thermal" if message.topic == "/thermal/image" else "rgb"
                ours = bags.deserialize(bag, message, store)
                theirs = serialization.deserialize_message(message.raw, rclpy_types[message.msgtype])
                (a, enc_a), (b, enc_b) = bags.decode_image(ours, which), bags.decode_image(theirs, which)
                assert enc_a == enc_b and a.dtype == b.dtype and a.shape[:2] == (60, 80)
                np.testing.assert_array_equal(a, b)
                decoded += 1
    assert decoded == 4 * 2 * 2
    padded = bags.image_message(store, np.zeros((4, 6), np.uint8), "mono8", 0, "f")
    padded.step = 8  # rows of 8 bytes for 6 pixels, but data holds only 24 bytes
    rclpy_padded = sensor_msgs.Image(height=4, width=6, encoding="mono8", step=8, data=bytes(24))
    for msg in (padded, rclpy_padded):
        with pytest.raises(ValueError) as error:
            bags.decode_image(msg, "thermal")
        assert error.value.reason == "thermal_data_size"


# -------------------------------------------------------------------------------------------- pairing


def _reference_pairs(events: list[tuple[int, int]], queue_size: int, slop: float) -> list[tuple[int, int]]:
    """Pairs (thermal stamp, RGB stamp) emitted by message_filters.ApproximateTimeSynchronizer for ``events``
    (input index, stamp ns): the real package when installed, else the clearly labelled test double."""
    import message_filters

    inputs = [message_filters.SimpleFilter(), message_filters.SimpleFilter()]
    sync = message_filters.ApproximateTimeSynchronizer(inputs, queue_size, slop)
    emitted: list[tuple[int, int]] = []
    sync.registerCallback(lambda t, r: emitted.append((t.stamp_ns, r.stamp_ns)))

    def message(stamp: int):
        sec, nanosec = divmod(stamp, 1_000_000_000)
        return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec)), stamp_ns=stamp)

    for index, stamp in events:
        inputs[index].signalMessage(message(stamp))
    return emitted


def _ours(events, queue_size, slop):
    sync = bags.ApproximateSync(queue_size, slop)
    pairs = [p for index, stamp in events if (p := sync.add(index, stamp, stamp)) is not None]
    sync.finish()
    return pairs, sync


def test_pairing_rule_equals_message_filters_approximate_time_synchronizer():
    rng = random.Random(7)
    for trial in range(150):
        queue_size = rng.choice([1, 2, 3, 5, 10])
        slop = rng.choice([0.01, 0.03, 0.05, 0.1])
        events, t = [], 1_700_000_000 * 10**9
        for _ in range(rng.randint(5, 40)):
            t += rng.randint(0, 60_000_000)
            index = rng.randint(0, 1)
            stamp = t + rng.randint(-40_000_000, 40_000_000)  # jitter: stamps may go backwards
            if rng.random() < 0.1 and events:
                stamp = rng.choice(events)[1]  # a repeated stamp (same or other topic)
            events.append((index, stamp))
        ours, sync = _ours(events, queue_size, slop)
        assert ours == _reference_pairs(events, queue_size, slop), (trial, events, queue_size, slop)
        accounting = sync.accounting()
        for k, name in enumerate(("thermal", "rgb")):
            assert accounting["received"][name] == sum(1 for i, _ in events if i == k)
            assert accounting["received"][name] == accounting["pairs"] + accounting["unpaired"][name]


def test_pairing_edge_cases_written_from_the_real_algorithm():
    ms = 1_000_000
    # A difference of exactly the slop is a candidate (<= slop) but never pairs (< slop strictly).
    assert _ours([(0, 0), (1, 50 * ms)], 10, 0.05)[0] == []
    assert _ours([(0, 0), (1, 50 * ms - 1)], 10, 0.05)[0] == [(0, 50 * ms - 1)]
    # The closest candidate wins; the others stay queued and can pair later.
    assert _ours([(1, 0), (1, 30 * ms), (0, 20 * ms), (0, 5 * ms)], 10, 0.05)[0] == [(20 * ms, 30 * ms), (5 * ms, 0)]
    # A repeated stamp overwrites the queued message: one pair, one unpaired duplicate.
    pairs, sync = _ours([(0, 0), (0, 0), (1, 1 * ms)], 10, 0.05)
    assert len(pairs) == 1 and sync.accounting()["unpaired_by_reason"]["thermal"] == {"duplicate_stamp": 1}
    # A message older than everything in a full queue is evicted at once and cannot pair.
    pairs, sync = _ours([(0, 100 * ms), (0, 200 * ms), (0, 10 * ms), (1, 11 * ms)], 2, 0.05)
    assert pairs == [] and sync.accounting()["unpaired_by_reason"] == {
        "thermal": {"left_in_queue": 2, "queue_overflow": 1},
        "rgb": {"left_in_queue": 1},
    }
    # slop 0: identical stamps only (the node then uses TimeSynchronizer).
    assert _ours([(0, 5), (1, 6), (1, 5)], 10, 0.0)[0] == [(5, 5)]
    # Equally close candidates: queue insertion order decides (stable sort on the distance), not the stamp.
    # Checked on the reference too (the test double must behave as the real code here).
    tie = [(0, 30 * ms), (0, 10 * ms), (1, 20 * ms)]
    assert _ours(tie, 10, 0.05)[0] == _reference_pairs(tie, 10, 0.05) == [(30 * ms, 20 * ms)]
    # slop -> ns truncates as rclpy's Duration(seconds=slop): 0.00013 s is 129999 ns, so 129999 ns never pairs.
    edge = [(0, 0), (1, 129_999)]
    assert _ours(edge, 10, 0.00013)[0] == _reference_pairs(edge, 10, 0.00013) == []
    assert _ours(edge, 10, 0.00014)[0] == _reference_pairs(edge, 10, 0.00014) == [(0, 129_999)]


# ------------------------------------------------------------------------- stamps backwards, bad images


def _image_stream(store, events, size=(48, 64)):
    """(topic, log time, message) for events (input index, stamp ns), log times increasing."""
    stem, ir_path, vi_path = find_pairs(PAIRS)[0]
    thermal = cv2.resize(read_thermal(ir_path)[0], size[::-1], interpolation=cv2.INTER_AREA)
    rgb = cv2.resize(read_visible(vi_path)[0], size[::-1], interpolation=cv2.INTER_AREA)
    t0 = 1_700_000_000 * 10**9
    for k, (index, stamp) in enumerate(events):
        log_time = t0 + k * 10_000_000
        if index == 0:
            yield "/thermal/image", log_time, bags.image_message(store, thermal, "mono8", stamp, "thermal")
        else:
            yield "/rgb/image", log_time, bags.image_message(store, rgb, "bgr8", stamp, "rgb_camera")


def test_stamps_going_backwards_or_repeating_are_paired_and_counted(tmp_path, config, pipeline):
    ms, t0 = 1_000_000, 1_700_000_000 * 10**9
    events = [
        (1, t0), (0, t0 + 5 * ms),                          # pair 1
        (1, t0 + 100 * ms), (0, t0 + 104 * ms),             # pair 2
        (1, t0 + 60 * ms), (0, t0 + 61 * ms),               # both backwards: pair 3 all the same
        (1, t0 + 200 * ms), (1, t0 + 200 * ms),             # RGB stamp repeated: first copy overwritten
        (0, t0 + 203 * ms),                                  # pair 4
        (0, t0 + 500 * ms),                                  # thermal never paired
    ]  # fmt: skip
    store = bags.typestore()
    bags.write_bag(tmp_path / "odd", _image_stream(store, events))
    assert bags.bag_info(tmp_path / "odd")["topics"]["/rgb/image"]["stamps_backwards"] == 1
    report = bags.evaluate_bag(tmp_path / "odd", tmp_path / "eval", config, pipeline=pipeline, metrics=False)
    p = report["pairing"]
    assert p["pairs"] == p["fused"] == 4
    assert p["received"] == {"thermal": 5, "rgb": 5}
    assert p["stamps_backwards"] == {"thermal": 1, "rgb": 1} and p["stamps_repeated"] == {"thermal": 0, "rgb": 1}
    assert p["unpaired_by_reason"] == {"thermal": {"left_in_queue": 1}, "rgb": {"duplicate_stamp": 1}}
    assert [f["stamp_ns"] - t0 for f in report["frames"]] == [0, 100 * ms, 60 * ms, 200 * ms]
    markdown = (tmp_path / "eval" / "report" / "report.md").read_text()
    assert "| stamps going backwards | 1 | 1 |" in markdown and "| - duplicate_stamp | 0 | 1 |" in markdown
    # The stats messages carry the node's running counters (PairAccounting rule).
    last = _read(tmp_path / "eval" / "bag")["/fused/stats"][-1][1]
    assert (last.received_thermal, last.received_rgb, last.paired, last.unpaired_rgb) == (4, 5, 4, 1)


def test_invalid_images_drop_their_pair_with_the_reason(tmp_path, config, pipeline):
    store = bags.typestore()
    ms, t0 = 1_000_000, 1_700_000_000 * 10**9
    stream = list(_image_stream(store, [(0, t0), (1, t0), (0, t0 + 100 * ms), (1, t0 + 100 * ms)]))
    broken = stream[2][2]
    broken.encoding = "yuv422"  # not a thermal encoding
    report = bags.evaluate_bag(
        _write(tmp_path / "bad_pixels", stream), tmp_path / "eval", config, pipeline=pipeline, metrics=False
    )
    assert report["pairing"]["pairs"] == 2 and report["pairing"]["fused"] == 1
    assert report["pairing"]["dropped_by_reason"] == {"thermal_encoding": 1}
    last = _read(tmp_path / "eval" / "bag")["/fused/stats"][-1][1]
    assert list(last.dropped_reasons) == [] and last.fused == 1  # the drop came after the only fused frame


def _write(path: Path, stream) -> Path:
    bags.write_bag(path, stream)
    return path


# ------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def small_bag(tmp_path):
    return bags.make_bag(PAIRS, tmp_path / "small", bags.MakeOptions(resize="64x48", count=6))["path"]


def _eval_fails(source, out: Path, config, pipeline, *needles: str) -> None:
    with pytest.raises(bags.BagError) as error:
        bags.evaluate_bag(source, out, config, pipeline=pipeline, metrics=False)
    for needle in needles:
        assert needle in str(error.value), (needle, str(error.value))
    assert "nothing written" in str(error.value) or not out.exists()
    assert not out.exists() and _no_partial_output(out.parent)


def test_missing_bag_missing_topic_and_wrong_type_name_the_file_and_topic(tmp_path, small_bag, config, pipeline):
    _eval_fails(tmp_path / "nope", tmp_path / "o1", config, pipeline, "bag not found", str(tmp_path / "nope"))
    with pytest.raises(bags.BagError, match="thermal topic '/flir/image' is not in the bag"):
        bags.evaluate_bag(small_bag, tmp_path / "o2", config, thermal_topic="/flir/image", pipeline=pipeline)
    assert not (tmp_path / "o2").exists() and _no_partial_output(tmp_path)
    # A bag whose RGB topic holds std_msgs/String.
    store = bags.typestore()
    text = store.types["std_msgs/msg/String"]
    images = list(_image_stream(store, [(0, 1), (0, 2)]))
    bags.write_bag(tmp_path / "wrong", [*images, ("/rgb/image", 3, text(data="not an image"))])
    _eval_fails(
        tmp_path / "wrong",
        tmp_path / "o3",
        config,
        pipeline,
        str(tmp_path / "wrong"),
        "'/rgb/image'",
        "std_msgs/msg/String",
    )


@pytest.mark.parametrize("distro", ["kilted", "humble"])
def test_truncated_bags_fail_clearly_and_write_nothing(tmp_path, config, pipeline, distro):
    bags.make_bag(PAIRS, tmp_path / "cut", bags.MakeOptions(resize="64x48", count=6, distro=distro))
    (storage_file,) = [p for p in (tmp_path / "cut").iterdir() if p.suffix in (".mcap", ".db3")]
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[: len(data) // 2])
    _eval_fails(tmp_path / "cut", tmp_path / "out", config, pipeline, str(tmp_path / "cut"))
    with pytest.raises(bags.BagError, match=str(tmp_path / "cut")):
        bags.bag_info(tmp_path / "cut")


def test_existing_output_is_kept_unless_overwrite(tmp_path, small_bag, config, pipeline):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(bags.BagError, match="exists already"):
        bags.evaluate_bag(small_bag, out, config, pipeline=pipeline, metrics=False)
    assert (out / "keep.txt").read_text() == "mine"
    bags.evaluate_bag(small_bag, out, config, pipeline=pipeline, metrics=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "report" / "report.json").is_file()
    assert _no_partial_output(tmp_path)


def test_make_errors_name_the_problem_and_write_nothing(tmp_path, capsys):
    assert main(["bag", "make", "--pairs", str(tmp_path / "none"), "--out", str(tmp_path / "b")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["bag", "make", "--pairs", str(PAIRS), "--out", str(tmp_path / "b"), "--resize", "big"]) == 2
    assert "320x240" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["bag", "info", str(tmp_path / "missing")]) == 2
    assert f"bag not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert _no_partial_output(tmp_path)


def test_a_message_that_does_not_deserialise_names_file_topic_and_time(tmp_path, config, pipeline):
    path = tmp_path / "garbage"
    staging = bags.Staging(path)
    writer = bags.BagWriter(staging.path, "mcap", 9, "kilted")
    store = bags.typestore()
    for topic, log_time, msg in _image_stream(store, [(0, 1), (1, 1)]):
        writer.write(topic, msg, log_time)
    writer.write_raw("/thermal/image", bags.IMAGE, 1_800_000_000 * 10**9, b"\x00\x01\x00\x00\x07")
    writer.close()
    staging.commit()
    _eval_fails(
        path, tmp_path / "out", config, pipeline, str(path), "'/thermal/image'", "not a valid sensor_msgs/msg/Image"
    )


def test_typestore_uses_the_packaged_message_definitions_without_msg_folder(monkeypatch):
    # `pip install .` has no share/sgdfuse_ros/msg and no checkout: the bag tools fall back to package data.
    import sgdfuse_ros.resources as resources
    from sgdfuse_ros import bags
    from sgdfuse_ros.bags import bag_io

    def missing(relative: str):
        raise FileNotFoundError(relative)

    monkeypatch.setattr(resources, "find_resource", missing)
    assert bag_io._msg_dir().name == "message_definitions"
    bags.typestore.cache_clear()
    try:
        assert "sgdfuse_ros/msg/FusionStats" in bags.typestore("humble").types
    finally:
        bags.typestore.cache_clear()
