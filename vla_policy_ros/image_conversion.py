"""sensor_msgs Image / CompressedImage -> (H, W, 3) uint8 RGB numpy, with or without cv_bridge.

One function, `image_to_rgb`, whichever path is used: cv_bridge when it imports (real ROS 2
installs), else the project's own numpy/OpenCV conversion (the PyPI `cv-bridge` is a broken ROS 1
port and is not used). Covers rgb8, bgr8, rgba8, bgra8, mono8, mono16/16UC1 (scaled to 8 bit),
row padding (`step`), and compressed jpeg/png.
"""

from __future__ import annotations

import cv2
import numpy as np

try:  # pragma: no cover - only on a real ROS 2 install
    from cv_bridge import CvBridge

    _BRIDGE = CvBridge()
except Exception:  # noqa: BLE001 - any import failure means: use our own conversion
    _BRIDGE = None

# encoding -> (channels, numpy dtype, OpenCV conversion to RGB or None)
ENCODINGS = {
    "rgb8": (3, np.uint8, None), "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB), "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB), "8UC1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2RGB), "16UC1": (1, np.uint16, cv2.COLOR_GRAY2RGB),
}


class ImageConversionError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


def image_to_rgb(msg) -> np.ndarray:
    """Image or CompressedImage message -> (H, W, 3) uint8 RGB array."""
    if hasattr(msg, "format"):  # CompressedImage
        return _decode_compressed(msg)
    if _BRIDGE is not None and msg.encoding in ENCODINGS:  # pragma: no cover
        return _to_rgb8(_BRIDGE.imgmsg_to_cv2(msg), msg.encoding)
    return _raw_to_rgb(msg)


def _raw_to_rgb(msg) -> np.ndarray:
    if msg.encoding not in ENCODINGS:
        raise ImageConversionError(f"encoding {msg.encoding!r} is not supported; expected one of {sorted(ENCODINGS)}")
    channels, dtype, _ = ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if height == 0 or width == 0:
        raise ImageConversionError(f"empty image ({width}x{height})")
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than one row ({width} px x {channels} ch = {row_bytes} B)")
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray, memoryview)) else msg.data
    if len(data) != step * height:
        raise ImageConversionError(f"data has {len(data)} bytes; expected step x height = {step} x {height}")
    rows = np.frombuffer(data, np.uint8).reshape(height, step)[:, :row_bytes]  # drop row padding
    array = rows.copy().view(dtype if not msg.is_bigendian else np.dtype(dtype).newbyteorder(">"))
    return _to_rgb8(array.reshape(height, width, channels) if channels > 1 else array.reshape(height, width),
                    msg.encoding)


def _to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    _, dtype, conversion = ENCODINGS[encoding]
    if dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)  # full 16-bit range -> 8 bit
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return np.ascontiguousarray(cv2.cvtColor(array, conversion) if conversion is not None else array)


def _decode_compressed(msg) -> np.ndarray:
    fmt = msg.format.lower()
    if not any(kind in fmt for kind in ("jpeg", "jpg", "png")):
        raise ImageConversionError(f"compressed format {msg.format!r} is not supported; expected jpeg or png")
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError(f"cannot decode the {msg.format!r} data ({data.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image_msg(rgb: np.ndarray, stamp, frame_id: str = "", encoding: str = "rgb8"):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image (fast path: bytes, not element-wise assignment)."""
    from sensor_msgs.msg import Image

    array = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if encoding == "bgr8" else rgb
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=rgb.shape[1] * 3)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg
