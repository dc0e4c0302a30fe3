"""Asynchronous inference and the action stream, with real rclpy nodes (own domain per test).

Inputs are stamped with the node's clock (wall time here), as a robot's drivers stamp them.
"""

import time

import numpy as np
import pytest
from ros_helpers import stamp, start_policy_node

from geometry_msgs.msg import WrenchStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from vla_policy_ros.image_conversion import rgb_to_image_msg  # noqa: E402
from vla_policy_ros.msg import ActionChunk  # noqa: E402

VIEWS = ("front", "wrist")


class Robot:
    """Publishes cameras at camera_hz and wrench + joint state at sensor_hz, stamped with wall time."""

    def __init__(self, ros, camera_hz: float, sensor_hz: float) -> None:
        from rclpy.node import Node

        self.node = ros.add(Node("fake_robot", context=ros.context))
        self.pubs = {v: self.node.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in VIEWS}
        self.sensor = self.node.create_publisher(WrenchStamped, "sensor", 50)
        self.state = self.node.create_publisher(JointState, "joint_states", 50)
        self.rng = np.random.default_rng(0)
        self.frame_stamps: list[float] = []
        self.cameras_on = True
        self.node.create_timer(1.0 / camera_hz, self._frame)
        self.node.create_timer(1.0 / sensor_hz, self._sensor)

    def _frame(self) -> None:
        if not self.cameras_on:
            return
        t = time.time()
        for view in VIEWS:
            self.pubs[view].publish(rgb_to_image_msg(self.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), stamp(t)))
        js = JointState(name=[f"j{i}" for i in range(8)], position=self.rng.normal(size=8).tolist())
        js.header.stamp = stamp(t)  # a state with each frame too: the synchroniser needs one
        self.state.publish(js)
        self.frame_stamps.append(t)

    def _sensor(self) -> None:
        t = time.time()
        w = WrenchStamped()
        w.header.stamp = stamp(t)
        w.wrench.force.z = float(self.rng.normal())
        self.sensor.publish(w)
        js = JointState(name=[f"j{i}" for i in range(8)], position=self.rng.normal(size=8).tolist())
        js.header.stamp = stamp(t)
        self.state.publish(js)


def _start(ros, checkpoints, topic: str = "action_chunk", **overrides):
    params = {"regression_checkpoint": checkpoints["regression"], "diffusion_checkpoint": checkpoints["diffusion"],
              "instruction": "insert the needle", "slop_s": 0.02, "sensor_topic": "sensor", "command_interface": "none",
              **overrides}
    node = start_policy_node(ros, params)
    received = []
    listener = ros.add(__import__("rclpy.node", fromlist=["Node"]).Node("listener", context=ros.context))
    listener.create_subscription(ActionChunk, f"/vla_policy/{topic}", received.append, 100)
    return node, received


def _arm(ros) -> None:
    """~/enable, the one way to arm (the node starts disarmed whatever its parameters say)."""
    from std_srvs.srv import SetBool

    client = ros.nodes[-1].create_client(SetBool, "/vla_policy/enable")
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(SetBool.Request(data=True))
    ros.wait_for(future.done, what="~/enable")
    assert future.result().success, future.result().message


def _stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def test_async_expert_runs_faster_than_the_backbone_on_fresher_sensor_data(ros, checkpoints):
    node, chunks = _start(ros, checkpoints, async_inference=True, rate_hz=40.0)
    robot = Robot(ros, camera_hz=4.0, sensor_hz=100.0)
    ros.wait_for(lambda: node.stats["backbone_runs"] >= 6, timeout=30, what="6 backbone runs")
    runs, n = node.stats["backbone_runs"], len(chunks)
    assert runs <= len(robot.frame_stamps)  # at most once per frame
    assert n >= 2 * runs, f"{n} chunks for {runs} backbone runs"  # the benchmark measures the ratio properly
    stamps = [_stamp_s(c) for c in chunks]
    assert all(b > a for a, b in zip(stamps, stamps[1:])), "chunk stamps must increase"
    # chunks are stamped with the freshest input (the sensor): most are newer than the newest frame then
    newer = sum(1 for s in stamps if s > max(f for f in robot.frame_stamps if f <= s + 1e-6) + 1e-4)
    assert newer >= len(stamps) // 2
    assert node.sensor_to_action and max(node.sensor_to_action) < 1.0


def test_async_stops_on_stale_features(ros, checkpoints):
    """No chunk is computed from features older than max_feature_age_s: once the cameras stop, the
    sensor goes on but chunks stop within that age of the last frame."""
    node, chunks = _start(ros, checkpoints, async_inference=True, rate_hz=40.0, max_feature_age_s=0.3,
                          input_timeout_s=0.0)
    robot = Robot(ros, camera_hz=5.0, sensor_hz=100.0)
    ros.wait_for(lambda: len(chunks) >= 5, timeout=30, what="chunks")
    robot.cameras_on = False  # the sensor goes on; the features age
    ros.wait_for(lambda: node.stats["stale_features"] > 0, timeout=10, what="stale features")
    time.sleep(1.0)
    frames = sorted(robot.frame_stamps)
    for chunk in chunks:  # every chunk's inputs are at most max_feature_age_s newer than its frame
        s = _stamp_s(chunk)
        newest_frame = max(f for f in frames if f <= s + 1e-6)
        assert s - newest_frame <= 0.3 + 1e-3
    assert _stamp_s(chunks[-1]) <= frames[-1] + 0.3 + 1e-3


@pytest.mark.parametrize("mode", ["switch", "ensemble"])
def test_action_stream_at_the_control_period(ros, checkpoints, mode):
    node, actions = _start(ros, checkpoints, topic="action", rate_hz=5.0, stream_actions=True,
                           chunk_execution=mode, execute_steps=0 if mode == "ensemble" else 4)
    _arm(ros)
    Robot(ros, camera_hz=10.0, sensor_hz=50.0)
    ros.wait_for(lambda: len(actions) >= 15, timeout=30, what="15 streamed actions")
    stamps = np.array([_stamp_s(a) for a in actions])
    assert all(a.horizon == 1 and len(a.actions) == a.action_dim == 4 for a in actions)
    periods = np.diff(stamps)
    assert np.all(periods > 0)
    assert abs(np.median(periods) - 0.1) < 0.03  # the checkpoint's dt
    counts = node.action_executor.counts
    assert counts["chunks"] >= 2 and counts["out_of_order"] == 0


def test_action_stream_is_silent_in_dry_run(ros, checkpoints):
    node, actions = _start(ros, checkpoints, topic="action", rate_hz=5.0, stream_actions=True, dry_run=True)
    Robot(ros, camera_hz=10.0, sensor_hz=50.0)
    ros.wait_for(lambda: node.action_executor.counts["ticks"] >= 10 and node.action_executor.counts["chunks"] >= 1,
                 timeout=30, what="ticks")
    assert actions == []
