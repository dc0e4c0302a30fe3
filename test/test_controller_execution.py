"""The node against controllers that *execute* what it sends: a JointTrajectoryController sampling its
trajectory in time from its current state (test/jtc_execution.py) on a kinematic arm with URDF limits of
1 rad/s, camera-to-command latency injected; holds on model faults; Servo starvation; lifecycle
services that answer while configure runs."""

import time

import numpy as np
import pytest
import torch
from conftest import make_policy
from fake_controllers import FakeJointTrajectoryController, FakeServo
from jtc_execution import TrajectoryExecution, arm_policy_checkpoint, drive_arm
from rclpy.node import Node
from ros_helpers import stamp, start_policy_node
from test_robot_deployment import JOINTS as DEPLOY_JOINTS
from test_robot_deployment import URDF as DEPLOY_URDF
from test_robot_deployment import STATE_VALUES, Robot, _enable, _params

from lifecycle_msgs.srv import GetState  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402


def _trajectory(points, stamp_s=0.0, velocities=None):
    msg = JointTrajectory(joint_names=["a", "b"])
    msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp_s), int(round((stamp_s % 1) * 1e9))
    for k, (t, q) in enumerate(points):
        p = JointTrajectoryPoint(positions=list(q))
        p.time_from_start.sec, p.time_from_start.nanosec = int(t), int(round((t % 1) * 1e9))
        if velocities is not None:
            p.velocities = list(velocities[k])
        msg.points.append(p)
    return msg


def test_the_stand_in_samples_like_the_controller():
    """From the state on receipt to the first point; past points skipped (a jump); the last point held."""
    jtc = TrajectoryExecution(["a", "b"], np.zeros(2))
    jtc.receive(_trajectory([(0.1, [1.0, 0.0]), (0.2, [2.0, 0.0])]), now=10.0)  # stamp 0: starts on receipt
    assert np.allclose(jtc.sample(10.05), [0.5, 0.0]) and np.allclose(jtc.sample(10.15), [1.5, 0.0])
    assert np.allclose(jtc.sample(11.0), [2.0, 0.0])
    jtc.receive(_trajectory([(0.1, [1.0, 0.0]), (0.2, [2.0, 0.0])], stamp_s=9.95), now=10.1)  # first point past
    assert np.allclose(jtc.sample(10.1), [1.5, 0.0])  # the arm at 0 is asked to be at 1.5 at once
    jtc.position = np.array([0.3, 0.0])
    jtc.receive(_trajectory([(0.1, [1.0, 1.0])], velocities=[[0.0, 0.0]]), now=20.0)  # cubic with velocities
    assert np.allclose(jtc.sample(20.0), [0.3, 0.0]) and np.allclose(jtc.sample(20.1), [1.0, 1.0])


