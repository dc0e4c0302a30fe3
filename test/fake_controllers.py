"""Stand-ins for the controllers a robot runs, applying their acceptance rules (control_msgs, MoveIt
and ros2_controllers are not installable here): the node is tested against what they would refuse."""

from __future__ import annotations

import time

import numpy as np
from geometry_msgs.msg import TwistStamped
from rclpy.node import Node
from trajectory_msgs.msg import JointTrajectory


def _seconds(t) -> float:
    return t.sec + t.nanosec * 1e-9


class FakeJointTrajectoryController(Node):
    """ros2_controllers' JointTrajectoryController topic interface: every joint it controls must be in the
    message (no partial goals) and no unknown joint; positions per point = joints; time_from_start strictly
    increasing; a trajectory with a non-zero stamp must not end in the past."""

    def __init__(self, context, joints: list[str], topic: str = "/joint_trajectory_controller/joint_trajectory"):
        super().__init__("fake_jtc", context=context)
        self.joints = list(joints)
        self.accepted: list[JointTrajectory] = []
        self.received_at: list[float] = []  # time.monotonic() of each accepted message
        self.rejected: list[str] = []
        self.create_subscription(JointTrajectory, topic, self._on_trajectory, 100)

    def check(self, msg: JointTrajectory) -> str:
        names = list(msg.joint_names)
        unknown = [n for n in names if n not in self.joints]
        if unknown:
            return f"unknown joints {unknown}"
        if sorted(names) != sorted(self.joints) or len(set(names)) != len(names):
            return f"joints {names} are not exactly the controller's {self.joints}"
        if not msg.points:
            return "no points"
        times = [_seconds(p.time_from_start) for p in msg.points]
        if any(b <= a for a, b in zip(times, times[1:])):
            return "time_from_start not strictly increasing"
        if any(len(p.positions) != len(names) or (p.velocities and len(p.velocities) != len(names)) for p in msg.points):
            return "a point's size differs from the joints"
        start = _seconds(msg.header.stamp)
        now = self.get_clock().now().nanoseconds * 1e-9
        if start > 0 and start + times[-1] < now:
            return "the trajectory ends in the past"
        return ""

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        reason = self.check(msg)
        if reason:
            return self.rejected.append(reason)
        self.accepted.append(msg)
        self.received_at.append(time.monotonic())

    def positions(self, msg: JointTrajectory) -> np.ndarray:
        """(points, joints) in the controller's joint order."""
        order = [list(msg.joint_names).index(n) for n in self.joints]
        return np.array([[p.positions[i] for i in order] for p in msg.points])


class FakeServo(Node):
    """MoveIt Servo's twist input: a TwistStamped in the planning frame or the end-effector frame."""

    def __init__(self, context, frames=("base_link", "tool0"), topic: str = "/servo_node/delta_twist_cmds"):
        super().__init__("fake_servo", context=context)
        self.frames = set(frames)
        self.accepted: list[TwistStamped] = []
        self.received_at: list[float] = []  # time.monotonic() of each accepted message
        self.rejected: list[str] = []
        self.create_subscription(TwistStamped, topic, self._on_twist, 100)

    def _on_twist(self, msg: TwistStamped) -> None:
        t = msg.twist
        values = [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z]
        if msg.header.frame_id not in self.frames:
            self.rejected.append(f"frame {msg.header.frame_id!r} is not one of {sorted(self.frames)}")
        elif not np.isfinite(values).all():
            self.rejected.append("non-finite twist")
        else:
            self.accepted.append(msg)
            self.received_at.append(time.monotonic())

    @staticmethod
    def is_zero(msg: TwistStamped) -> bool:
        t = msg.twist
        return all(v == 0.0 for v in (t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z))
