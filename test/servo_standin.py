"""MoveIt Servo as it executes twists, for tests: it starts paused (Iron+/Jazzy: `~/pause_servo`,
`~/switch_command_type`, moveit_msgs/ServoStatus) or stopped (Humble: `~/start_servo`, `~/stop_servo`,
std_msgs/Int8 status), integrates the last twist at `rate_hz` into an end-effector position until its
command timeout (`incoming_command_timeout`, 0.1 s by default in moveit_servo) runs out, and ignores twists
while paused or while another command type is selected."""

from __future__ import annotations

import threading
import time

import numpy as np
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.node import Node
from std_msgs.msg import Int8
from std_srvs.srv import SetBool, Trigger

JOINT_JOG, TWIST = 0, 1  # moveit_msgs/srv/ServoCommandType


class ServoStandIn(Node):
    def __init__(self, context, humble: bool = False, command_timeout_s: float = 0.1, rate_hz: float = 100.0):
        super().__init__("servo_node", context=context)
        self.humble, self.command_timeout_s = humble, command_timeout_s
        self.running = False  # unpaused (Iron+) / started (Humble)
        self.command_type = None if not humble else TWIST  # Humble takes every type at once
        self.events: list[str] = []
        self.position = np.array([0.5, 0.0, 0.0])
        self.velocity_log: list[tuple[float, np.ndarray]] = []  # (monotonic, m/s) of each integration step
        self.ignored = 0  # twists that came while paused / stopped / another command type
        self._last: tuple[float, np.ndarray] | None = None
        self._lock = threading.Lock()
        self.create_subscription(TwistStamped, "~/delta_twist_cmds", self._on_twist, 100)
        self.joint_jogs: list = []  # control_msgs/JointJog taken (joint-space Servo), when control_msgs imports
        try:
            from control_msgs.msg import JointJog
            self.create_subscription(JointJog, "~/delta_joint_cmds", self._on_joint_jog, 100)
        except ImportError:
            pass
        self.pose_pub = self.create_publisher(PoseStamped, "~/ee_pose", 10)
        if humble:
            self.status_pub = self.create_publisher(Int8, "~/status", 10)
            self.create_service(Trigger, "~/start_servo", lambda req, res: self._switch(res, True, "started"))
            self.create_service(Trigger, "~/stop_servo", lambda req, res: self._switch(res, False, "stopped"))
        else:
            from moveit_msgs.msg import ServoStatus
            from moveit_msgs.srv import ServoCommandType

            self.status_type = ServoStatus
            self.status_pub = self.create_publisher(ServoStatus, "~/status", 10)
            self.create_service(SetBool, "~/pause_servo",
                                lambda req, res: self._switch(res, not req.data, "paused" if req.data else "unpaused"))
            self.create_service(ServoCommandType, "~/switch_command_type", self._on_switch_type)
        self.period = 1.0 / rate_hz
        self.create_timer(self.period, self._integrate)

    def _switch(self, response, running: bool, event: str):
        with self._lock:
            self.running = running
            self._last = None
        self.events.append(event)
        response.success = True
        return response

    def _on_switch_type(self, request, response):
        self.command_type = int(request.command_type)
        self.events.append(f"command type {self.command_type}")
        response.success = True
        return response

    def _on_twist(self, msg: TwistStamped) -> None:
        with self._lock:
            if not self.running or self.command_type != TWIST:
                self.ignored += 1
                return
            t = msg.twist
            self._last = (time.monotonic(), np.array([t.linear.x, t.linear.y, t.linear.z]))

    def _on_joint_jog(self, msg) -> None:
        with self._lock:
            if not self.running or self.command_type not in (JOINT_JOG, None if not self.humble else TWIST):
                self.ignored += 1
                return
        self.joint_jogs.append(msg)

    def _integrate(self) -> None:
        now = time.monotonic()
        with self._lock:
            fresh = self._last is not None and now - self._last[0] <= self.command_timeout_s
            velocity = self._last[1] if fresh else np.zeros(3)
            self.position = self.position + velocity * self.period
        self.velocity_log.append((now, velocity))
        pose = PoseStamped()
        pose.header.frame_id = "base_link"
        pose.header.stamp = self.get_clock().now().to_msg()
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in self.position)
        pose.pose.orientation.w = 1.0
        self.pose_pub.publish(pose)

    def publish_status(self, code: int, message: str = "") -> None:
        self.status_pub.publish(Int8(data=code) if self.humble else self.status_type(code=code, message=message))

    def moving_since(self, since: float) -> bool:
        return any(np.any(v != 0) for t, v in self.velocity_log if t >= since)