def test_a_hold_on_an_old_joint_sample_stops_the_moving_arm_within_its_limits():
    """A hold for stale camera inputs comes when the machine is loaded, so the joint sample is old too: the arm
    moving at its limit must decelerate where it is, not be sent back to where the sample saw it (5.9x in CI)."""
    from vla_policy_ros.command_interfaces import ActionLayout, RobotState, build_command
    from vla_policy_ros.robot_limits import JointBounds, joint_limits_from_urdf
    from vla_policy_ros.safety import OutputLimits
    from jtc_execution import JOINTS, URDF, VELOCITY

    bounds = JointBounds.for_joints(JOINTS, joint_limits_from_urdf(URDF))
    command = build_command("joint_trajectory", ActionLayout.from_names(JOINTS, JOINTS),
                            OutputLimits(max_delta=np.full(6, np.inf)), 0.1, bounds, 1e-3, 1e-3, "")
    arm, at_rest = TrajectoryExecution(JOINTS, np.zeros(6)), {n: 0.0 for n in JOINTS}
    planned = command.plan(np.full((8, 6), 0.1), RobotState(joints=at_rest, joints_stamp=100.0), stamp=100.0)
    message, _ = command.timed(planned, RobotState(joints=at_rest, joints_stamp=100.0), now=100.0)
    arm.receive(message, now=100.0)
    log = [(t, arm.step(t, 0.002).copy()) for t in np.arange(100.002, 100.5, 0.002)]  # moving at 1 rad/s
    old = dict(zip(JOINTS, np.interp(100.2, [t for t, _ in log], [p[0] for _, p in log]) * np.ones(6)))
    at_hold = arm.position.copy()
    arm.receive(command.hold(RobotState(joints=old, joints_stamp=100.2), now=100.5, frame=""), now=100.5)
    log += [(t, arm.step(t, 0.002).copy()) for t in np.arange(100.502, 101.0, 0.002)]
    times, positions = np.array([t for t, _ in log]), np.array([p for _, p in log])
    speed = (np.abs(np.diff(positions, axis=0)) / np.diff(times)[:, None]).max()
    assert speed <= 1.01 * VELOCITY, f"the hold moved the arm at {speed / VELOCITY:.2f}x its limit"
    assert np.abs(positions[-1] - at_hold).max() < 0.02  # at rest where it was when the hold came
    # the arm lagged (its controller ran late): it is still where the sample saw it, the commanded motion since
    # is ahead of it; the hold is reachable from there within the limits too
    lagging = TrajectoryExecution(JOINTS, np.array([old[j] for j in JOINTS]))
    lagging.receive(command.hold(RobotState(joints=old, joints_stamp=100.2), now=100.5, frame=""), now=100.5)
    log = [(t, lagging.step(t, 0.002).copy()) for t in np.arange(100.502, 101.2, 0.002)]
    times, positions = np.array([t for t, _ in log]), np.array([p for _, p in log])
    speed = (np.abs(np.diff(positions, axis=0)) / np.diff(times)[:, None]).max()
    assert speed <= 1.01 * VELOCITY, f"the hold moved the lagging arm at {speed / VELOCITY:.2f}x its limit"


@pytest.fixture(scope="module")
def arm_checkpoint(tmp_path_factory):
    return arm_policy_checkpoint(tmp_path_factory.mktemp("arm"))


@pytest.mark.parametrize("latency_s", [0.05, 0.15])
def test_executed_joint_speed_stays_within_the_urdf_limit(ros, arm_checkpoint, latency_s):
    run = drive_arm(ros, arm_checkpoint, latency_s)
    assert run.travelled > 0.3, "the arm did not move: the test would prove nothing"
    assert run.ratio <= 1.05, (f"executed joint speed {run.ratio:.2f} x the URDF limit (latency {latency_s} s); node "
                               f"{dict(run.node.stats)}, holding {run.node.holding!r}\n{run.diagnosis}")
    assert run.node.stats["commands"] >= 10


def _hold_count(jtc):
    return sum(len(m.points) == 1 for m in jtc.accepted)


def _armed_on_a_jtc(ros, checkpoint):
    """The node armed on the JointTrajectoryController stand-in, fed by the deployment tests' robot."""
    node = start_policy_node(ros, _params(checkpoint, command_interface="joint_trajectory", action_roles=DEPLOY_JOINTS,
                                          robot_description=DEPLOY_URDF))
    jtc = ros.add(FakeJointTrajectoryController(ros.context, DEPLOY_JOINTS))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    return node, jtc, robot


@pytest.mark.parametrize("fault", ["exception", "non_finite"])
def test_a_model_fault_while_armed_ends_in_a_hold(ros, checkpoint, fault):
    node, jtc, robot = _armed_on_a_jtc(ros, checkpoint)
    robot.run_until(ros, lambda: len(jtc.accepted) >= 2, "trajectories")
    policy = node.policies["regression"]
    horizon, dim = policy.config.horizon, policy.config.action_dim

    def broken(*args, **kwargs):
        if fault == "exception":
            raise RuntimeError("CUDA error: an illegal memory access")
        return torch.full((1, horizon, dim), float("nan"))

    policy.predict_action_chunk = broken
    robot.run_until(ros, lambda: node.holding.startswith("model failed") or "non-finite" in node.holding,
                    f"a hold on the model's {fault}")
    robot.run_until(ros, lambda: _hold_count(jtc) >= 1, "the hold at the controller")
    assert len(jtc.accepted[-1].points) == 1 and jtc.rejected == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_policy("tiny", "regression").save(tmp_path_factory.mktemp("deploy") / "regression"))


