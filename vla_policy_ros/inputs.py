"""The policy node's inputs: messages -> validated numpy values in time-indexed buffers.

Every input passes the same checks (size, header stamp: zero, future, backwards; a clock jump
back resets the stamp guard instead of dropping everything after it), and feeds the watchdog only
when it is valid. Buffers: views in the approximate-time synchroniser, the sensor ring buffer, the
policy's state and the robot's joints and end-effector pose as time-based histories (looked up,
interpolated, at the observation's stamp for commands, so inference time is not counted twice).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from vla_models.config import column_indices
from vla_models.runtime import STATE_KEY, ApproximateSynchronizer, SensorRingBuffer, StateHistory
from vla_training.data.messages import ImageConversionError, InputError, decode_sensor, image_to_rgb, stamp_seconds

from .command_interfaces import RobotState
from .safety import StampGuard, Watchdog

POSE_KEY, JOINTS_KEY = "pose", "joints"


@dataclass
class InputSpec:
    views: tuple
    sensor_channels: int
    sensor_window: int
    state_dim: int
    state_columns: tuple = ()  # JointState names the policy's state reads (() = the message's order)


def input_timeouts(params, views) -> dict[str, float]:
    """Each input's watchdog timeout: its own parameter (camera_timeout_s, sensor_timeout_s, joint_state_timeout_s
    for joints, ee pose and the policy's state), at most input_timeout_s; 0 = input_timeout_s."""
    cap = params.input_timeout_s

    def bounded(own: float) -> float:
        return min(own, cap) if own > 0 else cap

    state = bounded(params.joint_state_timeout_s)
    return {**{v: bounded(params.camera_timeout_s) for v in views}, "sensor": bounded(params.sensor_timeout_s),
            STATE_KEY: state, JOINTS_KEY: state, POSE_KEY: state}


