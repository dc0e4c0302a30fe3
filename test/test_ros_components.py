"""The node's building blocks without a running node: image conversion, synchroniser, sensor buffer,
command trajectories."""

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from vla_policy_ros.command_interfaces import ActionLayout, PoseTargetCommand, RobotState
from vla_policy_ros.quaternions import quat_from_euler
from vla_policy_ros.safety import OutputLimits
from vla_policy_ros.image_conversion import ImageConversionError, image_to_rgb, rgb_to_image_msg
from vla_models.runtime.observation import WAITING_FOR_SENSOR, assemble
from vla_models.runtime.sensor_buffer import SensorRingBuffer
from vla_models.runtime.synchronizer import ApproximateSynchronizer

RGB = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _raw(array: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = array.shape[:2]
    row = array.reshape(h, -1).view(np.uint8)
    padded = np.concatenate([row, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize("pad", [0, 3])
def test_raw_encodings(pad):
    assert np.array_equal(image_to_rgb(_raw(RGB, "rgb8", pad)), RGB)
    assert np.array_equal(image_to_rgb(_raw(RGB[:, :, ::-1].copy(), "bgr8", pad)), RGB)
    gray = RGB[:, :, 0].copy()
    assert np.array_equal(image_to_rgb(_raw(gray, "mono8", pad)), np.repeat(gray[:, :, None], 3, axis=2))
    deep = gray.astype(np.uint16) * 257
    assert np.array_equal(image_to_rgb(_raw(deep, "mono16", pad * 2))[:, :, 1], gray)


def test_message_builder_round_trip():
    assert np.array_equal(image_to_rgb(rgb_to_image_msg(RGB, None or Image().header.stamp)), RGB)


@pytest.mark.parametrize("fmt, ext", [("png", ".png"), ("jpeg", ".jpg")])
def test_compressed(fmt, ext):
    ok, data = cv2.imencode(ext, RGB[:, :, ::-1])
    out = image_to_rgb(CompressedImage(format=fmt, data=data.tobytes()))
    assert out.shape == RGB.shape
    if fmt == "png":
        assert np.array_equal(out, RGB)


@pytest.mark.parametrize("msg, words", [
    (Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), ["yuv422", "expected one of"]),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)), ["11 bytes", "6 x 2"]),
    (Image(height=2, width=2, encoding="rgb8", step=5, data=bytes(10)), ["step 5"]),
    (Image(height=0, width=2, encoding="rgb8", step=6, data=b""), ["empty"]),
    (CompressedImage(format="jpeg", data=b"not a jpeg"), ["cannot decode"]),
    (CompressedImage(format="tiff", data=b"x"), ["tiff"]),
])
def test_bad_images_are_rejected_with_a_reason(msg, words):
    with pytest.raises(ImageConversionError) as info:
        image_to_rgb(msg)
    for word in words:
        assert word in str(info.value)


def test_synchroniser_picks_the_newest_set_within_slop():
    sync = ApproximateSynchronizer(["a", "b", "state"], slop=0.025)
    assert sync.latest() is None
    for t in (1.0, 1.1, 1.2):
        sync.add("a", t, f"a{t}")
    sync.add("b", 1.005, "b1.0")
    sync.add("b", 1.19, "b1.2")
    assert sync.latest() is None  # no state yet
    sync.add("state", 1.1, "s1.1")
    sync.add("state", 1.21, "s1.2")
    stamp, chosen = sync.latest()
    assert stamp == 1.21 and {k: v[1] for k, v in chosen.items()} == {"a": "a1.2", "b": "b1.2", "state": "s1.2"}
    sync.add("a", 1.5, "a1.5")  # newer but unmatched: the older complete set still wins
    assert sync.latest()[1]["a"][1] == "a1.2"
    sync.add("state", 1.4, "late")  # out of order arrival stays sorted
    assert [s for s, _ in sync._queues["state"]] == [1.1, 1.21, 1.4]


def test_synchroniser_rejects_sets_wider_than_slop():
    sync = ApproximateSynchronizer(["a", "b"], slop=0.01)
    sync.add("a", 1.0, 1)
    sync.add("b", 1.05, 2)
    assert sync.latest() is None


def test_sensor_buffer_windows():
    buf = SensorRingBuffer(capacity=10, channels=2)
    assert buf.newest_stamp() is None and buf.window(4).shape == (0, 2)
    buf.extend(np.arange(15) * 0.1, np.arange(30).reshape(15, 2))
    assert buf.newest_stamp() == pytest.approx(1.4)
    assert np.array_equal(buf.window(3), [[24, 25], [26, 27], [28, 29]])
    assert np.array_equal(buf.window(2, until=1.0), [[18, 19], [20, 21]])
    assert buf.window(100).shape == (10, 2)  # only what the ring holds


def test_pose_targets_accumulate_from_the_pose_at_the_observation():
    chunk = np.array([[1.0, 0, 0, 0, 0, 90.0], [1.0, 2.0, 0, 0, 0, 0]])
    layout = ActionLayout.from_names(["dx", "dy", "dz", "da", "db", "dr"])
    command = PoseTargetCommand(layout, OutputLimits(max_delta=np.full(6, np.inf)), 0.1, 0.001, np.pi / 180, "")
    robot = RobotState(pose=(np.array([0.5, 0, 0.2]), np.array([0, 0, 0, 1.0]), "base_link"))
    planned = command.plan(chunk, robot, 1.0)
    assert planned.outcome == "ok" and planned.frame == "base_link"
    assert np.allclose(planned.rows[:, :3], [[0.501, 0, 0.2], [0.502, 0.002, 0.2]])
    assert np.allclose(planned.rows[0, 3:], quat_from_euler(0, 0, np.pi / 2)) and np.allclose(planned.rows[1, 3:],
                                                                                              planned.rows[0, 3:])


def test_observation_waits_for_the_sensor_window():
    """A policy with a sensor never acts without it: no sample yet, none as old as the set, or too old."""
    sync = ApproximateSynchronizer(["front", "state"], slop=0.01)
    sync.add("front", 2.0, np.zeros((4, 4, 3), np.uint8))
    sync.add("state", 2.0, np.zeros(3, np.float32))
    sensor = SensorRingBuffer(capacity=16, channels=2)

    def assemble_now():
        return assemble(sync, sensor, ["front"], 4, "insert", max_sensor_lag_s=0.1)

    assert assemble_now() == WAITING_FOR_SENSOR  # nothing has arrived yet
    sensor.extend(np.array([2.05]), np.ones((1, 2)))
    assert assemble_now() == WAITING_FOR_SENSOR  # only samples newer than the set
    sync.add("front", 2.5, np.zeros((4, 4, 3), np.uint8))
    sync.add("state", 2.5, np.zeros(3, np.float32))
    assert assemble_now() == WAITING_FOR_SENSOR  # the newest sample lags the newest set by 0.45 s (> 0.1)
    sensor.extend(np.array([2.45, 2.5]), np.full((2, 2), 3.0))
    stamp, obs = assemble_now()
    assert stamp == 2.5 and obs["sensor_mask"].tolist() == [True]
    assert obs["sensor"].shape == (1, 3, 2) and obs["sensor"][0, :, 0].tolist() == [1.0, 3.0, 3.0]
    assert obs["state"].shape == (1, 3) and obs["images"]["front"].shape == (1, 4, 4, 3)
