"""Rosbag2 workflow without a ROS runtime: make bags from image pairs, read them, pair them, evaluate them.

Everything here uses the pure-Python ``rosbags`` library (no rclpy), so it runs with ``pip install .``.
The modules:

* :mod:`~sgdfuse_ros.bags.bag_io` -- type stores, Image / CompressedImage building and decoding,
  :func:`open_bag` / :func:`image_topics` / :func:`iter_raw` / :func:`deserialize` (raising
  :class:`BagError` naming the file and topic), staged outputs, :class:`BagWriter` / :func:`write_bag`,
  :func:`bag_info`, and the topic / type / distro constants.
* :mod:`~sgdfuse_ros.bags.make` -- :func:`make_bag`: an image-pair folder (``ir/``, ``vi/``) -> a bag
  whose thermal and RGB stamps behave like two unsynchronised cameras (:class:`MakeOptions`).
* :mod:`~sgdfuse_ros.bags.replay` -- :func:`evaluate_bag`: a bag through
  :class:`~sgdfuse_ros.pipeline.FusionPipeline` offline, paired by :class:`ApproximateSync` (the rule of
  message_filters' ``ApproximateTimeSynchronizer``, docs/bags.md) -> output bag and report folder.
* :mod:`~sgdfuse_ros.bags.report` -- the evaluation report: report.json contents, report.md,
  contact sheet and plots.
* :mod:`~sgdfuse_ros.bags.compare` -- :func:`compare_outputs`: two output bags frame by frame.

The rclpy parts (live playback, recording the node's outputs) live in ``sgdfuse_ros.ros.bag_player``
and ``sgdfuse_ros.ros.bag_recorder`` and build on this package.
"""

from __future__ import annotations

from ..sync import ApproximateSync, PairAccounting, stamp_ns
from .bag_io import (
    COMPRESSED_IMAGE,
    DEFAULT_COUNTS_RANGE,
    DEFAULT_RGB_TOPIC,
    DEFAULT_START_TIME,
    DEFAULT_THERMAL_TOPIC,
    DISTRO_DEFAULTS,
    DISTROS,
    FUSION_STATS,
    IMAGE,
    IMAGE_TYPES,
    OUTPUT_TOPICS,
    BagError,
    BagMessage,
    BagWriter,
    Staging,
    bag_info,
    compressed_message,
    decode_image,
    deserialize,
    image_message,
    image_topics,
    iter_raw,
    open_bag,
    resolve_format,
    staged_output,
    typestore,
    write_bag,
)
from .compare import compare_outputs
from .make import MakeOptions, frame_stamps, make_bag
from .replay import evaluate_bag, metric_sources
from .report import render_report_md

__all__ = [
    "COMPRESSED_IMAGE",
    "DEFAULT_COUNTS_RANGE",
    "DEFAULT_RGB_TOPIC",
    "DEFAULT_START_TIME",
    "DEFAULT_THERMAL_TOPIC",
    "DISTROS",
    "DISTRO_DEFAULTS",
    "FUSION_STATS",
    "IMAGE",
    "IMAGE_TYPES",
    "OUTPUT_TOPICS",
    "ApproximateSync",
    "BagError",
    "BagMessage",
    "BagWriter",
    "MakeOptions",
    "PairAccounting",
    "Staging",
    "bag_info",
    "compare_outputs",
    "compressed_message",
    "decode_image",
    "deserialize",
    "evaluate_bag",
    "frame_stamps",
    "image_message",
    "image_topics",
    "iter_raw",
    "make_bag",
    "metric_sources",
    "open_bag",
    "render_report_md",
    "resolve_format",
    "stamp_ns",
    "staged_output",
    "typestore",
    "write_bag",
]
