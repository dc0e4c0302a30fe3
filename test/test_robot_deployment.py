"""policy_node against the control stack of a real arm (real rclpy, fake controllers with the real
acceptance rules): joints by name, explicit holds on every fault, arming, heartbeat, lifecycle,
policy switch, clock jumps."""

import threading
import time

import numpy as np
import pytest
from conftest import make_policy
from fake_controllers import FakeJointTrajectoryController, FakeServo
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_helpers import stamp, start_policy_node

from geometry_msgs.msg import PoseStamped, WrenchStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from vla_policy_ros.image_conversion import rgb_to_image_msg  # noqa: E402
from vla_policy_ros.msg import ActionChunk  # noqa: E402
from vla_policy_ros.policy_node import PolicyNode  # noqa: E402

JOINTS = ["j0", "j1", "j2", "j3"]
# the arm's JointState: shuffled, with joints the controller does not command (also the policy's 8-d state)
STATE_NAMES = ["finger", "j3", "j1", "wrist_cam", "j0", "j2", "lift", "base_yaw"]
STATE_VALUES = {name: 0.1 * i for i, name in enumerate(STATE_NAMES)}
URDF = "<robot name='arm'><link name='base'/>" + "".join(
    f"<link name='l{i}'/><joint name='{n}' type='revolute'><parent link='{'base' if i == 0 else f'l{i - 1}'}'/>"
    f"<child link='l{i}'/><axis xyz='0 0 1'/><limit lower='-50' upper='50' velocity='500' effort='1'/></joint>"
    for i, n in enumerate(JOINTS)) + "</robot>"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_policy("tiny", "regression").save(tmp_path_factory.mktemp("deploy") / "regression"))


class Robot:
    """Publishes one synchronised set (2 views, a wrench, the joint state, the ee pose) per call."""

    def __init__(self, ros, node_name="robot"):
        self.node = ros.add(Node(node_name, context=ros.context))
        self.pubs = {v: self.node.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in ("front", "wrist")}
        self.sensor = self.node.create_publisher(WrenchStamped, "sensor", 10)
        self.joints = self.node.create_publisher(JointState, "joint_states", 10)
        self.pose = self.node.create_publisher(PoseStamped, "ee_pose", 10)
        self.heartbeat = self.node.create_publisher(Bool, "heartbeat", 10)
        self.chunks: list[ActionChunk] = []
        self.node.create_subscription(ActionChunk, "/vla_policy/action_chunk", self.chunks.append, 100)
        self.rng = np.random.default_rng(0)
        self.t = time.time()
        self.wall_clock = True  # stamps from the wall clock (commands check the observation's age)
        self.joint_values = dict(STATE_VALUES)
        self.send_joints = self.send_heartbeat = self.send_images = self.send_sensor = True

    def step(self, dt=0.05):
        self.t = max(self.t + 1e-3, time.time()) if self.wall_clock else self.t + dt
        for pub in self.pubs.values() if self.send_images else ():
            pub.publish(rgb_to_image_msg(self.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), stamp(self.t)))
        w = WrenchStamped()
        w.header.stamp = stamp(self.t)
        if self.send_sensor:
            self.sensor.publish(w)
        if self.send_joints:
            js = JointState(name=STATE_NAMES, position=[self.joint_values[n] for n in STATE_NAMES])
            js.header.stamp = stamp(self.t)
            self.joints.publish(js)
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = stamp(self.t), "base_link"
        pose.pose.position.x, pose.pose.orientation.w = 0.5, 1.0
        self.pose.publish(pose)
        if self.send_heartbeat:
            self.heartbeat.publish(Bool(data=True))

    def run_until(self, ros, predicate, what, timeout=30.0):
        def step():
            self.step()
            time.sleep(0.02)
            return predicate()

        ros.wait_for(step, timeout=timeout, what=what)


def _call(ros, client, request, what):
    assert client.wait_for_service(timeout_sec=10.0), what
    future = client.call_async(request)
    ros.wait_for(future.done, what=what)
    return future.result()


def _enable(ros, robot, on=True):
    client = robot.node.create_client(SetBool, "/vla_policy/enable")
    return _call(ros, client, SetBool.Request(data=on), "~/enable")


def _params(checkpoint, **overrides):
    return {"regression_checkpoint": checkpoint, "sensor_topic": "sensor", "rate_hz": 20.0, "slop_s": 0.02,
            "input_timeout_s": 0.5, "sensor_timeout_s": 0.5, "joint_state_timeout_s": 0.5, **overrides}