def test_servo_starvation_sends_a_zero_twist(ros, checkpoint):
    """Chunks every 2 s covering 0.8 s: between them Servo would integrate the last twist until its own timeout."""
    limits = {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0], "max_speed": 5.0}
    node = start_policy_node(ros, _params(checkpoint, command_interface="servo_twist", pose_topic="ee_pose",
                                          translation_scale=0.01, rate_hz=0.5, **limits))
    servo = ros.add(FakeServo(ros.context))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: any(not FakeServo.is_zero(m) for m in servo.accepted), "a twist", timeout=30)
    robot.run_until(ros, lambda: node.holding.startswith("servo stream starved"), "a hold when the rows run out",
                    timeout=30)
    ros.wait_for(lambda: FakeServo.is_zero(servo.accepted[-1]), what="a zero twist after the last row")


def test_get_state_answers_while_configure_runs(ros, checkpoint, monkeypatch):
    import vla_policy_ros.policy_node as policy_node

    def slow_load(*args, **kwargs):
        time.sleep(3.0)  # a 3B backbone loading
        return load(*args, **kwargs)

    load = policy_node.load_policy
    monkeypatch.setattr(policy_node, "load_policy", slow_load)
    from rclpy.parameter import Parameter

    node = ros.add(policy_node.PolicyNode(context=ros.context, parameter_overrides=[
        Parameter(k, value=v) for k, v in _params(checkpoint).items()]))
    probe = ros.add(Node("probe", context=ros.context))
    client = probe.create_client(GetState, "/vla_policy/get_state")
    assert client.wait_for_service(timeout_sec=10.0)
    ros.wait_for(lambda: node.configuring_since is not None, timeout=10, what="configure to start")
    start = time.monotonic()
    future = client.call_async(GetState.Request())
    ros.wait_for(future.done, timeout=10, what="get_state")
    answered = time.monotonic() - start
    assert answered < 0.5 and not node.active, f"get_state took {answered:.2f} s while configure ran"
    ros.wait_for(lambda: node.active, timeout=30, what="activation after the slow configure")


def test_joint_states_of_several_publishers_merge_by_name(ros, checkpoint):
    """An arm and a gripper publishing their own JointState (own stamps, own names): merged by joint name,
    none dropped for going backwards in the other's stamps, none interpolated across joint sets."""
    node = start_policy_node(ros, _params(checkpoint, command_interface="joint_trajectory", action_roles=DEPLOY_JOINTS,
                                          robot_description=DEPLOY_URDF))
    robot = Robot(ros)
    gripper = robot.node.create_publisher(JointState, "joint_states", 10)

    def both():
        robot.step()
        js = JointState(name=["gripper_finger"], position=[0.7])
        js.header.stamp = stamp(robot.t - 0.01)  # its own clock, a little behind the arm's
        gripper.publish(js)
        time.sleep(0.02)
        joints = node.inputs.robot_state().joints if node.inputs is not None else None
        return joints is not None and "gripper_finger" in joints and "j0" in joints

    ros.wait_for(both, what="both publishers' joints")
    joints = node.inputs.robot_state().joints
    assert joints["gripper_finger"] == pytest.approx(0.7) and joints["j2"] == pytest.approx(STATE_VALUES["j2"])
    assert node.stats.get("dropped_joints", 0) == 0


def test_an_armed_node_holds_when_it_shuts_down(ros, checkpoint):
    """What Ctrl-C / SIGTERM run in the process (main catches both with the context still up): the hold first."""
    node, jtc, robot = _armed_on_a_jtc(ros, checkpoint)
    robot.run_until(ros, lambda: len(jtc.accepted) >= 2 and _hold_count(jtc) == 0, "trajectories")
    node.shutdown()
    ros.wait_for(lambda: _hold_count(jtc) >= 1, what="the hold on shutdown")
    assert node.holding == "shutting down" and len(jtc.accepted[-1].points) == 1
