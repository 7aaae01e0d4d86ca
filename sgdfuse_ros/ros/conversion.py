"""sensor_msgs Image / CompressedImage <-> NumPy for the node: the rclpy side of :mod:`sgdfuse_ros.messages`.

Decoding (validation, strided views honouring ``step`` and ``is_bigendian``, compressed images with
16-bit PNG kept at 16 bits, the InvalidImageError reason keys) lives in the rclpy-free
:mod:`sgdfuse_ros.messages`, shared with the offline bag tools, and is re-exported here. This module
adds what needs the ROS message packages: building outgoing Image messages and copying headers.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sgdfuse_ros.messages import (
    _HOST_BIG_ENDIAN,
    ENCODINGS,
    compressed_to_array,
    image_to_array,
    rgb_to_array,
    thermal_to_array,
)

__all__ = [
    "ENCODINGS",
    "array_to_image",
    "compressed_to_array",
    "copy_header",
    "image_to_array",
    "rgb_to_array",
    "thermal_to_array",
]


def copy_header(header: Header) -> Header:
    """A new Header with the same stamp and frame_id (outputs never alias the input message)."""
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id)


def array_to_image(array: np.ndarray, encoding: str, header: Header) -> Image:
    """NumPy image -> sensor_msgs/Image with ``header`` (copied, not referenced) and no row padding.

    Args:
        array: [H, W] for 1-channel encodings or [H, W, C]; dtype must match ``encoding``
            (uint8 for mono8/rgb8/..., uint16 for mono16/16UC1, float32 for 32FC1).
        encoding: one of :data:`ENCODINGS`.
        header: stamp and frame_id to publish with (the node passes the RGB input's header).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"cannot publish encoding '{encoding}' (supported: {', '.join(ENCODINGS)})")
    dtype, channels = ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim == 3 and channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        wanted = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
        raise ValueError(f"'{encoding}' needs shape {wanted}, got {array.shape}")
    if array.dtype.newbyteorder("=") != dtype:
        raise ValueError(f"'{encoding}' needs dtype {dtype}, got {array.dtype}")
    array = np.ascontiguousarray(array, dtype=dtype.newbyteorder("="))
    msg = Image()
    msg.header = copy_header(header)
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(_HOST_BIG_ENDIAN and dtype.itemsize > 1)
    msg.step = int(msg.width * channels * dtype.itemsize)
    msg.data = array.tobytes()
    return msg
