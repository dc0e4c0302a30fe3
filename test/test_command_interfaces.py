"""Command building without a ROS graph: action layouts, each interface's message and hold, joint and
cartesian limits, the state history the commands are anchored on, and the stamp guard's clock reset."""

import numpy as np
import pytest

from vla_models.runtime import ChunkExecutor, StateHistory
from vla_policy_ros.command_interfaces import (ActionLayout, CommandError, JointTrajectoryCommand, RobotState,
                                               ServoTwistCommand, build_command, gripper_message)
from vla_policy_ros.robot_limits import JointBounds, RobotDescriptionError, joint_limits_from_urdf
from vla_policy_ros.inputs import input_timeouts
from vla_policy_ros.params import NodeParams
from vla_policy_ros.safety import OutputLimits, StampGuard, Watchdog

URDF = """<robot name="r"><link name="a"/><link name="b"/><link name="c"/><link name="d"/>
<joint name="shoulder" type="revolute"><parent link="a"/><child link="b"/><limit lower="-1" upper="1" velocity="2"
 effort="1"/></joint>
<joint name="elbow" type="continuous"><parent link="b"/><child link="c"/><limit velocity="1" effort="1"/></joint>
<joint name="tool" type="fixed"><parent link="c"/><child link="d"/></joint></robot>"""
UNLIMITED = OutputLimits(max_delta=np.full(7, np.inf))


def test_layout_from_the_seed_action_names_and_from_roles():
    seed = ActionLayout.from_names(["dx", "dy", "dz", "da", "db", "dr", "gripper"])
    assert seed.translation == [0, 1, 2] and seed.rotation == [3, 4, 5] and seed.gripper == 6 and not seed.joints
    roles = ActionLayout.from_names(["a0", "a1", "a2", "a3"], ["elbow", "", "shoulder", "gripper"])
    assert roles.joints == [(0, "elbow"), (2, "shoulder")] and roles.gripper == 3
    with pytest.raises(ValueError, match="action_roles: expected 4"):
        ActionLayout.from_names(["a0", "a1", "a2", "a3"], ["x"])
    with pytest.raises(ValueError, match="no action dimension names a joint"):
        build_command("joint_trajectory", seed, UNLIMITED, 0.1, None, 1e-3, 1e-3, "")
    with pytest.raises(ValueError, match="x/y/z"):
        build_command("servo_twist", roles, UNLIMITED, 0.1, None, 1e-3, 1e-3, "")


def test_joint_trajectory_by_name_from_the_state_at_the_observation():
    layout = ActionLayout.from_names(["elbow", "shoulder"])
    command = JointTrajectoryCommand(layout, OutputLimits(max_delta=np.full(2, np.inf)), None, 0.1)
    robot = RobotState(joints={"finger": 9.0, "shoulder": 0.5, "elbow": -0.25})  # any order, extra joints
    planned = command.plan(np.array([[0.1, 0.2], [0.1, 0.2]]), robot, 12.5)
    msg = planned.message
    assert list(msg.joint_names) == ["elbow", "shoulder"] and msg.header.stamp.sec == 12
    assert np.allclose([p.positions for p in msg.points], [[-0.15, 0.7], [-0.05, 0.9]])
    assert [p.time_from_start.nanosec for p in msg.points] == [100_000_000, 200_000_000]
    hold = command.hold(robot, 13.0, "")
    assert len(hold.points) == 1 and list(hold.points[0].positions) == [-0.25, 0.5] and hold.header.stamp.sec == 0
    with pytest.raises(CommandError, match=r"\['elbow'\] are not in the JointState"):
        command.plan(np.zeros((2, 2)), RobotState(joints={"shoulder": 0.0}), 1.0)
    with pytest.raises(CommandError, match="non-finite"):
        command.plan(np.zeros((2, 2)), RobotState(joints={"shoulder": 0.0, "elbow": float("nan")}), 1.0)