def test_joint_trajectory_by_name_nan_and_stale_joints_hold(ros, checkpoint):
    node = start_policy_node(ros, _params(checkpoint, command_interface="joint_trajectory", action_roles=JOINTS,
                                          robot_description=URDF))
    jtc = ros.add(FakeJointTrajectoryController(ros.context, JOINTS))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks in dry run")
    assert jtc.accepted == [] and node.params.dry_run
    assert _enable(ros, robot).success
    # trajectories (a hold - one point at the current joints - may come between them on a loaded machine: an
    # observation too old at publication)
    moves = lambda: [m for m in jtc.accepted if len(m.points) > 1]  # noqa: E731
    robot.run_until(ros, lambda: len(moves()) >= 3, "trajectories accepted by the JTC")
    assert jtc.rejected == []
    cmd = moves()[-1]
    # stamp 0: the controller starts on receipt; the points due before publication are dropped, the rest are
    # the chunk's targets anchored at the observation (action k drives JOINTS[k])
    assert (cmd.header.stamp.sec, cmd.header.stamp.nanosec) == (0, 0) and list(cmd.joint_names) == JOINTS
    start = np.array([STATE_VALUES[n] for n in JOINTS])
    targets = [start + np.cumsum(np.asarray(c.actions).reshape(c.horizon, c.action_dim), axis=0) for c in robot.chunks]
    points = jtc.positions(cmd)
    assert 1 <= len(points) <= 8 and any(np.allclose(points, t[-len(points):], atol=1e-5) for t in targets)

    # a NaN joint position: nothing non-finite goes out, and the JTC gets a hold at the last finite positions moved
    # on by what the controller was commanded since their stamp (where a tracking arm is now; this robot is static)
    built = []  # (robot state, now) of every hold the node builds, and where the commanded path moved since
    build = node.command.hold

    def recorded(robot_state, now, frame):
        moved = (node.command.commanded_at(now) - node.command.commanded_at(robot_state.joints_stamp)
                 if robot_state.joints is not None and node.command.sent is not None else np.zeros(len(JOINTS)))
        built.append((robot_state, moved))
        return build(robot_state, now, frame)

    node.command.hold = recorded
    n = len(jtc.accepted)
    robot.joint_values["j1"] = float("nan")
    robot.run_until(ros, lambda: node.holding.startswith("the latest joint state"), "a hold on the NaN joint state")
    # a trajectory planned just before the NaN arrived may still come first: the hold is the one-point one
    ros.wait_for(lambda: any(len(m.points) == 1 for m in jtc.accepted[n:]), what="the hold trajectory")
    hold = next(m for m in jtc.accepted[n:] if len(m.points) == 1)
    assert len(hold.points) == 1 and hold.header.stamp.sec == 0
    state, moved = built[0]
    assert state.joints == {j: STATE_VALUES[j] for j in state.joints}  # the last finite sample
    assert np.allclose(jtc.positions(hold)[0], np.array([STATE_VALUES[j] for j in JOINTS]) + moved)
    for msg in jtc.accepted:
        assert np.isfinite(jtc.positions(msg)).all()

    # fresh joints again -> commands resume; then the joint states stop -> hold within the watchdog time
    robot.joint_values["j1"] = STATE_VALUES["j1"]
    robot.run_until(ros, lambda: node.holding == "" and len(jtc.accepted) > n + 2, "commands resume")
    robot.send_joints = False
    stopped = time.monotonic()
    robot.run_until(ros, lambda: "stale inputs" in node.holding and "joints" in node.holding
                    and len(jtc.accepted[-1].points) == 1, "a hold on stale joints, received by the JTC")
    held_at = next(t for m, t in zip(jtc.accepted, jtc.received_at) if t > stopped and len(m.points) == 1)
    assert held_at - stopped < 0.5 + 0.5  # input_timeout_s + a few command ticks and the feed loop
    # the stale sample is not a hold target (it would pull the arm back to it within dt): the hold is where the
    # last trajectory had the joints, within the joint bounds
    held = jtc.positions(jtc.accepted[-1])[0]
    assert not np.allclose(held, [STATE_VALUES[j] for j in JOINTS], atol=1e-6) and np.all(np.abs(held) <= 50)
    assert jtc.rejected == []


