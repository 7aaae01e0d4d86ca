"""`sgdfuse`: fuse thermal/visible image pairs or folders to files, without ROS.

    sgdfuse fuse --thermal ir.png --rgb vis.png --out fused.png
    sgdfuse fuse --pairs samples/pairs --out out/fused          # folder with ir/ and vi/ (matched by stem)
    sgdfuse bag make|info|eval|compare|play|record ...          # rosbag2 workflow (docs/bags.md)
    sgdfuse evaluate --data DIR [--peers DIR] [--ablations]    # metrics vs baselines/peers (docs/evaluation.md)
    sgdfuse sheet [--data ../shared/data] [--out docs/contact_sheet.png]   # contact sheet across datasets

Options --config (a ROS parameter file such as config/fuse.yaml) and --set section.key=value
configure the same FuseConfig the ROS node uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .config import ConfigError, FuseConfig, load_config, parse_overrides
from .files import IMAGE_SUFFIXES, find_pairs, read_thermal, read_visible  # noqa: F401  (re-exported)

__all__ = ["find_pairs", "main", "parse_overrides", "read_thermal", "read_visible"]

def _config_from_args(args: argparse.Namespace) -> FuseConfig:
    overrides = parse_overrides(args.set or [])
    if args.device:
        overrides["compute.device"] = args.device
    return load_config(args.config, overrides)


#: Image types `sgdfuse fuse --out` can write (cv2.imwrite picks the encoder from the extension).
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def _fuse_command(args: argparse.Namespace) -> int:
    from .pipeline import FusionPipeline  # torch import only when fusing

    config = _config_from_args(args)
    if args.pairs:
        jobs = [(stem, ir, vi, Path(args.out) / f"{stem}.png") for stem, ir, vi in find_pairs(args.pairs)]
        if not jobs:
            raise ValueError(f"no pairs found in {args.pairs} (expected ir/<name>.* and vi/<name>.* files)")
    elif args.thermal and args.rgb:
        if Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(
                f"--out {args.out}: unsupported image type '{Path(args.out).suffix}' (use {', '.join(OUTPUT_SUFFIXES)})"
            )
        jobs = [(Path(args.rgb).stem, Path(args.thermal), Path(args.rgb), Path(args.out))]
    else:
        print("give --pairs DIR, or --thermal FILE and --rgb FILE", file=sys.stderr)
        return 2
    pipeline = FusionPipeline.from_config(config)
    print(f"prior: {pipeline.prior_name}; device: {pipeline.device}")  # a device fallback was logged as a warning
    timings: list[dict[str, float]] = []
    for stem, ir_path, vi_path, out_path in jobs:
        thermal, thermal_encoding = read_thermal(ir_path)
        visible, visible_encoding = read_visible(vi_path)
        result = pipeline.fuse(
            thermal, visible, thermal_encoding, visible_encoding, keep_preliminary=args.save_intermediate
        )
        _write_rgb(out_path, result.fused)
        if args.save_intermediate:
            stem_dir = out_path.parent
            _write_rgb(stem_dir / "preliminary" / out_path.name, result.preliminary)
            for name, mask in (("mask_ir", result.mask_ir), ("mask_vis", result.mask_vis)):
                (stem_dir / name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(stem_dir / name / out_path.name), mask)
        timings.append(result.timings_ms)
        print(f"{stem}: {out_path}  ({result.timings_ms['total']:.0f} ms)")
    if args.timings:
        Path(args.timings).write_text(json.dumps(timings, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sgdfuse", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    fuse = commands.add_parser("fuse", help="fuse image pairs to files")
    fuse.add_argument("--pairs", help="folder with ir/ and vi/ sub-folders (pairs matched by file stem)")
    fuse.add_argument("--thermal", help="one thermal image (8-bit or 16-bit)")
    fuse.add_argument("--rgb", help="one visible image")
    fuse.add_argument("--out", required=True, help="output file (single pair) or folder (--pairs)")
    fuse.add_argument("--config", help="ROS parameter file, e.g. config/fuse.yaml (defaults otherwise)")
    fuse.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter, e.g. prior.kind=sam")
    fuse.add_argument("--device", help="shortcut for --set compute.device=...")
    fuse.add_argument("--save-intermediate", action="store_true", help="also write F1 and both masks")
    fuse.add_argument("--timings", help="write per-pair stage timings (ms) to this JSON file")
    fuse.set_defaults(handler=_fuse_command)
    _add_bag_commands(commands)
    from .evaluation.command import add_arguments as add_evaluate_arguments  # no torch import at parser build time

    evaluate = commands.add_parser("evaluate", help="metrics of a dataset folder vs baselines, peers, ablations")
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate_command)
    from .evaluation.sheet import add_arguments as add_sheet_arguments

    sheet = commands.add_parser("sheet", help="contact sheet across datasets: IR, VIS, F1, final, a peer, pixel max")
    add_sheet_arguments(sheet)
    sheet.add_argument("--config", help="ROS parameter file, e.g. config/fuse.yaml (defaults otherwise)")
    sheet.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter")
    sheet.add_argument("--device", help="shortcut for --set compute.device=...")
    sheet.set_defaults(handler=_sheet_command)
    return parser


def _evaluate_command(args: argparse.Namespace) -> int:
    from .evaluation.command import evaluate_command  # torch and the pipeline only when evaluating

    return evaluate_command(args, _config_from_args(args))


def _sheet_command(args: argparse.Namespace) -> int:
    from .evaluation.sheet import sheet_command

    return sheet_command(args, _config_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sgdfuse` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    # The library's warnings (e.g. the pipeline's aspect-ratio check) reach the terminal as one line each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sgdfuse: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    library = logging.getLogger("sgdfuse_ros")
    library.addHandler(handler)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as error:
        print(f"sgdfuse: error: {error}", file=sys.stderr)
        return 2
    finally:
        library.removeHandler(handler)


# ------------------------------------------------------------------------------ bag subcommands (docs/bags.md)


def _add_bag_commands(commands: argparse._SubParsersAction) -> None:
    # Literal defaults (bags.DEFAULT_*): importing sgdfuse_ros.bags here would slow down every command.
    DEFAULT_THERMAL_TOPIC, DEFAULT_RGB_TOPIC, DEFAULT_START_TIME = "/thermal/image", "/rgb/image", 1_700_000_000.0
    DISTROS = ("kilted", "jazzy", "humble")
    bag = commands.add_parser("bag", help="rosbag2 workflow: make, info, eval, compare, play, record (docs/bags.md)")
    sub = bag.add_subparsers(dest="bag_command", required=True)

    def storage_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--distro", choices=DISTROS, default="kilted", help="type store and defaults (default kilted)")
        p.add_argument("--storage", choices=("mcap", "sqlite3"), help="default: mcap (kilted, jazzy), sqlite3 (humble)")
        p.add_argument("--bag-version", type=int, choices=(8, 9), help="metadata version; default 9, 8 for humble")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    make = sub.add_parser("make", help="image-pair folder (ir/, vi/) -> rosbag2 bag with a thermal and an RGB topic")
    make.add_argument("--pairs", required=True, help="folder with ir/ and vi/ (pairs matched by file stem)")
    make.add_argument("--out", required=True, help="bag folder to create")
    make.add_argument("--rate", type=float, default=10.0, help="frames per second per camera (default 10)")
    make.add_argument("--offset", type=float, default=0.0, help="thermal stamp minus RGB stamp, seconds")
    make.add_argument("--jitter", type=float, default=0.0, help="each stamp moves by uniform(-J, +J) seconds")
    make.add_argument("--seed", type=int, default=0, help="jitter seed (default 0)")
    make.add_argument("--start-time", type=float, default=DEFAULT_START_TIME, help="first stamp, s since epoch")
    make.add_argument("--count", type=int, help="frames per camera (default: pairs x --loop)")
    make.add_argument("--loop", type=int, default=1, help="passes over the pairs when --count is not given")
    make.add_argument("--resize", metavar="WxH", help="resize both images to exactly WxH")
    make.add_argument("--max-width", type=int, help="shrink (keeping aspect) to at most this width")
    make.add_argument("--thermal-encoding", choices=("mono8", "mono16"), default="mono8")
    make.add_argument("--rgb-encoding", choices=("rgb8", "bgr8"), default="rgb8")
    make.add_argument(
        "--thermal-compression",
        choices=("none", "png", "jpeg"),
        default="none",
        help="publish thermal as CompressedImage (png keeps mono16)",
    )
    make.add_argument(
        "--rgb-compression", choices=("none", "jpeg", "png"), default="none", help="publish RGB as CompressedImage"
    )
    make.add_argument("--jpeg-quality", type=int, default=90)
    make.add_argument("--thermal-topic", default=DEFAULT_THERMAL_TOPIC)
    make.add_argument("--rgb-topic", default=DEFAULT_RGB_TOPIC)
    make.add_argument("--thermal-frame", default="thermal", help="thermal header frame_id")
    make.add_argument("--rgb-frame", default="rgb_camera", help="RGB header frame_id")
    storage_options(make)
    make.set_defaults(handler=_bag_make)

    info = sub.add_parser("info", help="topics, counts, encodings, rates and stamp anomalies of a bag")
    info.add_argument("bag")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_bag_info)

    evaluate = sub.add_parser("eval", help="offline replay through the fusion pipeline -> output bag + report")
    evaluate.add_argument("bag")
    evaluate.add_argument("--out", required=True, help="folder to create: bag/ and report/")
    evaluate.add_argument("--config", help="ROS parameter file, e.g. config/fuse.yaml (node.sync_* apply too)")
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter")
    evaluate.add_argument("--device", help="shortcut for --set compute.device=...")
    evaluate.add_argument("--thermal-topic", default=DEFAULT_THERMAL_TOPIC)
    evaluate.add_argument("--rgb-topic", default=DEFAULT_RGB_TOPIC)
    evaluate.add_argument("--no-metrics", action="store_true", help="skip the fusion metrics (faster)")
    evaluate.add_argument("--samples", type=int, default=6, help="frames on the contact sheet (default 6)")
    storage_options(evaluate)
    evaluate.set_defaults(handler=_bag_eval)

    compare = sub.add_parser("compare", help="compare two output bags frame by frame (record vs eval)")
    compare.add_argument("live", help="bag from `sgdfuse bag record` (or any bag with fused/* topics)")
    compare.add_argument("offline", help="bag/ folder written by `sgdfuse bag eval`")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(handler=_bag_compare)

    play = sub.add_parser("play", help="publish a bag over rclpy with its recorded timing (and /clock)")
    play.add_argument("bag")
    play.add_argument("--rate", type=float, default=1.0, help="speed factor (default 1.0)")
    play.add_argument("--loop", action="store_true", help="start again at the end until Ctrl-C")
    play.add_argument("--start-offset", type=float, default=0.0, help="skip the first seconds of the bag")
    play.add_argument("--topics", nargs="+", default=[], help="topics to play (default: all)")
    play.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="publish FROM on TO")
    play.add_argument(
        "--clock",
        type=float,
        nargs="?",
        const=100.0,
        default=0.0,
        metavar="HZ",
        help="publish /clock (default 100 Hz when given) for use_sim_time",
    )
    play.add_argument("--qos", choices=("reliable", "sensor_data"), default="reliable")
    play.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for a subscriber on every topic before playing",
    )
    play.add_argument(
        "--settle",
        type=float,
        default=1.0,
        metavar="S",
        help="with --wait-for-subscribers: S more seconds once they appeared, so both sides finish discovery "
        "before the first message (a sample sent earlier can be lost; default 1)",
    )
    play.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], help="rclpy arguments (last)")
    play.set_defaults(handler=_bag_play)

    record = sub.add_parser("record", help="record the node's outputs (or --topic ...) into a bag")
    record.add_argument("--out", required=True, help="bag folder to create")
    record.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME:TYPE",
        help="e.g. /fused/image:sensor_msgs/msg/Image (default: the node's fused/* outputs)",
    )
    record.add_argument("--namespace", default="", help="namespace of the node's outputs")
    record.add_argument("--duration", type=float, default=0.0, help="stop after S seconds")
    record.add_argument("--count", type=int, default=0, help="stop after N fused images (+0.5 s grace)")
    record.add_argument(
        "--idle-timeout", type=float, default=0.0, help="stop S seconds after the last --count-topic message"
    )
    record.add_argument("--count-topic", help="topic for --count / --idle-timeout (default: the fused image)")
    record.add_argument("--qos", choices=("reliable", "best_effort"), default="reliable")
    record.add_argument(
        "--wait-for-publishers", type=float, default=0.0, metavar="S", help="first wait up to S s for every publisher"
    )
    record.add_argument("--ready-file", help="create this file once listening (after --wait-for-publishers)")
    storage_options(record)
    record.add_argument("--ros-args", nargs=argparse.REMAINDER, default=[], help="rclpy arguments (last)")
    record.set_defaults(handler=_bag_record)


def _bag_make(args: argparse.Namespace) -> int:
    from .bags import MakeOptions, make_bag

    options = MakeOptions(
        rate=args.rate,
        offset=args.offset,
        jitter=args.jitter,
        seed=args.seed,
        start_time=args.start_time,
        count=args.count,
        loop=args.loop,
        resize=args.resize,
        max_width=args.max_width,
        thermal_encoding=args.thermal_encoding,
        rgb_encoding=args.rgb_encoding,
        thermal_compression=args.thermal_compression,
        rgb_compression=args.rgb_compression,
        jpeg_quality=args.jpeg_quality,
        thermal_topic=args.thermal_topic,
        rgb_topic=args.rgb_topic,
        thermal_frame=args.thermal_frame,
        rgb_frame=args.rgb_frame,
        distro=args.distro,
        storage=args.storage,
        version=args.bag_version,
    )
    summary = make_bag(args.pairs, args.out, options, overwrite=args.overwrite)
    print(
        f"wrote {summary['path']}: {summary['frames_per_topic']} frames per topic from {summary['pairs']} pairs, "
        f"{summary['duration_s']:.2f} s, {summary['storage']} v{summary['version']} ({summary['distro']}), "
        f"{summary['bytes'] / 1e6:.2f} MB"
    )
    for topic, msgtype in summary["topics"].items():
        print(f"  {topic}  {msgtype}")
    return 0


def _bag_info(args: argparse.Namespace) -> int:
    from .bags import bag_info

    info = bag_info(args.bag)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['path']}: {info['storage']} v{info['version']}, {info['message_count']} messages, "
        f"{info['duration_s']:.3f} s"
    )
    for topic, entry in sorted(info["topics"].items()):
        extra = [
            f"{k}={entry[k]}"
            for k in (
                "encoding",
                "format",
                "width",
                "height",
                "frame_id",
                "rate_hz",
                "stamps_backwards",
                "stamps_repeated",
            )
            if k in entry
        ]
        print(f"  {topic}  {entry['type']}  {entry['count']} msgs  " + " ".join(extra))
    return 0


def _bag_eval(args: argparse.Namespace) -> int:
    from .bags import evaluate_bag

    config = _config_from_args(args)
    report = evaluate_bag(
        args.bag,
        args.out,
        config,
        thermal_topic=args.thermal_topic,
        rgb_topic=args.rgb_topic,
        distro=args.distro,
        storage=args.storage,
        version=args.bag_version,
        metrics=not args.no_metrics,
        sample_frames=args.samples,
        overwrite=args.overwrite,
        progress=print,
    )
    p, lat = report["pairing"], report["latency_ms"]
    print(
        f"pairs {p['pairs']} (thermal in {p['received']['thermal']}, RGB in {p['received']['rgb']}; unpaired "
        f"{p['unpaired']['thermal']}/{p['unpaired']['rgb']}), fused {p['fused']}, dropped {p['dropped']}"
    )
    if lat["count"]:
        print(f"latency ms p50 {lat['p50']:.1f} p95 {lat['p95']:.1f} p99 {lat['p99']:.1f}")
    print(f"wrote {Path(args.out) / 'bag'} and {Path(args.out) / 'report' / 'report.md'}")
    return 0


def _bag_compare(args: argparse.Namespace) -> int:
    from .bags import compare_outputs

    result = compare_outputs(args.live, args.offline)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for topic, entry in result["topics"].items():
        line = f"{topic}: live {entry['live']}, offline {entry['offline']}, common stamps {entry['common']}"
        if "max_abs_diff" in entry:
            line += (
                f"; max |diff| {entry['max_abs_diff']}, worst frame {entry['max_fraction_differing'] * 100:.3f}% "
                f"pixels differ, mean |diff| {entry['mean_abs_diff']:.4f}"
            )
        if "last_common_counters" in entry:
            line += "; last counters (live, offline): " + ", ".join(
                f"{k} {v[0]}/{v[1]}" for k, v in entry["last_common_counters"].items()
            )
        print(line)
    for side in ("live", "offline"):
        if result[f"topics_only_{side}"]:
            print(f"only in {side}: {', '.join(result[f'topics_only_{side}'])}")
    return 0


def _needs_rclpy(command: str) -> None:
    try:
        import rclpy  # noqa: F401
    except ImportError as error:
        raise ValueError(
            f"bag {command} needs rclpy (a ROS 2 install, or the venv `make build` creates): {error}"
        ) from None


def _bag_play(args: argparse.Namespace) -> int:
    _needs_rclpy("play")
    from .ros.bag_player import PlayOptions, parse_remaps, run  # rclpy only here

    options = PlayOptions(
        rate=args.rate,
        loop=args.loop,
        start_offset=args.start_offset,
        topics=args.topics,
        remap=parse_remaps(args.remap),
        clock_hz=args.clock,
        qos=args.qos,
        wait_for_subscribers=args.wait_for_subscribers,
        settle=args.settle,
    )
    result = run(args.bag, options, ros_args=args.ros_args)
    published = ", ".join(f"{topic}: {n}" for topic, n in sorted(result["published"].items())) or "nothing"
    print(
        f"published {published} ({result['loops']} pass(es))" + (" - interrupted" if result.get("interrupted") else "")
    )
    return 0


def _bag_record(args: argparse.Namespace) -> int:
    _needs_rclpy("record")
    from .ros.bag_recorder import default_topics, parse_topics, record  # rclpy only here

    topics = parse_topics(args.topic) if args.topic else default_topics(args.namespace)
    result = record(
        args.out,
        topics,
        duration=args.duration,
        count=args.count,
        count_topic=args.count_topic,
        idle_timeout=args.idle_timeout,
        distro=args.distro,
        storage=args.storage,
        version=args.bag_version,
        qos=args.qos,
        overwrite=args.overwrite,
        ros_args=args.ros_args,
        ready_file=args.ready_file,
        wait_for_publishers=args.wait_for_publishers,
    )
    counts = ", ".join(f"{topic}: {n}" for topic, n in sorted(result["counts"].items()))
    print(f"wrote {result['path']} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