@pytest.mark.parametrize("mode", ["clip", "reject"])
def test_joint_limits_from_the_urdf(mode):
    limits = joint_limits_from_urdf(URDF)
    assert set(limits) == {"shoulder", "elbow"} and limits["shoulder"].upper == 1.0 and limits["elbow"].lower == -np.inf
    bounds = JointBounds.for_joints(["shoulder", "elbow"], limits, max_chunk_motion=0.5, mode=mode)
    layout = ActionLayout.from_names(["shoulder", "elbow"])
    command = JointTrajectoryCommand(layout, OutputLimits(max_delta=np.full(2, np.inf)), bounds, 0.1)
    robot = RobotState(joints={"shoulder": 0.9, "elbow": 0.0})
    planned = command.plan(np.array([[0.3, 0.05]] * 4), robot, 1.0)  # beyond upper, too fast, too far
    if mode == "reject":
        assert planned.outcome == "rejected" and "position limits" in planned.reason and planned.message is None
        return
    targets = np.array([p.positions for p in planned.message.points])
    assert planned.outcome == "clipped" and np.all(targets[:, 0] <= 1.0)
    steps = np.abs(np.diff(np.vstack([[0.9, 0.0], targets]), axis=0))
    assert np.all(steps <= np.array([2.0, 1.0]) * 0.1 + 1e-9) and np.all(np.abs(targets[:, 1]) <= 0.5 + 1e-9)
    with pytest.raises(RobotDescriptionError, match=r"no limits for joints \['wrist'\]"):
        JointBounds.for_joints(["wrist"], limits)
    with pytest.raises(RobotDescriptionError, match="not a readable URDF"):
        joint_limits_from_urdf("<robot")


def test_servo_twist_is_delta_over_dt_within_the_speed_limit():
    layout = ActionLayout.from_names(["dx", "dy", "dz", "gripper"])
    limits = OutputLimits(max_delta=np.full(4, np.inf), workspace_min=[-1, -1, -1], workspace_max=[1, 1, 1], max_speed=0.05)
    command = ServoTwistCommand(layout, limits, 0.1, 0.001, 1.0, "base_link")
    robot = RobotState(pose=(np.zeros(3), np.array([0, 0, 0, 1.0]), "base_link"))
    planned = command.plan(np.array([[1.0, 0, 0, 0.5], [10.0, 0, 0, -0.5]]), robot, 1.0)
    assert planned.outcome == "clipped" and np.allclose(planned.rows[:, 0], [0.01, 0.05])  # 1 mm / 0.1 s; capped
    assert np.allclose(planned.gripper, [0.5, -0.5])
    assert command.message(planned.rows[0], 2.0, "base_link").twist.linear.x == pytest.approx(0.01)
    zero = command.hold(robot, 2.0, "base_link").twist
    assert (zero.linear.x, zero.angular.z) == (0.0, 0.0)
    wrong = RobotState(pose=(np.zeros(3), np.array([0, 0, 0, 1.0]), "world"))
    with pytest.raises(CommandError, match="frame 'world'"):
        command.plan(np.zeros((2, 4)), wrong, 1.0)
    with pytest.raises(CommandError, match="non-finite"):
        command.message(np.array([np.nan, 0, 0, 0, 0, 0]), 2.0, "base_link")


def test_state_history_interpolates_at_the_camera_stamp():
    history = StateHistory(horizon_s=1.0, tolerance_s=0.01)
    for i in range(2001):  # 1 kHz for 2 s: only the last second is kept
        history.add(i * 1e-3, np.array([i * 1e-3, 2.0]))
    assert history.at(0.5) is None  # older than the horizon
    assert np.allclose(history.at(1.9125), [1.9125, 2.0])  # between two samples
    assert np.allclose(history.at(2.005), [2.0, 2.0]) and history.at(2.05) is None  # tolerance, no extrapolation


def test_stamp_guard_resets_when_the_clock_jumps_back():
    guard = StampGuard()
    assert guard.check("cam", 100.0, 100.0) is None
    assert "backwards" in guard.check("cam", 99.0, 100.1)
    assert guard.check("cam", 5.0, 5.0) is None and guard.resets == 1  # the clock went back: history forgotten


def test_chunk_executor_reset_forgets_every_chunk():
    executor = ChunkExecutor(0.1, "temporal")
    executor.add_chunk(0.0, np.ones((4, 2)))
    assert executor.action_at(0.1) is not None
    executor.reset()
    assert executor.action_at(0.15) is None and executor.counts["resets"] == 1
    assert executor.add_chunk(0.05, np.zeros((4, 2)))  # an older stamp than before the reset is accepted