def test_servo_twist_heartbeat_and_arming(ros, checkpoint):
    limits = {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0], "max_speed": 5.0}
    node = start_policy_node(ros, _params(checkpoint, command_interface="servo_twist", pose_topic="ee_pose",
                                          heartbeat_topic="heartbeat", heartbeat_timeout_s=0.3,
                                          translation_scale=0.01, **limits))
    servo = ros.add(FakeServo(ros.context))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    # a parameter client cannot arm: dry_run can only be switched on
    setter = robot.node.create_client(SetParameters, "/vla_policy/set_parameters")
    result = _call(ros, setter, SetParameters.Request(parameters=[Parameter("dry_run", value=False).to_parameter_msg()]),
                   "set dry_run").results[0]
    assert not result.successful and "~/enable" in result.reason and node.params.dry_run
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: len(servo.accepted) >= 5, "twists accepted by Servo")
    assert servo.rejected == [] and all(m.header.frame_id == "base_link" for m in servo.accepted)
    chunk = robot.chunks[-1]
    actions = np.asarray(chunk.actions).reshape(chunk.horizon, chunk.action_dim)
    speeds = np.abs(actions[:, :3]) * 0.01 / chunk.dt  # velocity = delta / dt
    assert chunk.dt == pytest.approx(0.1) and speeds.max() > 0
    # the heartbeat stops: a zero twist, disarmed, and ~/enable refuses until it is back
    robot.send_heartbeat = False
    robot.run_until(ros, lambda: node.holding.startswith("heartbeat lost") or node.holding.startswith("disarmed"),
                    "a hold on the lost heartbeat")
    ros.wait_for(lambda: FakeServo.is_zero(servo.accepted[-1]), what="a zero twist")
    robot.run_until(ros, lambda: node.params.dry_run, "disarmed after the heartbeat loss")
    refused = _enable(ros, robot)
    assert not refused.success and "heartbeat" in refused.message


def test_a_hold_taken_while_armed_is_sent_when_another_thread_disarms_first(ros, checkpoint):
    """Two threads find the same fault (the command tick and the worker's chunk): the first takes the hold, the
    second finds it taken and disarms (a lost heartbeat). The zero twist must still go out (CI found it missing)."""
    limits = {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0], "max_speed": 5.0}
    node = start_policy_node(ros, _params(checkpoint, command_interface="servo_twist", pose_topic="ee_pose",
                                          translation_scale=0.01, **limits))
    servo = ros.add(FakeServo(ros.context))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: len(servo.accepted) >= 3, "twists accepted by Servo")
    entered, resume = threading.Event(), threading.Event()
    status = node.publish_status

    def slow_status():  # the first thread is descheduled right after taking the hold
        if threading.current_thread() is first:
            entered.set()
            resume.wait(5.0)
        status()

    node.publish_status = slow_status
    first = threading.Thread(target=node._hold, args=("a fault found twice",))
    first.start()
    assert entered.wait(5.0)
    node._hold("a fault found twice")  # the second thread: the hold is taken already
    node._disarm()
    resume.set()
    first.join(5.0)
    ros.wait_for(lambda: FakeServo.is_zero(servo.accepted[-1]), what="the hold's zero twist")
    assert node.params.dry_run and node.holding == "a fault found twice"


@pytest.mark.parametrize("limits", [{}, {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0],
                                         "max_speed": 5.0}])
def test_the_params_file_cannot_arm(ros, checkpoint, limits):
    """dry_run: false in the parameters (a params file, a launch argument) starts the node disarmed all the same:
    no command until ~/enable, which refuses while limits are missing."""
    node = start_policy_node(ros, _params(checkpoint, command_interface="servo_twist", pose_topic="ee_pose",
                                          translation_scale=0.01, dry_run=False, **limits))
    servo = ros.add(FakeServo(ros.context))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 3, "chunks")
    assert node.params.dry_run and not node.armed() and servo.accepted == []
    answer = _enable(ros, robot)
    assert answer.success == bool(limits), answer.message
    if limits:
        robot.run_until(ros, lambda: len(servo.accepted) >= 1, "a twist once armed through ~/enable")
    else:
        assert "workspace_min" in answer.message and node.params.dry_run