class Inputs:
    """Buffers of one node's inputs; `stats` counts drops, `now()` is the node's clock in seconds."""

    def __init__(self, spec: InputSpec, params, now, logger, watch_joints: bool, watch_pose: bool) -> None:
        self.spec, self.params, self.now, self.logger = spec, params, now, logger
        self.stats: collections.Counter = collections.Counter()
        self.sync = ApproximateSynchronizer(list(spec.views), params.slop_s)
        self.sensor = SensorRingBuffer(max(4 * spec.sensor_window, 1), spec.sensor_channels) \
            if spec.sensor_channels else None
        self.state = StateHistory(params.state_history_s, tolerance_s=params.slop_s) if spec.state_dim else None
        # one history per JointState publisher (by its tuple of joint names): an arm and a gripper, or passive
        # joints, publish their own messages; robot_state merges them by name
        self.joint_histories: dict[tuple[str, ...], StateHistory] = {}
        self.joint_names: list[str] = []
        self.pose = StateHistory(params.state_history_s, tolerance_s=params.slop_s)  # x y z qx qy qz qw
        self.pose_frame = ""
        self.stamp_guard = StampGuard(params.future_stamp_tolerance_s)
        self.invalid: dict[str, str] = {}  # command inputs whose latest message was refused, and why
        self.frame_stamps: collections.deque[float] = collections.deque(maxlen=20)  # the first view's, for its rate
        # what the policy reads, and what commands also need (their staleness holds the arm, not inference)
        self.policy_inputs = list(spec.views) + (["sensor"] if spec.sensor_channels else []) + \
            ([STATE_KEY] if spec.state_dim else [])
        watched = self.policy_inputs + ([JOINTS_KEY] if watch_joints else []) + ([POSE_KEY] if watch_pose else [])
        self.watchdog = Watchdog(watched, params.input_timeout_s, input_timeouts(params, spec.views))

    def clear(self) -> None:
        """Forget every buffered value (deactivate): nothing from before is acted on after."""
        self.sync = ApproximateSynchronizer(list(self.spec.views), self.params.slop_s)
        for history in (self.state, self.pose, *self.joint_histories.values()):
            if history is not None:
                history.clear()
        if self.sensor is not None:
            self.sensor = SensorRingBuffer(self.sensor.capacity, self.sensor.channels)
        self.watchdog = Watchdog(list(self.watchdog.inputs), self.watchdog.timeout_s, self.watchdog.timeouts)
        self.invalid.clear()
        self.frame_stamps.clear()

    def drop(self, what: str, reason: str) -> None:
        self.stats[f"dropped_{what}"] += 1
        self.logger.warning(f"dropped a {what} message: {reason}", throttle_duration_sec=5.0)

    def accept(self, what: str, msg, size: int, stream: str = "") -> bool:
        """Size and header-stamp checks shared by every input; counts and warns on a drop. `stream`: the stamps'
        own sequence when one input has several publishers (default: `what`)."""
        if size > self.params.max_message_bytes:
            self.drop(what, f"{size} bytes is over max_message_bytes {self.params.max_message_bytes}")
            return False
        if hasattr(msg, "header"):
            reason = self.stamp_guard.check(stream or what, stamp_seconds(msg.header.stamp), self.now())
            if reason:
                self.drop(what, reason)
                return False
        return True

    def on_image(self, view: str, msg) -> None:
        if not self.accept(view, msg, len(msg.data)):
            return
        try:
            rgb = image_to_rgb(msg)
        except ImageConversionError as exc:
            return self.drop(f"image[{view}]", str(exc))
        self.sync.add(view, stamp_seconds(msg.header.stamp), rgb)
        self.watchdog.feed(view, self.now())
        if view == self.spec.views[0]:
            self.frame_stamps.append(stamp_seconds(msg.header.stamp))

    def frame_period(self) -> float | None:
        """Median seconds between the first view's frames (None before 5 frames)."""
        stamps = np.asarray(self.frame_stamps)
        steps = np.diff(stamps)
        return float(np.median(steps)) if len(steps) >= 4 else None

    def on_sensor(self, msg) -> None:
        if not self.accept("sensor", msg, 4 * len(getattr(msg, "data", ()))):
            return
        try:
            stamps, samples = decode_sensor(msg, self.spec.sensor_channels, self.now())
        except InputError as exc:
            return self.drop("sensor", str(exc))
        self.sensor.extend(stamps, samples)
        self.watchdog.feed("sensor", self.now())

    def on_joint_state(self, msg, is_policy_state: bool) -> None:
        """JointState: the robot's joints by name (for commands) and, if configured, the policy's state."""
        position = np.asarray(msg.position, float)
        names = tuple(msg.name)
        if not self.accept(JOINTS_KEY, msg, 8 * len(position), stream=f"{JOINTS_KEY} {list(names)}"):
            return
        if len(msg.name) != len(position) or not np.isfinite(position).all():
            self.invalid[JOINTS_KEY] = "the latest joint state has a non-finite or unnamed position"
            return self.drop("joint_state", f"{len(msg.name)} names for {len(position)} positions, or a non-finite "
                                            "position: every value must be finite and named")
        self.invalid.pop(JOINTS_KEY, None)
        stamp = stamp_seconds(msg.header.stamp)
        history = self.joint_histories.get(names)
        if history is None:
            history = self.joint_histories[names] = StateHistory(self.params.state_history_s,
                                                                 tolerance_s=self.params.slop_s)
            self.joint_names = sorted(set(self.joint_names) | set(names))
        history.add(stamp, position)
        self.watchdog.feed(JOINTS_KEY, self.now())
        if is_policy_state:
            try:
                indices = column_indices(self.spec.state_columns, msg.name)
            except KeyError as exc:
                return self.drop("state", f"joints {exc.args[0]} (the checkpoint's state.columns) are not in the "
                                          f"JointState {list(msg.name)}")
            if indices is not None:
                position = position[indices]
            self._policy_state(stamp, position)

    def on_pose(self, msg, is_policy_state: bool) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        pose = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        if not self.accept(POSE_KEY, msg, 56):
            return
        if not np.isfinite(pose).all() or np.linalg.norm(pose[3:]) < 1e-6:
            self.invalid[POSE_KEY] = "the latest pose is non-finite or has a zero quaternion"
            return self.drop("pose", "non-finite position or a zero quaternion")
        self.invalid.pop(POSE_KEY, None)
        stamp = stamp_seconds(msg.header.stamp)
        self.pose_frame = msg.header.frame_id
        self.pose.add(stamp, pose)
        self.watchdog.feed(POSE_KEY, self.now())
        if is_policy_state:
            self._policy_state(stamp, pose)

    def _policy_state(self, stamp: float, state: np.ndarray) -> None:
        if state.shape != (self.spec.state_dim,):
            return self.drop("state", f"expected {self.spec.state_dim} values, got {state.shape[0]}")
        self.state.add(stamp, state)
        self.watchdog.feed(STATE_KEY, self.now())

    def robot_state(self, stamp: float | None = None) -> RobotState:
        """Joints and pose at `stamp` (interpolated), or the newest when `stamp` is None."""
        def look(history):
            if stamp is None:
                newest = history.newest()
                return (None, None) if newest is None else newest
            return stamp, history.at(stamp)

        joints: dict[str, float] = {}
        stamps = []
        for names, history in self.joint_histories.items():
            sampled_at, values = look(history)
            if values is not None:
                joints.update(zip(names, values.tolist()))
                stamps.append(sampled_at)
        pose = look(self.pose)[1]
        return RobotState(joints=joints or None, pose=None if pose is None else (pose[:3], pose[3:], self.pose_frame),
                          joints_stamp=min(stamps) if stamps else None)
