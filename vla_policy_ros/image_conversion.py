"""Images for ROS messages: `rgb_to_image_msg` builds a sensor_msgs/Image; decoding lives in
vla_training.data.messages (`image_to_rgb`), shared with the importers."""

from __future__ import annotations

import cv2
import numpy as np

from vla_training.data.messages import ENCODINGS, ImageConversionError, image_to_rgb  # noqa: F401 - re-exported


def rgb_to_image_msg(rgb: np.ndarray, stamp, frame_id: str = "", encoding: str = "rgb8"):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image (fast path: bytes, not element-wise assignment)."""
    from sensor_msgs.msg import Image

    array = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if encoding == "bgr8" else rgb
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=rgb.shape[1] * 3)
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.data = np.ascontiguousarray(array).tobytes()
    return msg
