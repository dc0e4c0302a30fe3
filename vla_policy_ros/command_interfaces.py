"""Action chunks -> commands for the standard ROS 2 control stack, and the explicit hold of each.

One class per `command_interface` parameter value:
- `joint_trajectory`: trajectory_msgs/JointTrajectory for ros2_control's JointTrajectoryController
  (its `~/joint_trajectory` topic): joint deltas accumulated from the joint positions at the
  observation's stamp, by joint name (the motion during inference is not counted twice). Timed for
  the controller as it executes (`Trajectory::sample`): it starts from its *current* state when the
  message arrives (header stamp 0), so at publication the points whose time has passed are dropped,
  times are relative to now, and the first segment - from the joints now to the first point kept -
  is given at least the time the velocity limits need (later points shift with it). Hold: one point
  where the joints are now (the newest sample moved on by the commanded motion since its stamp).
- `servo_twist`: geometry_msgs/TwistStamped for MoveIt Servo: velocity = delta / dt, streamed one
  per control period. Hold: a zero twist.
- `servo_joint_jog`: control_msgs/JointJog for MoveIt Servo's joint-space input: joint velocity = delta /
  dt within the URDF velocity limits, by name, streamed one per control period. Hold: zero velocities.
- `pose_target`: geometry_msgs/PoseStamped targets for cartesian controllers, accumulated from the
  pose at the observation's stamp (or, `pose_reference: setpoint`, from the target the controller
  had been given for that time: actions recorded as setpoint changes, e.g. a mocap or an impedance
  controller's equilibrium, would otherwise lose the steady-state offset between setpoint and
  measured pose at every chunk), streamed one per control period. Hold: the current pose.
The gripper dimension (if the action layout has one) goes to a std_msgs/Float64MultiArray command
(a ros2_controllers forward command controller).

What each action dimension means comes from the checkpoint's `action_names` (`ActionLayout`), or
from the `action_roles` parameter for checkpoints whose names say nothing (a0, a1, ...).
No rclpy here: the node calls these; tests build messages without a ROS graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import PoseStamped, TwistStamped
from std_msgs.msg import Float64MultiArray, Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from .quaternions import quat_from_euler, quat_multiply
from .robot_limits import JointBounds
from .safety import LimitResult, OutputLimits

INTERFACES = ("joint_trajectory", "servo_twist", "servo_joint_jog", "pose_target", "none")
AXES = ("x", "y", "z")
ANGLES = ("roll", "pitch", "yaw")
ALIASES = {"x": "x", "dx": "x", "delta_x": "x", "y": "y", "dy": "y", "delta_y": "y", "z": "z", "dz": "z",
           "delta_z": "z", "roll": "roll", "droll": "roll", "da": "roll", "rx": "roll", "pitch": "pitch",
           "dpitch": "pitch", "db": "pitch", "ry": "pitch", "yaw": "yaw", "dyaw": "yaw", "dr": "yaw", "rz": "yaw",
           "gripper": "gripper", "grip": "gripper"}
IGNORED = ("", "-", "none")


class CommandError(ValueError):
    """A command that cannot be built (missing state, unknown joints, frames): the node holds."""


@dataclass
class ActionLayout:
    """Which action index is which: cartesian axes/angles, gripper, or a joint by name."""

    translation: list[int | None] = field(default_factory=lambda: [None] * 3)  # index of x, y, z
    rotation: list[int | None] = field(default_factory=lambda: [None] * 3)  # index of roll, pitch, yaw
    gripper: int | None = None
    joints: list[tuple[int, str]] = field(default_factory=list)  # (index, joint name)

    @classmethod
    def from_names(cls, names: list[str], roles: list[str] | tuple = ()) -> "ActionLayout":
        """Roles from `roles` when given (one per action dimension), else from the action names."""
        if roles and len(roles) != len(names):
            raise ValueError(f"parameter action_roles: expected {len(names)} entries (one per action dimension "
                             f"{list(names)}), got {list(roles)}")
        layout = cls()
        for i, name in enumerate(roles or names):
            key = name.strip().lower()
            role = ALIASES.get(key)
            if key in IGNORED:
                continue
            if role in AXES:
                layout.translation[AXES.index(role)] = i
            elif role in ANGLES:
                layout.rotation[ANGLES.index(role)] = i
            elif role == "gripper":
                layout.gripper = i
            else:
                layout.joints.append((i, name.strip()))
        return layout

    @property
    def cartesian(self) -> bool:
        return any(i is not None for i in self.translation + self.rotation)

    def pick(self, chunk: np.ndarray, indices: list[int | None]) -> np.ndarray:
        """chunk (H, A) -> (H, len(indices)), zero where a role has no action dimension."""
        out = np.zeros((len(chunk), len(indices)))
        for k, i in enumerate(indices):
            if i is not None:
                out[:, k] = chunk[:, i]
        return out


@dataclass
class RobotState:
    """The robot as a command needs it: joints by name and the end-effector pose (position, xyzw, frame)."""

    joints: dict[str, float] | None = None
    pose: tuple[np.ndarray, np.ndarray, str] | None = None
    # pose_target with pose_reference `setpoint`: the target the controller was last given for this time
    # (position, xyzw); None = start from the measured pose
    setpoint: tuple[np.ndarray, np.ndarray] | None = None
    # the stamp of the joint sample `joints` holds (the oldest stream's newest sample for the newest state):
    # how far the arm may have moved since, for the first segment of a trajectory
    joints_stamp: float | None = None


@dataclass
class Planned:
    """One chunk turned into a command: a message sent at once, or rows streamed one per period."""

    outcome: str  # ok | clipped | rejected
    reason: str = ""
    message: object | None = None  # joint_trajectory: the whole trajectory
    rows: np.ndarray | None = None  # streamed interfaces: (H, D), one row per control period
    gripper: np.ndarray | None = None  # (H,) gripper commands, when the layout has a gripper
    frame: str = ""  # streamed interfaces: the frame of the messages


def duration(seconds: float) -> Duration:
    sec = int(np.floor(seconds))
    return Duration(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


# time from the joint state sample the node saw to the controller's update with the new trajectory (the
# sample's age + the message's way, loopback or a LAN)
TRANSPORT_S = 0.01
MAX_SAMPLE_AGE_S = 1.0  # beyond this the clocks disagree (a stale stream holds by its own timeout)


def _seconds(t) -> float:
    return t.sec + t.nanosec * 1e-9


def to_time(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def finite(values, what: str) -> np.ndarray:
    values = np.asarray(values, float)
    if not np.isfinite(values).all():
        raise CommandError(f"non-finite {what}: nothing published")
    return values


def _rejected(result: LimitResult) -> Planned:
    return Planned("rejected", result.reason)


class JointTrajectoryCommand:
    name = "joint_trajectory"
    streaming = False
    message_type = JointTrajectory

    def __init__(self, layout: ActionLayout, limits: OutputLimits, bounds: JointBounds | None, dt: float) -> None:
        if not layout.joints:
            raise ValueError("command_interface joint_trajectory: no action dimension names a joint (action names or "
                             "action_roles must be the controller's joint names)")
        self.layout, self.limits, self.bounds, self.dt = layout, limits, bounds, dt
        self.names = [name for _, name in layout.joints]
        # the last trajectory sent, as the controller runs it: (absolute times (P+1,), positions (P+1, J)) from
        # the joints at publication through its points (the hold's target when the joint state is stale)
        self.sent: tuple[np.ndarray, np.ndarray] | None = None

    def current(self, robot: RobotState) -> np.ndarray:
        if robot.joints is None:
            raise CommandError("no joint state yet")
        missing = [n for n in self.names if n not in robot.joints]
        if missing:
            raise CommandError(f"joints {missing} are not in the JointState (it has {sorted(robot.joints)})")
        return finite([robot.joints[n] for n in self.names], "joint state")

    def plan(self, chunk: np.ndarray, robot: RobotState, stamp: float) -> Planned:
        limited = self.limits.apply_chunk(chunk)
        if limited.chunk is None:
            return _rejected(limited)
        start = self.current(robot)
        targets = start + np.cumsum(self.layout.pick(limited.chunk, [i for i, _ in self.layout.joints]), axis=0)
        outcome = limited
        if self.bounds is not None:
            bounded = self.bounds.apply(targets, start, self.dt)
            if bounded.chunk is None:
                return _rejected(bounded)
            targets, outcome = bounded.chunk, (bounded if bounded.outcome != "ok" else limited)
        msg = JointTrajectory(header=Header(stamp=to_time(stamp)), joint_names=list(self.names))
        for i, row in enumerate(finite(targets, "joint target")):
            msg.points.append(JointTrajectoryPoint(positions=row.tolist(), time_from_start=duration((i + 1) * self.dt)))
        return Planned(outcome.outcome, outcome.reason, message=msg, gripper=_gripper(self.layout, limited.chunk))

    def timed(self, planned: Planned, robot: RobotState, now: float) -> tuple[JointTrajectory | None, int]:
        """The planned trajectory (points due at stamp + (i+1) dt) as the controller will execute it when it
        arrives now: header stamp 0 (start on receipt), the points already due dropped, times from now, and
        the first segment from the joints now slowed to the velocity limits (with TRANSPORT_S for the
        joint sample's age and the message's way to the controller); the points after it keep their spacing (each within the limits
        already) and shift by the same delay. Returns (message or None when every point is due, points dropped)."""
        msg: JointTrajectory = planned.message
        start = _seconds(msg.header.stamp)
        due = [start + _seconds(p.time_from_start) for p in msg.points]
        keep = [i for i, t in enumerate(due) if t > now + TRANSPORT_S]
        if not keep:
            return None, len(due)
        current = self.current(robot)
        first = np.asarray(msg.points[keep[0]].positions, float)
        velocity = self.bounds.velocity if self.bounds is not None else np.full(len(first), np.inf)
        # the controller starts from where the arm is on receipt: the joint sample is `age` old (a loaded
        # machine delivers joint states late) and the message takes TRANSPORT_S, so the arm may be up to
        # velocity x (age + TRANSPORT_S) further away: time for that distance, then the transport itself
        age = 0.0 if robot.joints_stamp is None else min(max(now - robot.joints_stamp, 0.0), MAX_SAMPLE_AGE_S)
        needed = float(np.max(np.abs(first - current) / velocity)) + age + 2 * TRANSPORT_S  # 0 where velocity is inf
        delay = max(0.0, needed - (due[keep[0]] - now))
        out = JointTrajectory(joint_names=list(msg.joint_names))  # stamp 0: the controller starts on receipt
        for i in keep:
            point = msg.points[i]
            out.points.append(JointTrajectoryPoint(positions=list(point.positions),
                                                   time_from_start=duration(due[i] - now + delay)))
        self.sent = (np.array([now] + [due[i] + delay for i in keep]),
                     np.vstack([current] + [np.asarray(msg.points[i].positions, float) for i in keep]))
        return out, keep[0]

    def commanded_at(self, t: float) -> np.ndarray | None:
        """Where the last trajectory sent puts the joints at `t` (linear between its points, as the controller
        samples positions-only trajectories); None before any was sent."""
        if self.sent is None:
            return None
        times, positions = self.sent
        return np.array([np.interp(t, times, positions[:, j]) for j in range(positions.shape[1])])

    def hold(self, robot: RobotState, now: float, frame: str) -> JointTrajectory:
        """One point where the joints are now, velocity 0, due in dt (or the time the velocity limits need from
        the newest joint sample); stamp zero = start now (JTC semantics).

        Where the joints are now: the newest joint sample, moved on by what the last trajectory commanded since
        the sample's stamp. A sample is `age` old (on a loaded machine joint states reach the node late, and
        a hold for stale camera inputs comes exactly then): a moving arm asked to be back at the sample within dt
        reverses at several times its velocity limit (measured: 5.9x in CI). The controller then decelerates
        from its own state to rest at that point. Without a joint state (stale: the node passes none), where the
        last trajectory has the joints now. Within the joint bounds."""
        sample = None
        if robot.joints is None:
            commanded = self.commanded_at(now)
            positions = self.current(robot) if commanded is None else finite(commanded, "commanded position")
        else:
            positions = sample = self.current(robot)
            if self.sent is not None and robot.joints_stamp is not None:
                positions = sample + finite(self.commanded_at(now) - self.commanded_at(robot.joints_stamp),
                                            "commanded motion")
        due = self.dt
        if self.bounds is not None:  # (a measured position already outside is not pulled in within dt)
            lower, upper = self.bounds.lower, self.bounds.upper
            if sample is not None:
                lower, upper = np.minimum(lower, sample), np.maximum(upper, sample)
            positions = np.clip(positions, lower, upper)
            if sample is not None:  # the arm is between the sample and the commanded motion (it lags when its
                # controller or the last trajectory ran late, measured 2.3x in a loaded CI run): reachable from
                # either within the velocity limits (the controller's cubic from rest to rest peaks at 1.5x the mean)
                due = max(due, 1.5 * float(np.max(np.abs(positions - sample) / self.bounds.velocity)) + 2 * TRANSPORT_S)
        point = JointTrajectoryPoint(positions=positions.tolist(), velocities=[0.0] * len(positions),
                                     time_from_start=duration(due))
        return JointTrajectory(joint_names=list(self.names), points=[point])


class JointJogCommand(JointTrajectoryCommand):
    """Joint deltas as joint velocities for MoveIt Servo (control_msgs/JointJog, imported when configured)."""

    name = "servo_joint_jog"
    streaming = True

    def __init__(self, layout: ActionLayout, limits: OutputLimits, bounds: JointBounds | None, dt: float) -> None:
        super().__init__(layout, limits, bounds, dt)
        try:
            from control_msgs.msg import JointJog
        except ImportError:
            raise ValueError("command_interface servo_joint_jog: control_msgs is not importable (install "
                             "ros-<distro>-control-msgs)") from None
        self.message_type, self.width = JointJog, len(self.names)

    def plan(self, chunk: np.ndarray, robot: RobotState, stamp: float) -> Planned:
        """Rows (H, J) of joint velocities (rad/s) from the targets the trajectory would have, within limits."""
        trajectory = super().plan(chunk, robot, stamp)
        if trajectory.message is None:
            return trajectory
        targets = np.array([p.positions for p in trajectory.message.points])  # (H, J)
        velocities = np.diff(np.vstack([self.current(robot), targets]), axis=0) / self.dt
        return Planned(trajectory.outcome, trajectory.reason, rows=finite(velocities, "joint velocity"),
                       gripper=trajectory.gripper)

    def message(self, row: np.ndarray, now: float, frame: str):
        msg = self.message_type(header=Header(stamp=to_time(now), frame_id=frame), joint_names=list(self.names),
                                velocities=finite(row, "joint velocity").tolist())
        msg.duration = float(self.dt)  # Servo applies the velocities for this long at most
        return msg

    def hold(self, robot: RobotState, now: float, frame: str):
        return self.message(np.zeros(len(self.names)), now, frame)


class CartesianCommand:
    """Shared by servo_twist and pose_target: targets from the pose at the observation, within limits."""

    streaming = True

    def __init__(self, layout: ActionLayout, limits: OutputLimits, dt: float, translation_scale: float,
                 rotation_scale: float, frame: str) -> None:
        if not layout.cartesian:
            raise ValueError(f"command_interface {self.name}: no action dimension is x/y/z/roll/pitch/yaw (action names "
                             "such as dx dy dz, or the action_roles parameter)")
        self.layout, self.limits, self.dt, self.frame = layout, limits, dt, frame
        self.translation_scale, self.rotation_scale = translation_scale, rotation_scale

    def pose(self, robot: RobotState) -> tuple[np.ndarray, np.ndarray, str]:
        if robot.pose is None:
            raise CommandError("no end-effector pose yet")
        position, orientation, frame = robot.pose
        if self.frame and frame and frame != self.frame:
            raise CommandError(f"the pose is in frame {frame!r}, commands are configured for {self.frame!r} "
                               "(command_frame); no transform is applied")
        return finite(position, "pose"), finite(orientation, "pose"), self.frame or frame

    def targets(self, chunk: np.ndarray, robot: RobotState):
        """(outcome, limited chunk (H, A), positions (H, 3), orientations (H, 4), frame, angles (H, 3) rad per step
        after the rotation bounds) from the pose; positions None when rejected."""
        limited = self.limits.apply_chunk(chunk)
        if limited.chunk is None:
            return limited, None, None, None, "", None
        position, orientation, frame = self.pose(robot)
        if robot.setpoint is not None:  # deltas continue the controller's setpoint, not the measured pose
            position, orientation = (finite(v, "setpoint") for v in robot.setpoint)
        deltas = self.layout.pick(limited.chunk, self.layout.translation) * self.translation_scale
        angles = self.layout.pick(limited.chunk, self.layout.rotation) * self.rotation_scale
        # accumulated with the workspace as a saturating bound: a delta that would leave it moves along the
        # boundary, and the next delta starts from there (as a clamped setpoint does), not from outside
        positions, point, saturated = np.empty((len(chunk), 3)), np.asarray(position, float), False
        low, high = self.limits.workspace_min, self.limits.workspace_max
        for k, delta in enumerate(deltas):
            raw = point + delta
            point = np.clip(raw, low, high)
            saturated |= bool(np.any(point != raw))
            positions[k] = point
        # rotation bounded as translation is: a step's angle by max_angular_speed x dt, the orientation's distance
        # from where the chunk starts by max_chunk_rotation (a step past it does not rotate)
        orientations, start = np.empty((len(chunk), 4)), orientation / np.linalg.norm(orientation)
        q, rotation_clipped, step_max = start, "", self.limits.max_angular_speed * self.dt
        for i, rpy in enumerate(angles):
            if np.linalg.norm(rpy) > step_max * (1 + 1e-9):
                angles[i] = rpy = rpy * step_max / np.linalg.norm(rpy)
                rotation_clipped = f"faster than max_angular_speed {self.limits.max_angular_speed} rad/s"
            turned = quat_multiply(quat_from_euler(*rpy), q)
            turned = turned / np.linalg.norm(turned)
            if 2 * np.arccos(min(1.0, abs(float(np.dot(turned, start))))) > self.limits.max_chunk_rotation * (1 + 1e-9):
                angles[i], turned = 0.0, q
                rotation_clipped = f"more than max_chunk_rotation {self.limits.max_chunk_rotation} rad"
            orientations[i] = q = turned
        if rotation_clipped and self.limits.mode == "reject":
            return LimitResult(None, None, "rejected", rotation_clipped), None, None, None, frame, None
        bounded = self.limits.apply_targets(positions, position, self.dt)
        if bounded.positions is None:
            return bounded, None, None, None, frame, None
        if bounded.outcome == "ok" and (saturated or rotation_clipped):
            bounded = LimitResult(None, positions, "clipped",
                                  rotation_clipped or "workspace (targets held on its boundary)")
        outcome = bounded if bounded.outcome != "ok" else limited
        return outcome, limited.chunk, bounded.positions, orientations, frame, angles


class ServoTwistCommand(CartesianCommand):
    name = "servo_twist"
    message_type = TwistStamped

    def plan(self, chunk: np.ndarray, robot: RobotState, stamp: float) -> Planned:
        if robot.pose is None and not np.isfinite(np.r_[self.limits.workspace_min, self.limits.workspace_max]).any():
            robot = RobotState(robot.joints, (np.zeros(3), np.array([0, 0, 0, 1.0]), self.frame))  # velocities only
        outcome, limited, positions, _, frame, angles = self.targets(chunk, robot)
        if positions is None:
            return _rejected(outcome)
        start = robot.pose[0]
        linear = np.diff(np.vstack([start, positions]), axis=0) / self.dt  # (H, 3) m/s after the limits
        angular = angles / self.dt  # (H, 3) rad/s after the rotation bounds
        return Planned(outcome.outcome, outcome.reason, rows=finite(np.hstack([linear, angular]), "twist"),
                       gripper=_gripper(self.layout, limited), frame=frame)

    def message(self, row: np.ndarray, now: float, frame: str) -> TwistStamped:
        msg = TwistStamped(header=Header(stamp=to_time(now), frame_id=frame))
        row = finite(row, "twist")
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in row[:3])
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in row[3:6])
        return msg

    def hold(self, robot: RobotState, now: float, frame: str) -> TwistStamped:
        return self.message(np.zeros(6), now, frame)


class PoseTargetCommand(CartesianCommand):
    name = "pose_target"
    message_type = PoseStamped

    def plan(self, chunk: np.ndarray, robot: RobotState, stamp: float) -> Planned:
        outcome, limited, positions, orientations, frame, _ = self.targets(chunk, robot)
        if positions is None:
            return _rejected(outcome)
        return Planned(outcome.outcome, outcome.reason, rows=finite(np.hstack([positions, orientations]), "pose target"),
                       gripper=_gripper(self.layout, limited), frame=frame)

    def message(self, row: np.ndarray, now: float, frame: str) -> PoseStamped:
        row = finite(row, "pose target")
        q = row[3:7] / np.linalg.norm(row[3:7])  # ensembling averages quaternions: renormalise
        msg = PoseStamped(header=Header(stamp=to_time(now), frame_id=frame))
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in row[:3])
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        return msg

    def hold(self, robot: RobotState, now: float, frame: str) -> PoseStamped:
        position, orientation, pose_frame = self.pose(robot)
        return self.message(np.r_[position, orientation], now, frame or pose_frame)


def _gripper(layout: ActionLayout, chunk: np.ndarray) -> np.ndarray | None:
    return None if layout.gripper is None else np.asarray(chunk[:, layout.gripper], float)


def gripper_message(value: float, scale: float, low: float = -np.inf, high: float = np.inf) -> Float64MultiArray:
    """The gripper action x scale, clamped into [low, high] (the gripper's command limits)."""
    return Float64MultiArray(data=[float(np.clip(finite([value * scale], "gripper command")[0], low, high))])


def build_command(interface: str, layout: ActionLayout, limits: OutputLimits, dt: float, bounds: JointBounds | None,
                  translation_scale: float, rotation_scale: float, frame: str):
    """The command builder of `interface` (None for 'none': chunks only)."""
    if interface == "joint_trajectory":
        return JointTrajectoryCommand(layout, limits, bounds, dt)
    if interface == "servo_joint_jog":
        return JointJogCommand(layout, limits, bounds, dt)
    if interface == "servo_twist":
        return ServoTwistCommand(layout, limits, dt, translation_scale, rotation_scale, frame)
    if interface == "pose_target":
        return PoseTargetCommand(layout, limits, dt, translation_scale, rotation_scale, frame)
    if interface == "none":
        return None
    raise ValueError(f"parameter command_interface: expected one of {list(INTERFACES)}, got {interface!r}")
