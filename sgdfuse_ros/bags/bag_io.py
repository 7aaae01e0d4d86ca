"""Reading and writing rosbag2 bags with the pure-Python ``rosbags`` library (no rclpy).

Type stores (with sgdfuse_ros/msg/* registered), Image / CompressedImage builders and decoding,
:func:`open_bag` / :func:`image_topics` / :func:`iter_raw` / :func:`deserialize` (raising
:class:`BagError` naming the file and topic for every unusable input), staged outputs that appear only
when complete, :class:`BagWriter` / :func:`write_bag`, and :func:`bag_info` for ``sgdfuse bag info``.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..sync import stamp_ns

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
    from ..resources import find_resource

    try:
        return find_resource("msg/FusionStats.msg").parent
    except FileNotFoundError:
        return Path(__file__).resolve().parent.parent / "message_definitions"


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
    from .. import messages

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
