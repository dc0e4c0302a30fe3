"""Wiring of the policy node at configure: the inputs the checkpoints expect, the topics that carry them,
the publishers, timers and the FollowJointTrajectory client, the output and joint limits; and their release.

Also the inputs the node handles itself: the instruction topic and jumps of its clock.

A mixin of PolicyNode: it fills the node's _entities (destroyed by `_release`), chunk_pub, action_pub,
command_pub, gripper_pub, trajectory_action and joint_bounds from params, policies, layout and command.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, String

from . import params as P
from .inputs import InputSpec
from .msg import ActionChunk, SensorPacket
from .robot_limits import JointBounds, RobotDescriptionError, joint_limits_from_urdf
from .safety import OutputLimits
from .ee_pose import TfPose
from .servo_setup import ServoSetup
from .trajectory_action import TrajectoryAction


# Joint states, the sensor and the ee pose arrive at up to ~1 kHz, best effort (as sensor data; a reliable publisher
# such as joint_state_broadcaster matches it). The sensor keeps 100 ms of messages (every sample belongs in its
# window). Joint states and the pose keep 10 (10 ms at 1 kHz: only the newest of each publisher matters): with 100
# queued, an executor that falls behind a 500 Hz stream works through all of them and starves the command tick
# (bench/jtc_timing.py: 10 inferences in 15 s instead of 10 a second).
SENSOR_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
HIGH_RATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)


class WiringMixin:
    def _input_spec(self) -> InputSpec:
        specs = {kind: InputSpec(tuple(pol.config.views), pol.config.sensor.channels, pol.config.sensor.window,
                                 pol.config.state.dim, tuple(pol.config.state.columns))
                 for kind, pol in self.policies.items()}
        first = next(iter(specs.values()))
        if any(spec != first for spec in specs.values()):
            raise ValueError(f"the checkpoints expect different inputs ({specs}); both policy types must share "
                             "views, sensor channels, sensor window and state size to switch live")
        topics = self.params.image_topics
        if topics and len(topics) != len(first.views):
            raise ValueError(f"parameter image_topics: expected {len(first.views)} topics for views "
                             f"{list(first.views)}, got {list(topics)}")
        return first

    def _output_limits(self, action_dim: int) -> OutputLimits:
        p = self.params
        max_delta = np.asarray(p.max_delta, float) if p.max_delta else np.full(action_dim, np.inf)
        if max_delta.size not in (1, action_dim):
            raise ValueError(f"parameter max_delta: expected [], 1 or {action_dim} values, got {list(p.max_delta)}")
        return OutputLimits(max_delta=max_delta, workspace_min=p.workspace_min or np.full(3, -np.inf),
                            workspace_max=p.workspace_max or np.full(3, np.inf),
                            max_speed=p.max_speed if p.max_speed > 0 else np.inf,
                            max_angular_speed=p.max_angular_speed if p.max_angular_speed > 0 else np.inf,
                            max_chunk_rotation=p.max_chunk_rotation if p.max_chunk_rotation > 0 else np.inf,
                            mode=p.limit_mode)

    def _set_robot_description(self, urdf: str, from_topic: bool = False) -> None:
        """Joint bounds of the commanded joints from a URDF (parameter at configure, or the latched topic)."""
        if self.layout is None or not self.layout.joints:
            return
        try:
            limits = joint_limits_from_urdf(urdf)
            bounds = JointBounds.for_joints([n for _, n in self.layout.joints], limits,
                                            self.params.max_chunk_motion or np.inf, self.params.limit_mode)
        except RobotDescriptionError as exc:
            if not from_topic:
                raise
            self.get_logger().error(f"/robot_description: {exc}")
            return
        self.joint_bounds = bounds
        if self.command is not None and hasattr(self.command, "bounds"):
            self.command.bounds = bounds

    def _unknown_joints(self) -> str:
        if not (self.params.command_interface in P.JOINT_INTERFACES and self.inputs.joint_names):
            return ""  # checked again at every command
        missing = [n for n in self.command.names if n not in self.inputs.joint_names]
        return f"joints {missing} are not in the JointState (it has {self.inputs.joint_names})" if missing else ""

    def _create_entities(self, spec: InputSpec) -> None:
        p, add = self.params, self._entities.append
        topics = p.image_topics or tuple(f"camera/{v}/image_raw" for v in spec.views)
        for view, topic in zip(spec.views, topics):
            kind = CompressedImage if topic.endswith("/compressed") else Image
            add(self.create_subscription(kind, topic, lambda m, v=view: self.inputs.on_image(v, m),
                                         qos_profile_sensor_data))
        if spec.sensor_channels:
            kind = {"wrench": WrenchStamped, "packet": SensorPacket, "array": Float32MultiArray}[p.sensor_type]
            add(self.create_subscription(kind, p.sensor_topic, self.inputs.on_sensor, SENSOR_QOS))
        state_is_pose = p.state_type == "pose"
        if spec.state_dim and state_is_pose:
            add(self.create_subscription(PoseStamped, p.state_topic, lambda m: self.inputs.on_pose(m, True), 50))
        if not state_is_pose or p.command_interface in P.JOINT_INTERFACES:
            topic = p.state_topic if not state_is_pose else "joint_states"
            add(self.create_subscription(JointState, topic,
                                         lambda m: self.inputs.on_joint_state(m, bool(spec.state_dim) and not state_is_pose),
                                         HIGH_RATE_QOS))
        if self.pose_source == "tf":  # the ee pose from TF (UR, Franka, MoveIt publish no pose topic)
            add(TfPose(self, p.base_frame, p.ee_frame, p.command_rate_hz, lambda m: self.inputs.on_pose(m, False)))
        elif p.pose_topic and not (state_is_pose and p.pose_topic == p.state_topic):
            add(self.create_subscription(PoseStamped, p.pose_topic, lambda m: self.inputs.on_pose(m, False),
                                         HIGH_RATE_QOS))
        add(self.create_subscription(String, p.instruction_topic, self._on_instruction, 10))
        if p.heartbeat_topic:
            add(self.create_subscription(Bool, p.heartbeat_topic, self._on_heartbeat, 10))
        if p.command_interface in P.JOINT_INTERFACES and not p.robot_description:
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            add(self.create_subscription(String, "/robot_description",
                                         lambda m: self._set_robot_description(m.data, from_topic=True), latched))
        # lifecycle publishers (rclpy's managed entities): they publish only while the node is active
        publisher = getattr(self, "create_lifecycle_publisher", self.create_publisher)
        self.chunk_pub = publisher(ActionChunk, "~/action_chunk", 10)
        self.action_pub = publisher(ActionChunk, "~/action", 10)
        self.command_pub = None
        if self.command is not None:
            topic = p.command_topic or P.DEFAULT_COMMAND_TOPICS[p.command_interface]
            self.command_pub = publisher(self.command.message_type, topic, 10)
        self.trajectory_action = None
        if p.joint_trajectory_action and p.command_interface == "joint_trajectory":
            self.trajectory_action = TrajectoryAction(self, p.joint_trajectory_action, self._on_controller_failure)
            add(self.trajectory_action)
        self.servo_setup = None
        if p.servo_node and p.command_interface in P.SERVO_COMMAND_TYPES:
            self.servo_setup = ServoSetup(self, p.servo_node, P.SERVO_COMMAND_TYPES[p.command_interface],
                                          self._on_servo_halt)
            add(self.servo_setup)
        self.gripper_pub = publisher(Float64MultiArray, p.gripper_topic, 10) \
            if p.gripper_topic and self.layout.gripper is not None else None
        self._entities += [pub for pub in (self.chunk_pub, self.action_pub, self.command_pub, self.gripper_pub) if pub]
        add(self.create_timer(1.0 / p.command_rate_hz, self._command_tick))
        if self.action_executor is not None:
            add(self.create_timer(self.dt, self._action_tick))

    def _release(self) -> None:
        if self.worker is not None:
            try:
                self.worker.stop()
            except Exception as exc:  # noqa: BLE001 - on_error: release the rest all the same
                self.get_logger().error(f"stopping inference: {exc}")
        for entity in self._entities:
            destroy = {"Subscription": self.destroy_subscription, "Publisher": self.destroy_publisher,
                       "LifecyclePublisher": getattr(self, "destroy_lifecycle_publisher", self.destroy_publisher),
                       "Timer": self.destroy_timer, "TrajectoryAction": lambda a: a.destroy(),
                       "ServoSetup": lambda s: s.destroy(), "TfPose": lambda t: t.destroy()}.get(type(entity).__name__)
            if destroy is not None:
                destroy(entity)
        self._entities, self.policies, self.inputs, self.worker, self.command = [], {}, None, None, None
        self.servo_setup = None
        self.active = False

    # -- inputs the node handles itself -------------------------------------------------------------------
    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self.instruction = msg.data

    def _on_clock_jump(self, jump) -> None:
        if self.inputs is None:
            return
        if jump.delta.nanoseconds < 0:
            back = -jump.delta.nanoseconds * 1e-9
            self.get_logger().warning(f"the clock jumped back {back:.3f} s: inputs reset")
            self.worker.reset()  # first: a chunk computed from before the jump is dropped, not published
            if self.armed():  # what was commanded belongs to the time before the jump
                self._hold(f"the clock jumped back {back:.3f} s")
            self.inputs.clear()
            self.inputs.stamp_guard.reset()
            with self._lock:
                for executor in (self.command_executor, self.action_executor):
                    if executor is not None:
                        executor.reset()
        elif self.command_executor is not None:
            self.inputs.stats["clock_steps"] += 1
            self._command_tick()