def test_pose_targets_saturate_on_the_workspace_and_can_continue_the_setpoint():
    from vla_policy_ros.command_interfaces import PoseTargetCommand

    layout = ActionLayout.from_names(["dx", "dy", "dz", "gripper"])
    limits = OutputLimits(max_delta=np.full(4, np.inf), workspace_min=[-1, -1, 0.0], workspace_max=[1, 1, 1], max_speed=1.0)
    command = PoseTargetCommand(layout, limits, 0.1, 0.01, 1.0, "")
    robot = RobotState(pose=(np.array([0.0, 0.0, 0.02]), np.array([0, 0, 0, 1.0]), "world"))
    chunk = np.array([[0, 0, -5.0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0]])  # down past the floor, then up
    planned = command.plan(chunk, robot, 1.0)
    # held on the floor, then up from the floor at once (a clamped setpoint), not from 3 cm below it
    assert planned.outcome == "clipped" and np.allclose(planned.rows[:, 2], [0.0, 0.01, 0.02])
    robot.setpoint = (np.array([0.0, 0.0, 0.5]), np.array([0, 0, 0, 1.0]))  # pose_reference: setpoint
    assert np.allclose(command.plan(np.zeros((3, 4)), robot, 1.0).rows[:, 2], 0.5)


def test_a_joint_without_a_velocity_limit_is_a_named_error():
    urdf = URDF.replace('<limit velocity="1" effort="1"/>', '<limit effort="1"/>')
    limits = joint_limits_from_urdf(urdf)
    with pytest.raises(RobotDescriptionError, match=r"\['elbow'\] have no velocity limit"):
        JointBounds.for_joints(["shoulder", "elbow"], limits)
    assert JointBounds.for_joints(["shoulder"], limits).velocity.tolist() == [2.0]  # only commanded joints count


def test_timed_trajectory_starts_on_receipt_drops_due_points_and_slows_the_first_segment():
    layout = ActionLayout.from_names(["a0", "a1"], ["shoulder", "elbow"])
    bounds = JointBounds.for_joints(["shoulder", "elbow"], joint_limits_from_urdf(URDF))  # 2 and 1 rad/s
    command = build_command("joint_trajectory", layout, UNLIMITED, 0.1, bounds, 1e-3, 1e-3, "")
    robot = RobotState(joints={"shoulder": 0.0, "elbow": 0.0})
    planned = command.plan(np.full((4, 2), 0.05), robot, stamp=100.0)  # targets 0.05 .. 0.2, due 100.1 .. 100.4
    msg, dropped = command.timed(planned, RobotState(joints={"shoulder": 0.0, "elbow": 0.0}), now=100.25)
    assert dropped == 2 and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)  # 100.1 and 100.2 were due
    times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
    # the first kept point (0.15 rad away for elbow at 1 rad/s) needs 0.15 s + 2 x 10 ms, not the 0.05 s left
    assert times[0] == pytest.approx(0.17) and times[1] - times[0] == pytest.approx(0.1)
    assert command.timed(planned, robot, now=100.5)[0] is None  # every point due: nothing to send
    # a stale joint state: the hold goes where the last trajectory has the joints now, not to the old sample
    hold = command.hold(RobotState(joints=None), now=100.25 + 0.085, frame="")
    assert np.allclose(hold.points[0].positions, [0.075, 0.075])  # halfway to the first point (0.15)
    # a joint sample 80 ms old (a loaded machine): the arm may be 80 ms of motion further away on receipt
    late = command.timed(planned, RobotState(joints={"shoulder": 0.0, "elbow": 0.0}, joints_stamp=100.17),
                         now=100.25)[0]
    assert late.points[0].time_from_start.nanosec * 1e-9 == pytest.approx(0.25)