def test_lifecycle_transitions_and_hold_on_deactivate(ros, checkpoint):
    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in _params(
        checkpoint, autostart=False, command_interface="joint_trajectory", action_roles=JOINTS,
        robot_description=URDF).items()]))
    jtc = ros.add(FakeJointTrajectoryController(ros.context, JOINTS))
    robot = Robot(ros)
    change = robot.node.create_client(ChangeState, "/vla_policy/change_state")

    def transition(tid):
        return _call(ros, change, ChangeState.Request(transition=Transition(id=tid)), f"transition {tid}").success

    assert node.policies == {} and node.worker is None  # nothing loaded before configure
    assert transition(Transition.TRANSITION_CONFIGURE)
    assert set(node.policies) == {"regression"} and not node.active
    robot.step()
    time.sleep(0.5)
    assert robot.chunks == []  # inactive: no inference
    assert transition(Transition.TRANSITION_ACTIVATE)
    robot.run_until(ros, lambda: len(robot.chunks) >= 2, "chunks once active")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: len(jtc.accepted) >= 2, "trajectories")
    n = len(jtc.accepted)
    assert transition(Transition.TRANSITION_DEACTIVATE)
    ros.wait_for(lambda: len(jtc.accepted) > n, what="the hold on deactivate")
    assert len(jtc.accepted[-1].points) == 1 and node.params.dry_run and not node.active
    assert transition(Transition.TRANSITION_CLEANUP)
    assert node.policies == {} and node.inputs is None


def test_switch_mid_chunk_resets_the_executor_and_features(ros, checkpoints):
    limits = {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0], "max_speed": 5.0}
    node = start_policy_node(ros, {**_params(checkpoints["regression"]), "diffusion_checkpoint": checkpoints["diffusion"],
                                   "command_interface": "servo_twist", "pose_topic": "ee_pose", "async_inference": True,
                                   "chunk_execution": "ensemble", **limits})
    servo = ros.add(FakeServo(ros.context))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 2, "chunks")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: node.command_executor.counts["chunks"] >= 2 and servo.accepted, "streamed twists")
    resets = node.command_executor.counts.get("resets", 0)
    setter = robot.node.create_client(SetParameters, "/vla_policy/set_parameters")
    n = len(robot.chunks)
    assert _call(ros, setter, SetParameters.Request(parameters=[Parameter("policy_type", value="diffusion")
                                                                .to_parameter_msg()]), "switch").results[0].successful
    assert node.command_executor.counts["resets"] > resets  # nothing of the old expert's chunks is ensembled
    assert node.worker.assemble_async_observation() is None or node.worker._features.policy_type == "diffusion"
    robot.run_until(ros, lambda: any(c.policy_type == "diffusion" for c in robot.chunks[n:]), "a diffusion chunk")
    first = next(i for i, c in enumerate(robot.chunks) if i >= n and c.policy_type == "diffusion")
    assert all(c.policy_type == "diffusion" for c in robot.chunks[first:])  # no regression features after it
    assert node.stats["holds"] >= 1


def test_clock_jump_back_resets_the_stamp_guard(ros, checkpoint):
    node = start_policy_node(ros, _params(checkpoint, command_interface="none", use_sim_time=True, input_timeout_s=0.0))
    robot = Robot(ros)
    robot.wall_clock, robot.t = False, 1000.0
    clock = robot.node.create_publisher(Clock, "/clock", 10)
    ros.wait_for(lambda: clock.get_subscription_count() > 0, what="/clock subscriber")

    def tick():
        clock.publish(Clock(clock=stamp(robot.t)))

    robot.run_until(ros, lambda: (tick(), len(robot.chunks) >= 2)[1], "chunks at t=1000")
    # hold the next inference inside the policy while the clock jumps: its chunk, computed from an
    # observation of before the jump, must not go out after it
    policy = node.policies["regression"]
    entered, release = threading.Event(), threading.Event()
    predict = policy.predict_action_chunk

    def gated(*args, **kwargs):
        entered.set()
        release.wait(10.0)
        return predict(*args, **kwargs)

    policy.predict_action_chunk = gated
    robot.run_until(ros, lambda: (tick(), entered.is_set())[1], "an inference in flight at t=1000")
    robot.t = 10.0  # a bag loop / simulator reset: the clock and every stamp go back
    robot.run_until(ros, lambda: (tick(), node.inputs.stamp_guard.resets >= 1)[1], "the node to see the jump")
    n = len(robot.chunks)
    policy.predict_action_chunk = predict
    release.set()
    robot.run_until(ros, lambda: (tick(), len(robot.chunks) > n + 1)[1], "chunks after the jump back")
    assert node.stats["discarded_after_reset"] == 1
    assert all(chunk.header.stamp.sec < 100 for chunk in robot.chunks[n:]), [c.header.stamp.sec for c in robot.chunks[n:]]
