"""Rosbag2 workflow without a ROS runtime: make bags from image pairs, read them, pair them, evaluate them.

Everything here uses the pure-Python ``rosbags`` library (no rclpy), so it runs with ``pip install .``:

* :func:`make_bag` turns an image-pair folder (``ir/``, ``vi/``) into a rosbag2 bag (MCAP or sqlite3)
  with a thermal and an RGB topic whose stamps behave like two unsynchronised cameras (rate, fixed
  offset, seeded jitter), raw ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage``.
* :func:`open_bag` / :func:`image_topics` / :func:`iter_raw` read bags and check them, raising
  :class:`BagError` naming the file and the topic for every unusable input.
* :class:`ApproximateSync` is the pairing rule of message_filters' ``ApproximateTimeSynchronizer``
  for two inputs (docs/bags.md writes it down), with the accounting the node's stats report.
* :func:`evaluate_bag` replays a bag through :class:`~sgdfuse_ros.pipeline.FusionPipeline` offline and
  writes an output bag (fused image, masks, ``sgdfuse_ros/msg/FusionStats``) plus a report folder.

The rclpy parts (live playback, recording the node's outputs) live in ``sgdfuse_ros.ros.bag_player``
and ``sgdfuse_ros.ros.bag_recorder`` and build on this module.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .sync import ApproximateSync, PairAccounting, stamp_ns

if TYPE_CHECKING:  # heavy imports (torch) only where a pipeline is built
    from .config import FuseConfig
    from .pipeline import FusionPipeline, FusionResult

__all__ = [
    "COMPRESSED_IMAGE",
    "DEFAULT_RGB_TOPIC",
    "DEFAULT_THERMAL_TOPIC",
    "DISTROS",
    "FUSION_STATS",
    "IMAGE",
    "OUTPUT_TOPICS",
    "ApproximateSync",
    "BagError",
    "BagMessage",
    "BagWriter",
    "Staging",
    "bag_info",
    "compare_outputs",
    "decode_image",
    "evaluate_bag",
    "image_message",
    "image_topics",
    "iter_raw",
    "make_bag",
    "open_bag",
    "typestore",
    "write_bag",
]

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
FUSION_STATS = "sgdfuse_ros/msg/FusionStats"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

#: Input topics as the node sees them with its default names (``thermal/image``, ``rgb/image``) at the root.
DEFAULT_THERMAL_TOPIC = "/thermal/image"
DEFAULT_RGB_TOPIC = "/rgb/image"
#: Output topics of the node (and of the offline evaluation bag).
OUTPUT_TOPICS: dict[str, str] = {
    "fused": "/fused/image",
    "mask_ir": "/fused/mask/ir",
    "mask_vis": "/fused/mask/vis",
    "stats": "/fused/stats",
}

#: Distro name -> rosbags type store; each also gets sgdfuse_ros/msg/* from msg/*.msg.
DISTROS = ("kilted", "jazzy", "humble")
#: Storage plugin and metadata version a distro's ``ros2 bag`` reads out of the box.
DISTRO_DEFAULTS = {"kilted": ("mcap", 9), "jazzy": ("mcap", 9), "humble": ("sqlite3", 8)}
#: First stamp of made bags (2023-11-14T22:13:20Z): fixed so that made bags are reproducible.
DEFAULT_START_TIME = 1_700_000_000.0
#: Raw counts that mono8 0 and 255 map to in mono16 bags: the node's default thermal.counts_min/max,
#: so the default configuration maps them back to the original grey levels.
DEFAULT_COUNTS_RANGE = (27000.0, 33000.0)


class BagError(ValueError):
    """A bag cannot be made, read or evaluated; the message names the file (and topic) concerned."""


# ------------------------------------------------------------------------------------------ type stores


def _msg_dir() -> Path:
    """Folder holding FusionStats.msg / StageTiming.msg: share/sgdfuse_ros/msg when installed with ROS, else msg/
    of a checkout, else the copy shipped as package data (``pip install .``; a test keeps it equal to msg/)."""
    from .resources import find_resource

    try:
        return find_resource("msg/FusionStats.msg").parent
    except FileNotFoundError:
        return Path(__file__).resolve().parent / "message_definitions"


@functools.cache
def typestore(distro: str = "kilted") -> Any:
    """rosbags Typestore of ``distro`` (kilted, jazzy, humble) with sgdfuse_ros/msg/* registered from msg/*.msg."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    stores = {"kilted": Stores.ROS2_KILTED, "jazzy": Stores.ROS2_JAZZY, "humble": Stores.ROS2_HUMBLE}
    if distro not in stores:
        raise BagError(f"unknown distro '{distro}' (choose from {', '.join(DISTROS)})")
    store = get_typestore(stores[distro])
    types: dict[str, Any] = {}
    for path in sorted(_msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"sgdfuse_ros/msg/{path.stem}"))
    store.register(types)
    return store


# ------------------------------------------------------------------------------------ message building


def _stamp(store: Any, nanoseconds: int) -> Any:
    Time = store.types["builtin_interfaces/msg/Time"]
    return Time(sec=int(nanoseconds // 1_000_000_000), nanosec=int(nanoseconds % 1_000_000_000))


def _header(store: Any, stamp_ns: int, frame_id: str) -> Any:
    return store.types["std_msgs/msg/Header"](stamp=_stamp(store, stamp_ns), frame_id=frame_id)


def image_message(store: Any, image: np.ndarray, encoding: str, stamp: int, frame_id: str) -> Any:
    """sensor_msgs/Image (rosbags object) holding ``image`` (uint8/uint16/float32 [H, W] or [H, W, C])."""
    image = np.ascontiguousarray(image)
    if image.dtype.byteorder == ">":  # ROS images here are little-endian (is_bigendian = 0)
        image = image.astype(image.dtype.newbyteorder("<"))
    height, width = image.shape[:2]
    return store.types[IMAGE](
        header=_header(store, stamp, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=int(image.strides[0]),
        data=np.frombuffer(image.tobytes(), dtype=np.uint8),  # rosbags needs a uint8 array here
    )


def compressed_message(
    store: Any, image: np.ndarray, encoding: str, codec: str, stamp: int, frame_id: str, jpeg_quality: int = 90
) -> Any:
    """sensor_msgs/CompressedImage (rosbags object), ``format`` as compressed_image_transport writes it.

    ``image`` is what a raw Image of ``encoding`` would hold; colour images are encoded from BGR order,
    so the decoded image is bgr8 (format "rgb8; jpeg compressed bgr8" for an rgb8 camera).
    """
    if codec not in ("jpeg", "png"):
        raise BagError(f"unknown compression '{codec}' (choose jpeg or png)")
    if image.ndim == 3:
        bgr = image[:, :, ::-1] if encoding.startswith("rgb") else image
        data_image, target = np.ascontiguousarray(bgr[:, :, :3]), "bgr8"
    else:
        data_image, target = image, ("mono16" if image.dtype == np.uint16 else "mono8")
    if codec == "jpeg" and data_image.dtype != np.uint8:
        raise BagError(f"jpeg cannot hold a {encoding} image (use png for 16-bit thermal)")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buffer = cv2.imencode(".jpg" if codec == "jpeg" else ".png", data_image, params)
    if not ok:
        raise BagError(f"cannot {codec}-encode a {encoding} image of shape {image.shape}")
    return store.types[COMPRESSED_IMAGE](
        header=_header(store, stamp, frame_id),
        format=f"{encoding}; {codec} compressed {target}",
        data=np.asarray(buffer, dtype=np.uint8).reshape(-1),
    )


# ------------------------------------------------------------------------------------------ decoding


def decode_image(msg: Any, which: str = "image") -> tuple[np.ndarray, str]:
    """sensor_msgs/Image or CompressedImage (rosbags or rclpy object) -> (array, encoding) for the pipeline.

    The node's own decoding (:mod:`sgdfuse_ros.messages`, which ``sgdfuse_ros.ros.conversion``
    re-exports): ``which`` = "thermal" or "rgb" is :func:`~sgdfuse_ros.messages.thermal_to_array` /
    :func:`~sgdfuse_ros.messages.rgb_to_array` (the encodings the node accepts); anything else accepts
    all of :data:`~sgdfuse_ros.messages.ENCODINGS`.
    Raises imaging.InvalidImageError with reason ``<which>_encoding`` / ``_empty`` / ``_step`` /
    ``_data_size`` / ``_format`` / ``_decode`` / ``_nonfinite``.
    """
    # Imported on first use: sgdfuse_ros.imaging pulls in torch, which ``bag make`` / ``bag info`` never need.
    from . import messages

    if which == "thermal":
        return messages.thermal_to_array(msg)
    if which == "rgb":
        return messages.rgb_to_array(msg)
    return messages.decode(msg, which)


# -------------------------------------------------------------------------------------------- reading


@dataclass
class BagMessage:
    """One message as stored: topic, type, log time (ns) and CDR bytes."""

    topic: str
    msgtype: str
    log_time: int
    raw: bytes


class _OpenBag:
    """An opened rosbags Reader plus the path, for error messages."""

    def __init__(self, path: Path, reader: Any) -> None:
        self.path = path
        self.reader = reader

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type."""
        return {c.topic: c.msgtype for c in self.reader.connections}

    def close(self) -> None:
        self.reader.close()


@contextlib.contextmanager
def open_bag(path: str | Path) -> Iterator[_OpenBag]:
    """Open a rosbag2 folder (MCAP or sqlite3), or a bare .mcap / .db3 file, for reading.

    BagError names the path when that fails (missing, no metadata.yaml, unknown storage, damaged).
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    try:
        reader = Reader(path)
        reader.open()
    except Exception as error:  # noqa: BLE001 - rosbags raises ReaderError, FileNotFoundError, sqlite3/OSError
        raise BagError(f"cannot open bag {path} (truncated, damaged or not a rosbag2 bag): {error}") from error
    bag = _OpenBag(path, reader)
    try:
        yield bag
    finally:
        bag.close()


def image_topics(bag: _OpenBag, thermal_topic: str, rgb_topic: str) -> dict[str, str]:
    """{"thermal": msgtype, "rgb": msgtype} after checking both topics exist and hold image messages."""
    topics = bag.topics
    found = {}
    for which, topic in (("thermal", thermal_topic), ("rgb", rgb_topic)):
        if topic not in topics:
            available = ", ".join(f"{t} [{m}]" for t, m in sorted(topics.items())) or "none"
            raise BagError(f"{bag.path}: {which} topic '{topic}' is not in the bag (topics: {available})")
        if topics[topic] not in IMAGE_TYPES:
            raise BagError(
                f"{bag.path}: {which} topic '{topic}' holds {topics[topic]}, expected {IMAGE} or {COMPRESSED_IMAGE}"
            )
        found[which] = topics[topic]
    return found


def iter_raw(bag: _OpenBag, topics: Sequence[str]) -> Iterator[BagMessage]:
    """Messages of ``topics`` in log-time order; BagError (naming file and topic) when the storage is damaged."""
    connections = [c for c in bag.reader.connections if c.topic in topics]
    last_topic = "?"
    try:
        for connection, log_time, raw in bag.reader.messages(connections=connections):
            last_topic = connection.topic
            yield BagMessage(connection.topic, connection.msgtype, int(log_time), bytes(raw))
    except BagError:
        raise
    except Exception as error:  # noqa: BLE001 - truncated MCAP / malformed sqlite surface as various types
        raise BagError(
            f"{bag.path}: bag is truncated or damaged (reading after a message on '{last_topic}'): {error}"
        ) from error


def deserialize(bag: _OpenBag, message: BagMessage, store: Any) -> Any:
    """CDR bytes -> rosbags message object; BagError names the file, topic and log time when they are corrupt."""
    try:
        return store.deserialize_cdr(message.raw, message.msgtype)
    except Exception as error:  # noqa: BLE001 - rosbags raises assorted errors on short/corrupt buffers
        raise BagError(
            f"{bag.path}: message on '{message.topic}' at log time {message.log_time} is not a valid "
            f"{message.msgtype}: {error}"
        ) from error


# -------------------------------------------------------------------------------------------- writing


class Staging:
    """A fresh path next to ``dest`` to build an output in; :meth:`commit` moves it to ``dest``, :meth:`discard`
    deletes it. Nothing appears at ``dest`` before the commit (an existing ``dest`` needs ``overwrite``)."""

    def __init__(self, dest: str | Path, *, overwrite: bool = False) -> None:
        self.dest = Path(dest)
        if self.dest.exists() and not overwrite:
            raise BagError(f"{self.dest} exists already (remove it or pass --overwrite)")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.partial-", dir=self.dest.parent))
        self.path = self.folder / self.dest.name  #: where to build (does not exist yet)

    def commit(self) -> Path:
        if not self.path.exists():
            raise BagError(f"internal error: nothing was produced for {self.dest}")
        if self.dest.exists():
            self.dest.rename(self.folder / (self.dest.name + ".old"))
        self.path.rename(self.dest)
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.dest

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def staged_output(dest: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh path next to ``dest``; on success move it to ``dest``, on failure delete it.

    Nothing appears at ``dest`` unless the block completes. Known errors are re-raised as BagError
    saying that nothing was written; other exceptions (interrupts, bugs) are re-raised unchanged
    after the same clean-up.
    """
    staging = Staging(dest, overwrite=overwrite)
    try:
        yield staging.path
        staging.commit()
    except (BagError, OSError, ValueError) as error:
        staging.discard()
        raise BagError(f"{error} -- nothing written to {staging.dest}") from error
    except BaseException:
        staging.discard()
        raise


def _storage(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise BagError(f"unknown storage '{storage}' (choose mcap or sqlite3)")
    return plugins[storage]


def resolve_format(distro: str, storage: str | None, version: int | None) -> tuple[str, int]:
    """(storage, metadata version) for ``distro``: its defaults, explicit choices checked against it."""
    if distro not in DISTRO_DEFAULTS:
        raise BagError(f"unknown distro '{distro}' (choose from {', '.join(DISTROS)})")
    default_storage, default_version = DISTRO_DEFAULTS[distro]
    storage = storage or default_storage
    version = version or default_version
    if version not in (8, 9):
        raise BagError(f"bag metadata version must be 8 or 9, got {version}")
    if distro == "humble" and version > 8:
        raise BagError("Humble's rosbag2 rejects metadata version 9: use version 8 for --distro humble")
    _storage(storage)
    return storage, version


class BagWriter:
    """rosbags Writer with one connection per topic, created on first use (``add`` to create one up front)."""

    def __init__(self, path: Path, storage: str, version: int, distro: str) -> None:
        from rosbags.rosbag2 import Writer

        self.store = typestore(distro)
        self.writer = Writer(path, version=version, storage_plugin=_storage(storage))
        self.writer.open()
        self.connections: dict[str, Any] = {}

    def add(self, topic: str, msgtype: str) -> None:
        """Declare ``topic`` so that it is listed in the bag even if no message arrives."""
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)

    def write_raw(self, topic: str, msgtype: str, log_time: int, raw: bytes | memoryview) -> None:
        if topic not in self.connections:
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
        self.writer.write(self.connections[topic], int(log_time), raw)

    def write(self, topic: str, msg: Any, log_time: int) -> None:
        self.write_raw(topic, msg.__msgtype__, log_time, self.store.serialize_cdr(msg, msg.__msgtype__))

    def close(self) -> None:
        self.writer.close()


def write_bag(
    path: str | Path,
    messages: Iterable[tuple[str, int, Any]],
    *,
    distro: str = "kilted",
    storage: str | None = None,
    version: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write (topic, log time ns, rosbags message) tuples, in the given order, to a new bag at ``path``.

    The bag appears at ``path`` only when complete (see :func:`staged_output`).
    """
    storage, version = resolve_format(distro, storage, version)
    path = Path(path)
    with staged_output(path, overwrite=overwrite) as staging:
        writer = BagWriter(staging, storage, version, distro)
        try:
            for topic, log_time, msg in messages:
                writer.write(topic, msg, log_time)
        finally:
            writer.close()
    return path


# ---------------------------------------------------------------------------------------------- make


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise BagError(f"size must look like 320x240, got '{text}'")
    return int(match.group(1)), int(match.group(2))


def _thermal_as(image: np.ndarray, encoding: str, counts_range: tuple[float, float]) -> np.ndarray:
    """Thermal file pixels (uint8 grey or uint16 counts) -> ``encoding`` (mono8, or mono16 counts)."""
    low, high = counts_range
    if encoding == "mono16":
        if image.dtype == np.uint16:
            return image
        return np.round(low + image.astype(np.float64) * ((high - low) / 255.0)).astype(np.uint16)
    if image.dtype == np.uint8:
        return image
    scaled = (image.astype(np.float64) - low) / (high - low) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


@dataclass
class MakeOptions:
    """How :func:`make_bag` turns pairs into a bag (see ``sgdfuse bag make --help``)."""

    rate: float = 10.0  #: frames per second of each camera
    offset: float = 0.0  #: thermal stamp minus RGB stamp (s), a fixed skew between the cameras
    jitter: float = 0.0  #: each stamp moves by uniform(-jitter, +jitter) s, independently per camera
    seed: int = 0  #: jitter random seed
    start_time: float = DEFAULT_START_TIME  #: first RGB stamp (s since epoch)
    count: int | None = None  #: number of frames per camera; default len(pairs) * loop
    loop: int = 1  #: passes over the pairs when count is not given
    resize: str | None = None  #: "WxH": both images resized to exactly this size
    max_width: int | None = None  #: shrink (keeping aspect) so the RGB image is at most this wide
    thermal_encoding: str = "mono8"  #: mono8 | mono16
    rgb_encoding: str = "rgb8"  #: rgb8 | bgr8
    thermal_compression: str = "none"  #: none | png | jpeg (jpeg only with mono8)
    rgb_compression: str = "none"  #: none | jpeg | png
    jpeg_quality: int = 90
    counts_range: tuple[float, float] = DEFAULT_COUNTS_RANGE  #: mono16 counts for grey 0 and 255
    thermal_topic: str = DEFAULT_THERMAL_TOPIC
    rgb_topic: str = DEFAULT_RGB_TOPIC
    thermal_frame: str = "thermal"  #: as pair_publisher
    rgb_frame: str = "rgb_camera"  #: as pair_publisher
    distro: str = "kilted"
    storage: str | None = None  #: default: mcap (kilted, jazzy), sqlite3 (humble)
    version: int | None = None  #: default: 9 (kilted, jazzy), 8 (humble)

    def check(self) -> None:
        """Raise BagError naming the first invalid option."""
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise BagError(f"rate must be > 0 frames/s, got {self.rate}")
        if not (self.jitter >= 0 and math.isfinite(self.jitter)):
            raise BagError(f"jitter must be >= 0 s, got {self.jitter}")
        if not math.isfinite(self.offset):
            raise BagError(f"offset must be finite, got {self.offset}")
        if self.count is not None and self.count < 1:
            raise BagError(f"count must be >= 1, got {self.count}")
        if self.loop < 1:
            raise BagError(f"loop must be >= 1, got {self.loop}")
        if self.thermal_encoding not in ("mono8", "mono16"):
            raise BagError(f"thermal encoding must be mono8 or mono16, got '{self.thermal_encoding}'")
        if self.rgb_encoding not in ("rgb8", "bgr8"):
            raise BagError(f"RGB encoding must be rgb8 or bgr8, got '{self.rgb_encoding}'")
        if self.thermal_compression not in ("none", "png", "jpeg"):
            raise BagError(f"thermal compression must be none, png or jpeg, got '{self.thermal_compression}'")
        if self.thermal_compression == "jpeg" and self.thermal_encoding == "mono16":
            raise BagError("jpeg cannot hold mono16 thermal images: use --thermal-compression png")
        if self.rgb_compression not in ("none", "jpeg", "png"):
            raise BagError(f"RGB compression must be none, jpeg or png, got '{self.rgb_compression}'")
        if not 1 <= self.jpeg_quality <= 100:
            raise BagError(f"jpeg quality must be in [1, 100], got {self.jpeg_quality}")
        if self.max_width is not None and self.max_width < 1:
            raise BagError(f"max width must be >= 1, got {self.max_width}")
        if self.resize:
            _parse_size(self.resize)
        if self.thermal_topic == self.rgb_topic:
            raise BagError(f"thermal and RGB topics must differ, both are '{self.thermal_topic}'")
        if self.counts_range[1] <= self.counts_range[0]:
            raise BagError(f"counts range must be increasing, got {self.counts_range}")
        resolve_format(self.distro, self.storage, self.version)


def frame_stamps(options: MakeOptions, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(thermal stamps, RGB stamps) in int64 ns for ``count`` frames: nominal grid + offset + seeded uniform jitter."""
    rng = np.random.default_rng(options.seed)
    nominal = round(options.start_time * 1e9) + np.round(np.arange(count) * (1e9 / options.rate)).astype(np.int64)
    jitter_rgb = np.round(rng.uniform(-options.jitter, options.jitter, count) * 1e9).astype(np.int64)
    jitter_thermal = np.round(rng.uniform(-options.jitter, options.jitter, count) * 1e9).astype(np.int64)
    rgb = nominal + jitter_rgb
    thermal = nominal + round(options.offset * 1e9) + jitter_thermal
    return np.maximum(thermal, 0), np.maximum(rgb, 0)


def _prepare_pair(ir_path: Path, vi_path: Path, options: MakeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair -> (thermal in the bag's encoding, RGB in the bag's encoding), resized as asked."""
    from .files import read_thermal, read_visible

    thermal, _ = read_thermal(ir_path)
    visible, _ = read_visible(vi_path)  # BGR
    size = None
    if options.resize:
        size = _parse_size(options.resize)
        thermal_size = size
    elif options.max_width and visible.shape[1] > options.max_width:
        factor = options.max_width / visible.shape[1]
        size = (options.max_width, max(1, round(visible.shape[0] * factor)))
        thermal_size = (max(1, round(thermal.shape[1] * factor)), max(1, round(thermal.shape[0] * factor)))
    if size is not None:
        visible = cv2.resize(visible, size, interpolation=cv2.INTER_AREA)
        thermal = cv2.resize(thermal, thermal_size, interpolation=cv2.INTER_AREA)
    thermal = _thermal_as(thermal, options.thermal_encoding, options.counts_range)
    rgb = visible[:, :, ::-1] if options.rgb_encoding == "rgb8" else visible
    return thermal, np.ascontiguousarray(rgb)


def make_bag(
    pairs: str | Path, out: str | Path, options: MakeOptions | None = None, *, overwrite: bool = False
) -> dict:
    """Image-pair folder (``ir/``, ``vi/`` matched by stem) -> rosbag2 bag at ``out``; returns a summary dict.

    Frame i shows pair ``i % len(pairs)``; its RGB stamp is ``start + i / rate`` (+ jitter) and its
    thermal stamp that plus ``offset`` (+ independent jitter). Log (receive) time = header stamp, and
    messages are written in log-time order, as a recorder would store two free-running cameras.
    """
    from .files import find_pairs

    options = options or MakeOptions()
    options.check()
    pairs_dir = Path(pairs)
    if not pairs_dir.is_dir():
        raise BagError(f"pair folder not found: {pairs_dir}")
    found = find_pairs(pairs_dir)
    if not found:
        raise BagError(f"{pairs_dir}: no pairs (same file stem in ir/ and vi/)")
    count = options.count or len(found) * options.loop
    thermal_stamps, rgb_stamps = frame_stamps(options, count)
    store = typestore(options.distro)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def image_msg(which: str, image: np.ndarray, stamp: int) -> Any:
        if which == "thermal":
            encoding, codec, frame = options.thermal_encoding, options.thermal_compression, options.thermal_frame
        else:
            encoding, codec, frame = options.rgb_encoding, options.rgb_compression, options.rgb_frame
        if codec == "none":
            return image_message(store, image, encoding, stamp, frame)
        return compressed_message(store, image, encoding, codec, stamp, frame, options.jpeg_quality)

    # Events sorted by log time (= stamp); RGB first on ties, a recorder's order is arbitrary there.
    events = sorted(
        [(int(rgb_stamps[i]), 0, i) for i in range(count)] + [(int(thermal_stamps[i]), 1, i) for i in range(count)]
    )

    def messages() -> Iterator[tuple[str, int, Any]]:
        for stamp, kind, i in events:
            index = i % len(found)
            if index not in cache:
                cache[index] = _prepare_pair(found[index][1], found[index][2], options)
            thermal, rgb = cache[index]
            if kind == 0:
                yield options.rgb_topic, stamp, image_msg("rgb", rgb, stamp)
            else:
                yield options.thermal_topic, stamp, image_msg("thermal", thermal, stamp)

    write_bag(
        out, messages(), distro=options.distro, storage=options.storage, version=options.version, overwrite=overwrite
    )
    storage, version = resolve_format(options.distro, options.storage, options.version)
    return {
        "path": str(out),
        "pairs": len(found),
        "frames_per_topic": count,
        "topics": {
            options.thermal_topic: _topic_type(options.thermal_compression),
            options.rgb_topic: _topic_type(options.rgb_compression),
        },
        "storage": storage,
        "version": version,
        "distro": options.distro,
        "duration_s": float(max(thermal_stamps.max(), rgb_stamps.max()) - min(thermal_stamps.min(), rgb_stamps.min()))
        / 1e9,
        "bytes": sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file()),
    }


def _topic_type(codec: str) -> str:
    return IMAGE if codec == "none" else COMPRESSED_IMAGE


# --------------------------------------------------------------------------------------------- info


def bag_info(path: str | Path, distro: str = "kilted") -> dict:
    """Storage, version, duration and per-topic counts, types and stamp behaviour (for ``sgdfuse bag info``).

    Image topics also report the first message's encoding/format and size, the mean rate and how
    often header stamps went backwards or repeated.
    """
    store = typestore(distro)
    with open_bag(path) as bag:
        reader = bag.reader
        metadata: dict = {}
        if (bag.path / "metadata.yaml").is_file():
            import yaml

            with contextlib.suppress(Exception):
                metadata = yaml.safe_load((bag.path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        info: dict[str, Any] = {
            "path": str(bag.path),
            "storage": metadata.get("storage_identifier", bag.path.suffix.lstrip(".")),
            "version": metadata.get("version"),
            "ros_distro": metadata.get("ros_distro"),
            "message_count": int(reader.message_count),
            "start_s": reader.start_time / 1e9 if reader.message_count else None,
            "duration_s": reader.duration / 1e9 if reader.message_count else 0.0,
            "topics": {},
        }
        stamps: dict[str, list[int]] = {}
        for connection in reader.connections:
            info["topics"][connection.topic] = {"type": connection.msgtype, "count": int(connection.msgcount)}
        header_topics = [t for t, m in bag.topics.items() if m in (*IMAGE_TYPES, FUSION_STATS)]
        for message in iter_raw(bag, header_topics):
            msg = deserialize(bag, message, store)
            topic_stamps = stamps.setdefault(message.topic, [])
            if not topic_stamps and message.msgtype in IMAGE_TYPES:
                entry = info["topics"][message.topic]
                entry["frame_id"] = msg.header.frame_id
                if message.msgtype == IMAGE:
                    entry.update(encoding=msg.encoding, width=int(msg.width), height=int(msg.height))
                else:
                    entry["format"] = msg.format
                    data = np.frombuffer(msg.data, dtype=np.uint8)
                    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
                    if array is not None:
                        entry.update(width=int(array.shape[1]), height=int(array.shape[0]))
            topic_stamps.append(stamp_ns(msg.header))
        for topic, values in stamps.items():
            array = np.asarray(values, dtype=np.int64)
            steps = np.diff(array)
            entry = info["topics"][topic]
            entry["stamps_backwards"] = int((steps < 0).sum())
            entry["stamps_repeated"] = int(len(array) - len(np.unique(array)))
            span = (array.max() - array.min()) / 1e9 if len(array) > 1 else 0.0
            entry["rate_hz"] = round((len(array) - 1) / span, 3) if span > 0 else None
    if info["storage"] == "db3":
        info["storage"] = "sqlite3"
    return info


# ---------------------------------------------------------------------------------------- evaluation


@dataclass
class _Pending:
    """A decoded-later image message waiting in the synchroniser."""

    message: BagMessage
    msg: Any
    stamp: int


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "count": int(array.size),
        "mean": float(array.mean()),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(array.max()),
    }


def metric_sources(
    thermal: np.ndarray, thermal_encoding: str, rgb: np.ndarray, rgb_encoding: str, config: FuseConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Source images for sgdfuse_ros.metrics, on the fused grid: (thermal uint8 [H, W], visible BGR uint8 [H, W, 3]).

    Thermal uses the *fixed* configured range (stateless, so metrics do not depend on the order of
    frames) and the configured registration, exactly like the pipeline's preprocessing.
    """
    from dataclasses import replace

    from .imaging import ThermalScaler, register_thermal, rgb_to_float

    visible = rgb_to_float(rgb, rgb_encoding)
    scaled = ThermalScaler(replace(config.thermal, scaling="fixed")).scale(thermal, thermal_encoding)
    registered = register_thermal(scaled, visible.shape[:2], config.registration)
    ir = np.clip(np.rint(registered * 255.0), 0, 255).astype(np.uint8)
    vis = np.clip(np.rint(visible[:, :, ::-1] * 255.0), 0, 255).astype(np.uint8)
    return ir, np.ascontiguousarray(vis)


def _thumb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 grey or RGB image -> RGB uint8 letterboxed into size (w, h)."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    new = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), np.uint8)
    y, x = (height - new[1]) // 2, (width - new[0]) // 2
    canvas[y : y + new[1], x : x + new[0]] = small
    return canvas


class _Samples:
    """Thumbnails of evenly spaced frames for the contact sheet."""

    COLUMNS = ("thermal", "visible", "fused", "mask_ir", "mask_vis")
    CELL = (192, 144)

    def __init__(self, expected: int, wanted: int) -> None:
        wanted = max(0, min(wanted, expected))
        self.indices = set(np.linspace(0, expected - 1, wanted).round().astype(int).tolist()) if wanted else set()
        self.rows: list[tuple[str, list[np.ndarray]]] = []

    def offer(self, index: int, label: str, images: Sequence[np.ndarray]) -> None:
        if index in self.indices:
            self.rows.append((label, [_thumb(image, self.CELL) for image in images]))

    def write(self, path: Path) -> bool:
        if not self.rows:
            return False
        width, height = self.CELL
        header = np.full((24, width * len(self.COLUMNS), 3), 255, np.uint8)
        for col, name in enumerate(self.COLUMNS):
            cv2.putText(header, name, (col * width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        blocks = [header]
        for label, cells in self.rows:
            row = np.concatenate(cells, axis=1)
            cv2.putText(row, label, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
            blocks.append(row)
        sheet = np.concatenate(blocks, axis=0)
        return bool(cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)))


def _plot(report: dict, folder: Path) -> list[str]:
    """metrics.png and latency.png (matplotlib, Agg canvas; no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frames = report["frames"]
    written = []
    if not frames:
        return written
    t0 = frames[0]["stamp_ns"]
    times = np.array([(f["stamp_ns"] - t0) / 1e9 for f in frames])
    names = [n for n in report["metrics"]["mean"]] if report.get("metrics") else []
    if names:
        fig = Figure(figsize=(12, 8), dpi=90)
        FigureCanvasAgg(fig)
        for k, name in enumerate(names):
            ax = fig.add_subplot(3, 3, k + 1)
            values = [f["metrics"].get(name, np.nan) for f in frames]
            ax.plot(times, values, ".-", linewidth=0.8, markersize=3)
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.supxlabel("RGB stamp - first stamp (s)")
        fig.suptitle(f"Fusion metrics per frame: {report['input']['path']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / "metrics.png")
        written.append("metrics.png")
    latency = np.array([f["latency_ms"] for f in frames])
    fig = Figure(figsize=(12, 4), dpi=90)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(times, latency, ".-", linewidth=0.8, markersize=3)
    ax.set_xlabel("RGB stamp - first stamp (s)")
    ax.set_ylabel("latency (ms)")
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.hist(latency, bins=min(40, max(5, len(latency) // 2)))
    stats = report["latency_ms"]
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        ax2.axvline(stats[key], color="k", linestyle=style, label=f"{key} {stats[key]:.1f} ms")
    ax2.set_xlabel("latency (ms)")
    ax2.legend(fontsize=8)
    fig.suptitle("Per-frame latency (pair complete -> outputs ready), offline", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "latency.png")
    written.append("latency.png")
    return written


def _stats_message(
    store: Any,
    header: Any,
    pipeline: FusionPipeline,
    result: FusionResult | None,
    latency_ms: float,
    stamp_difference_ms: float,
    counters: PairAccounting,
    fused: int,
    dropped: dict[str, int],
) -> Any:
    StageTiming = store.types["sgdfuse_ros/msg/StageTiming"]
    timings = [StageTiming(stage=k, milliseconds=float(v)) for k, v in (result.timings_ms.items() if result else ())]
    reasons = sorted(dropped)
    return store.types[FUSION_STATS](
        header=header,
        prior=str(pipeline.prior_name),
        device=str(pipeline.device),
        timings=timings,
        latency_ms=float(latency_ms),
        stamp_difference_ms=float(stamp_difference_ms),
        received_thermal=counters.received[0],
        received_rgb=counters.received[1],
        paired=counters.paired,
        unpaired_thermal=counters.unpaired[0],
        unpaired_rgb=counters.unpaired[1],
        fused=fused,
        dropped=sum(dropped.values()),
        dropped_reasons=reasons,
        dropped_counts=np.array([dropped[r] for r in reasons], dtype=np.uint64),
    )


def evaluate_bag(
    bag_path: str | Path,
    out: str | Path,
    config: FuseConfig,
    *,
    thermal_topic: str = DEFAULT_THERMAL_TOPIC,
    rgb_topic: str = DEFAULT_RGB_TOPIC,
    distro: str = "kilted",
    storage: str | None = None,
    version: int | None = None,
    metrics: bool = True,
    sample_frames: int = 6,
    overwrite: bool = False,
    pipeline: FusionPipeline | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Replay a bag through the node's fusion path offline; write ``out/bag`` and ``out/report/``.

    Messages of the two topics go, in log-time order, through :class:`ApproximateSync` configured
    with ``node.sync_queue_size`` / ``node.sync_slop``; every pair is decoded and fused with
    :meth:`FusionPipeline.fuse` (the node's code path, no ROS runtime), unlike the live node never
    dropping a pair for being busy. The output bag holds /fused/image (rgb8), /fused/mask/ir,
    /fused/mask/vis (mono8), all with the RGB header, and /fused/stats (sgdfuse_ros/msg/FusionStats),
    logged at the log time of the message that completed the pair. The report folder holds
    report.json, report.md, contact_sheet.png, metrics.png and latency.png.

    ``out`` appears only when everything succeeded (BagError otherwise, saying nothing was written).
    Returns the report dict.
    """
    from . import metrics as fusion_metrics
    from .imaging import InvalidImageError

    say = progress or (lambda text: None)
    store = typestore(distro)
    storage, version = resolve_format(distro, storage, version)
    bag_path = Path(bag_path)
    slop, queue_size = config.node.sync_slop, config.node.sync_queue_size
    with open_bag(bag_path) as bag, staged_output(out, overwrite=overwrite) as staging:
        types = image_topics(bag, thermal_topic, rgb_topic)
        counts = {c.topic: int(c.msgcount) for c in bag.reader.connections}
        expected_pairs = min(counts.get(thermal_topic, 0), counts.get(rgb_topic, 0))
        if pipeline is None:
            from .pipeline import FusionPipeline

            pipeline = FusionPipeline.from_config(config)
        say(f"prior: {pipeline.prior_name}; device: {pipeline.device}")
        staging.mkdir()
        report_dir = staging / "report"
        report_dir.mkdir()
        writer = BagWriter(staging / "bag", storage, version, distro)
        sync = ApproximateSync(queue_size, slop)
        counters = PairAccounting(slop, queue_size)
        from .messages import rgb_to_array, thermal_to_array
        samples = _Samples(expected_pairs, sample_frames)
        metrics_s = 0.0
        frames: list[dict] = []
        dropped: dict[str, int] = {}
        fused_count = 0
        first_log = last_log = None
        started = time.perf_counter()
        try:
            for message in iter_raw(bag, (thermal_topic, rgb_topic)):
                first_log = message.log_time if first_log is None else first_log
                last_log = message.log_time
                msg = deserialize(bag, message, store)
                index = 0 if message.topic == thermal_topic else 1
                stamp = stamp_ns(msg.header)
                counters.on_message(index, stamp)
                pair = sync.add(index, stamp, _Pending(message, msg, stamp))
                if pair is None:
                    continue
                received = time.perf_counter()
                thermal_item, rgb_item = pair
                counters.on_pair(thermal_item.stamp, rgb_item.stamp)
                try:
                    thermal, thermal_encoding = thermal_to_array(thermal_item.msg)
                    rgb, rgb_encoding = rgb_to_array(rgb_item.msg)
                    result = pipeline.fuse(thermal, rgb, thermal_encoding, rgb_encoding)
                except InvalidImageError as error:
                    dropped[error.reason] = dropped.get(error.reason, 0) + 1
                    say(f"dropped pair at RGB stamp {rgb_item.stamp}: {error}")
                    continue
                header = rgb_item.msg.header
                log_time = message.log_time
                for key, image, encoding in (
                    ("fused", result.fused, "rgb8"),
                    ("mask_ir", result.mask_ir, "mono8"),
                    ("mask_vis", result.mask_vis, "mono8"),
                ):
                    out_msg = image_message(store, image, encoding, rgb_item.stamp, header.frame_id)
                    writer.write(OUTPUT_TOPICS[key], out_msg, log_time)
                latency_ms = (time.perf_counter() - received) * 1000.0
                fused_count += 1
                difference_ms = (thermal_item.stamp - rgb_item.stamp) / 1e6
                stats = _stats_message(
                    store, header, pipeline, result, latency_ms, difference_ms, counters, fused_count, dropped
                )
                writer.write(OUTPUT_TOPICS["stats"], stats, log_time)
                record: dict[str, Any] = {
                    "index": fused_count - 1,
                    "stamp_ns": rgb_item.stamp,
                    "thermal_stamp_ns": thermal_item.stamp,
                    "stamp_difference_ms": difference_ms,
                    "log_time_ns": log_time,
                    "latency_ms": latency_ms,
                    "timings_ms": dict(result.timings_ms),
                    "width": int(result.fused.shape[1]),
                    "height": int(result.fused.shape[0]),
                }
                metrics_started = time.perf_counter()
                if metrics or (fused_count - 1) in samples.indices:
                    ir_src, vis_src = metric_sources(thermal, thermal_encoding, rgb, rgb_encoding, config)
                    if metrics:
                        values = fusion_metrics.evaluate(
                            np.ascontiguousarray(result.fused[:, :, ::-1]), ir_src, vis_src
                        )
                        record["metrics"] = {k: float(v) for k, v in values.items()}
                    samples.offer(
                        fused_count - 1,
                        f"#{fused_count - 1} t={rgb_item.stamp / 1e9:.3f}",
                        (ir_src, vis_src[:, :, ::-1], result.fused, result.mask_ir, result.mask_vis),
                    )
                metrics_s += time.perf_counter() - metrics_started
                frames.append(record)
                if fused_count % 10 == 0:
                    say(f"{fused_count} frames fused")
            sync.finish()
        finally:
            writer.close()
        wall = time.perf_counter() - started
        report = _build_report(
            bag_path,
            types,
            thermal_topic,
            rgb_topic,
            config,
            pipeline,
            sync,
            counters,
            dropped,
            fused_count,
            frames,
            wall,
            metrics_s,
            first_log,
            last_log,
            metrics,
            storage,
            version,
            distro,
        )
        report["pipeline"]["decoder"] = "sgdfuse_ros.messages"
        if samples.write(report_dir / "contact_sheet.png"):
            report["files"].append("report/contact_sheet.png")
        report["files"] += [f"report/{name}" for name in _plot(report, report_dir)]
        (report_dir / "report.json").write_text(json.dumps(report, indent=2))
        (report_dir / "report.md").write_text(render_report_md(report))
    return report


def _build_report(
    bag_path: Path,
    types: dict,
    thermal_topic: str,
    rgb_topic: str,
    config: FuseConfig,
    pipeline: FusionPipeline,
    sync: ApproximateSync,
    counters: PairAccounting,
    dropped: dict[str, int],
    fused: int,
    frames: list[dict],
    wall: float,
    metrics_s: float,
    first_log: int | None,
    last_log: int | None,
    metrics: bool,
    storage: str,
    version: int,
    distro: str,
) -> dict:
    from .metrics import METRIC_NAMES

    pairing = sync.accounting()
    pending_thermal, pending_rgb = counters.pending()
    pairing.update(
        slop_s=config.node.sync_slop,
        queue_size=config.node.sync_queue_size,
        fused=fused,
        dropped=sum(dropped.values()),
        dropped_by_reason=dict(sorted(dropped.items())),
        node_counters={
            "paired": counters.paired,
            "unpaired_thermal": counters.unpaired[0],
            "unpaired_rgb": counters.unpaired[1],
            "pending_thermal": pending_thermal,
            "pending_rgb": pending_rgb,
        },
    )
    stamp_differences = [abs(f["stamp_difference_ms"]) for f in frames]
    duration = (last_log - first_log) / 1e9 if first_log is not None and last_log is not None else 0.0
    report: dict[str, Any] = {
        "input": {
            "path": str(bag_path),
            "thermal_topic": thermal_topic,
            "thermal_type": types["thermal"],
            "rgb_topic": rgb_topic,
            "rgb_type": types["rgb"],
            "duration_s": duration,
        },
        "pipeline": {
            "prior": pipeline.prior_name,
            "device": str(pipeline.device),
            "stage1_weights": config.stage1.weights or "shipped default",
            "thermal_scaling": config.thermal.scaling,
            "registration": config.registration.mode,
        },
        "output": {
            "bag": "bag",
            "storage": storage,
            "version": version,
            "distro": distro,
            "topics": dict(OUTPUT_TOPICS),
        },
        "pairing": pairing,
        "stamp_difference_abs_ms": _percentiles(stamp_differences),
        "latency_ms": _percentiles([f["latency_ms"] for f in frames]),
        "fusion_total_ms": _percentiles([f["timings_ms"].get("total", 0.0) for f in frames]),
        "throughput": {
            "frames": fused,
            "wall_s": wall,
            "metrics_s": metrics_s,
            "fps": fused / (wall - metrics_s) if wall > metrics_s else None,
            "bag_duration_s": duration,
            "realtime_factor": duration / (wall - metrics_s) if wall > metrics_s and duration > 0 else None,
        },
        "metrics": None,
        "frames": frames,
        "files": ["bag", "report/report.json", "report/report.md"],
    }
    if metrics and frames:
        table = {name: np.array([f["metrics"][name] for f in frames]) for name in METRIC_NAMES}
        report["metrics"] = {
            stat: {name: float(fn(values)) for name, values in table.items()}
            for stat, fn in (
                ("mean", np.mean),
                ("std", np.std),
                ("min", np.min),
                ("median", np.median),
                ("max", np.max),
            )
        }
    return report


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


def render_report_md(report: dict) -> str:
    """Human-readable summary of an evaluation report (report.md)."""
    p = report["pairing"]
    lat, fus, thr = report["latency_ms"], report["fusion_total_ms"], report["throughput"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"# Offline evaluation of `{report['input']['path']}`",
        "",
        f"Thermal `{report['input']['thermal_topic']}` ({report['input']['thermal_type']}), RGB "
        f"`{report['input']['rgb_topic']}` ({report['input']['rgb_type']}); bag span "
        f"{report['input']['duration_s']:.2f} s. Prior `{report['pipeline']['prior']}` on "
        f"`{report['pipeline']['device']}`, Stage I weights: {report['pipeline']['stage1_weights']}; image "
        f"messages decoded by `{report['pipeline'].get('decoder', '?')}`.",
        "",
        "## Pairing (ApproximateTimeSynchronizer rule, docs/bags.md)",
        "",
        f"slop {p['slop_s'] * 1000:.1f} ms, queue size {p['queue_size']}",
        "",
        "| | thermal | RGB |",
        "|---|---|---|",
        f"| messages in | {p['received']['thermal']} | {p['received']['rgb']} |",
        f"| paired | {p['pairs']} | {p['pairs']} |",
        f"| unpaired | {p['unpaired']['thermal']} | {p['unpaired']['rgb']} |",
    ]
    reasons = sorted(set(p["unpaired_by_reason"]["thermal"]) | set(p["unpaired_by_reason"]["rgb"]))
    for reason in reasons:
        lines.append(
            f"| - {reason} | {p['unpaired_by_reason']['thermal'].get(reason, 0)} | "
            f"{p['unpaired_by_reason']['rgb'].get(reason, 0)} |"
        )
    lines += [
        f"| stamps going backwards | {p['stamps_backwards']['thermal']} | {p['stamps_backwards']['rgb']} |",
        f"| stamps repeated | {p['stamps_repeated']['thermal']} | {p['stamps_repeated']['rgb']} |",
        "",
        f"Pairs formed {p['pairs']}, fused {p['fused']}, dropped {p['dropped']}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in p["dropped_by_reason"].items()) + ")" if p["dropped"] else "")
        + f". |thermal - RGB stamp| of fused pairs: p50 {ms(report['stamp_difference_abs_ms']['p50'])} ms, "
        f"max {ms(report['stamp_difference_abs_ms']['max'])} ms.",
        "",
        "## Latency and throughput",
        "",
        "| ms | mean | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
        f"| latency (pair complete -> outputs ready) | {ms(lat['mean'])} | {ms(lat['p50'])} | {ms(lat['p95'])} | "
        f"{ms(lat['p99'])} | {ms(lat['max'])} |",
        f"| pipeline total | {ms(fus['mean'])} | {ms(fus['p50'])} | {ms(fus['p95'])} | {ms(fus['p99'])} | "
        f"{ms(fus['max'])} |",
        "",
        f"{thr['frames']} frames in {thr['wall_s'] - thr['metrics_s']:.2f} s of reading, decoding, fusing and "
        f"writing = "
        + (f"{thr['fps']:.2f} frames/s" if thr["fps"] else "-")
        + (f", {thr['realtime_factor']:.2f}x the bag's real time" if thr["realtime_factor"] else "")
        + f" (metrics took another {thr['metrics_s']:.2f} s).",
        "",
        "Node-rule counters (what the live node's fused/stats would report, PairAccounting): "
        f"paired {p['node_counters']['paired']}, unpaired thermal {p['node_counters']['unpaired_thermal']} / "
        f"RGB {p['node_counters']['unpaired_rgb']}, still pending at the end thermal "
        f"{p['node_counters']['pending_thermal']} / RGB {p['node_counters']['pending_rgb']}.",
        "",
    ]
    if report.get("metrics"):
        names = list(report["metrics"]["mean"])
        lines += [
            "## Fusion metrics (sgdfuse_ros.metrics)",
            "",
            "| | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for stat in ("mean", "std", "min", "median", "max"):
            lines.append(f"| {stat} | " + " | ".join(f"{report['metrics'][stat][n]:.4g}" for n in names) + " |")
        lines.append("")
    images = [f for f in report["files"] if f.endswith(".png")]
    if images:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in images] + [""]
    return "\n".join(lines)