def test_rotation_is_bounded_per_step_and_per_chunk_and_required_to_arm():
    from types import SimpleNamespace

    from vla_policy_ros import params as P
    from vla_policy_ros.arming import ArmingMixin
    from vla_policy_ros.quaternions import quat_from_euler

    layout = ActionLayout.from_names(["dx", "dy", "dz", "da", "db", "dr", "gripper"])
    limits = OutputLimits(max_delta=np.full(7, np.inf), max_angular_speed=0.5, max_chunk_rotation=0.2)
    servo = build_command("servo_twist", layout, limits, 0.1, None, 1e-3, 1.0, "base_link")
    robot = RobotState(pose=(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]), "base_link"))
    chunk = np.zeros((8, 7))
    chunk[:, 5] = 0.3  # yaw 0.3 rad per 0.1 s step: 3 rad/s asked
    planned = servo.plan(chunk, robot, 0.0)
    rates = np.linalg.norm(planned.rows[:, 3:6], axis=1)
    assert planned.outcome == "clipped" and rates.max() == pytest.approx(0.5)  # 0.05 rad per step
    assert rates.sum() * 0.1 <= 0.2 + 1e-9 and rates[-1] == 0.0  # 4 steps reach 0.2 rad, then no more turning
    pose = build_command("pose_target", layout, limits, 0.1, None, 1e-3, 1.0, "base_link")
    targets = pose.plan(chunk, robot, 0.0).rows[:, 3:7]
    angle = 2 * np.arccos(np.clip(np.abs(targets @ np.array([0.0, 0.0, 0.0, 1.0])), 0, 1))
    assert angle.max() <= 0.2 + 1e-9 and np.allclose(targets[-1], quat_from_euler(0, 0, 0.2), atol=1e-9)
    # arming a cartesian interface whose actions rotate needs both bounds; one that does not rotate does not
    params = P.NodeParams(command_interface="servo_twist", workspace_min=(0, 0, 0), workspace_max=(1, 1, 1),
                          max_speed=0.5)
    node = SimpleNamespace(params=params, layout=layout, joint_bounds=None)
    assert "max_angular_speed" in ArmingMixin.limits_missing(node) and "max_chunk_rotation" in \
        ArmingMixin.limits_missing(node)
    node.layout = ActionLayout.from_names(["dx", "dy", "dz", "gripper"])
    assert ArmingMixin.limits_missing(node) == ""


@pytest.mark.parametrize("action,expected", [(0.5, 0.04), (2.0, 0.08), (-1.0, 0.0)])
def test_the_gripper_command_is_clamped_to_its_limits(action, expected):
    """action x scale, clamped into [gripper_min, gripper_max] (a Franka Hand: 0-0.08 m); NaN is refused."""
    assert gripper_message(action, 0.08, 0.0, 0.08).data[0] == pytest.approx(expected)
    with pytest.raises(CommandError, match="non-finite gripper"):
        gripper_message(float("nan"), 0.08, 0.0, 0.08)


def test_each_input_has_its_own_watchdog_timeout_at_most_input_timeout_s():
    params = NodeParams(camera_timeout_s=0.5, sensor_timeout_s=0.2, joint_state_timeout_s=0.0, input_timeout_s=0.3)
    timeouts = input_timeouts(params, ["front", "wrist"])
    assert timeouts == {"front": 0.3, "wrist": 0.3, "sensor": 0.2, "state": 0.3, "joints": 0.3, "pose": 0.3}
    dog = Watchdog(["front", "sensor", "joints"], 0.3, timeouts)
    for name in dog.inputs:
        dog.feed(name, 10.0)
    assert dog.stale(10.25) == ["sensor"] and dog.stale(10.35) == ["front", "sensor", "joints"]
    assert Watchdog(["front"], 0.0, {"front": 0.0}).stale(100.0) == []  # input_timeout_s 0: off
    defaults = input_timeouts(NodeParams(), ["front"])
    assert defaults["front"] < 1.0 and defaults["joints"] <= 0.2 and defaults["sensor"] <= 0.2


@pytest.mark.parametrize("ee_frame,pose_topic,tf2,expected", [
    ("tool0", "", True, "tf"), ("tool0", "ee_pose", True, "tf"),  # TF when it can be looked up
    ("tool0", "ee_pose", False, "topic"), ("", "ee_pose", True, "topic"),  # the topic as the fallback
    ("", "", True, ""), ("tool0", "", False, ValueError)])
def test_the_ee_pose_comes_from_tf2_when_importable_else_the_topic(ee_frame, pose_topic, tf2, expected):
    from vla_policy_ros.ee_pose import pose_source, tf2_importable

    if expected is ValueError:
        with pytest.raises(ValueError, match="ee_frame 'tool0': tf2_ros is not importable"):
            pose_source(ee_frame, pose_topic, tf2)
    else:
        assert pose_source(ee_frame, pose_topic, tf2) == expected
    assert isinstance(tf2_importable(), bool)
