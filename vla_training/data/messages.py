"""Message payloads -> numpy, one function per message kind, for the live node and the importers alike.

Duck-typed: rclpy messages (policy_node) and rosbags messages (`vla data import-bag`, `vla bag-eval`)
both work, so a recording imports exactly as the node would have seen it live.

- `image_to_rgb`: sensor_msgs Image / CompressedImage -> (H, W, 3) uint8 RGB: cv_bridge when it
  imports (real ROS 2 installs), else the project's own numpy/OpenCV conversion (the PyPI
  `cv-bridge` is a broken ROS 1 port and is not used). Covers rgb8, bgr8, rgba8, bgra8, mono8,
  mono16/16UC1 (scaled to 8 bit), row padding (`step`), and compressed jpeg/png.
- `decode_sensor`: WrenchStamped, vla_policy_ros/SensorPacket or Float32MultiArray -> stamped samples.
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
    return decode_image_bytes(msg.data, msg.format)


def decode_image_bytes(data, what: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> (H, W, 3) uint8 RGB (a CompressedImage's data, or a frame stored as recorded)."""
    data = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else np.asarray(data, np.uint8)
    if data.size == 0:
        raise ImageConversionError("compressed image has no data")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageConversionError(f"cannot decode the {what!r} data ({data.size} bytes)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class InputError(ValueError):
    """A sensor message that cannot be decoded; the text says why."""


def decode_sensor(msg, channels: int, receipt_time: float) -> tuple[np.ndarray, np.ndarray]:
    """(stamps (N,), samples (N, C)) of a WrenchStamped, SensorPacket or Float32MultiArray (duck-typed, so
    rclpy and rosbags messages both work); raises InputError naming what is wrong."""
    if hasattr(msg, "wrench"):
        f, t = msg.wrench.force, msg.wrench.torque
        samples = np.array([[f.x, f.y, f.z, t.x, t.y, t.z]], np.float32)
        stamps = np.array([stamp_seconds(msg.header.stamp)])
    elif hasattr(msg, "num_samples"):
        samples = np.asarray(msg.data, np.float32)
        if msg.channels == 0 or samples.size != msg.num_samples * msg.channels:
            raise InputError(f"data has {samples.size} values; expected num_samples x channels = "
                             f"{msg.num_samples} x {msg.channels}")
        samples = samples.reshape(msg.num_samples, msg.channels)
        if len(msg.sample_stamps):
            stamps = np.array([stamp_seconds(s) for s in msg.sample_stamps])
        elif msg.sample_rate > 0:
            stamps = stamp_seconds(msg.header.stamp) + np.arange(msg.num_samples) / msg.sample_rate
        else:
            raise InputError("neither sample_stamps nor a sample_rate > 0")
    else:  # Float32MultiArray: no header, stamped on receipt
        samples = np.asarray(msg.data, np.float32)
        if samples.size == 0 or samples.size % channels:
            raise InputError(f"{samples.size} values is not a whole number of {channels}-channel samples")
        samples = samples.reshape(-1, channels)
        stamps = np.full(len(samples), receipt_time)
    if samples.shape[1] != channels:
        raise InputError(f"{samples.shape[1]} channels; the policy expects {channels}")
    if len(stamps) != len(samples):
        raise InputError(f"{len(stamps)} stamps for {len(samples)} samples")
    if not np.isfinite(samples).all() or not np.isfinite(stamps).all():
        raise InputError("NaN or inf values")
    if len(stamps) > 1 and np.any(np.diff(stamps) < 0):
        raise InputError("sample stamps go backwards")
    return stamps, samples
