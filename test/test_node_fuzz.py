"""Fuzz: >= 1000 randomly malformed messages on every input of a running policy node. The node must
stay alive, count the drops, serve correct chunks again on good input, and never publish a command
outside its limits."""

import time

import numpy as np
import pytest
from conftest import make_policy
from ros_helpers import RosHarness, publish_inputs, stamp, start_policy_node

from geometry_msgs.msg import PoseStamped, WrenchStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from vla_policy_ros.msg import ActionChunk  # noqa: E402

WS_MIN, WS_MAX, MAX_SPEED, MAX_DELTA = np.array([0.3, -0.2, 0.0]), np.array([0.7, 0.2, 0.5]), 0.05, 0.3
FUZZ_MESSAGES = 1200


def _bad_image(rng, t):
    kind = rng.integers(7)
    msg = Image(height=8, width=8, encoding="rgb8", step=24, data=bytes(192))
    msg.header.stamp = stamp(t)
    if kind == 0:
        msg.encoding = rng.choice(["yuv422", "bayer_rggb8", "", "32FC1", "weird"])
    elif kind == 1:
        msg.step = int(rng.integers(0, 23))
    elif kind == 2:
        msg.data = b""
    elif kind == 3:
        msg.data = bytes(int(rng.integers(1, 191)))
    elif kind == 4:
        msg.height, msg.width = 100000, 100000
    elif kind == 5:
        msg.header.stamp = stamp(0)
    else:
        msg.header.stamp = stamp(4e9)  # far future
    return msg, f"image{kind}"


def _bad_wrench(rng, t):
    msg = WrenchStamped()
    kind = rng.integers(4)
    msg.header.stamp = stamp(t if kind != 2 else 0)
    msg.wrench.force.x = [float("nan"), float("inf"), 1.0, -float("inf")][kind]
    if kind == 3:
        msg.header.stamp = stamp(4e9)
    return msg, f"wrench{kind}"


def _bad_state(rng, t):
    kind = rng.integers(3)
    n = [int(rng.integers(0, 7)), 8, 30][kind]
    position = rng.normal(size=n).tolist()
    if kind == 1:
        position[int(rng.integers(8))] = float("nan")
    msg = JointState(name=[f"j{i}" for i in range(n)], position=position)
    msg.header.stamp = stamp(t)
    return msg, f"state{kind}"


def _bad_pose(rng, t):
    msg = PoseStamped()
    msg.header.stamp = stamp(t)
    if rng.integers(2):
        msg.pose.position.x = float("nan")
    else:
        msg.pose.orientation.w = 0.0  # zero quaternion
    return msg, "pose"


@pytest.fixture
def ros():
    harness = RosHarness()
    yield harness
    harness.close()


def test_fuzz_node_survives_and_respects_limits(ros, tmp_path):
    ckpt = str(make_policy("tiny", "regression").save(tmp_path / "regression"))
    params = {"regression_checkpoint": ckpt, "rate_hz": 50.0, "slop_s": 0.02, "dry_run": False, "sensor_topic": "sensor",
              "command_interface": "pose_target", "max_command_age_s": 10.0,
              "pose_topic": "ee_pose", "max_delta": [MAX_DELTA] * 4, "workspace_min": WS_MIN.tolist(),
              "workspace_max": WS_MAX.tolist(), "max_speed": MAX_SPEED, "limit_mode": "clip",
              "translation_scale": 0.01, "input_timeout_s": 5.0}
    node = start_policy_node(ros, params)
    client = ros.add(__import__("rclpy").node.Node("fuzzer", context=ros.context))
    pubs = {v: client.create_publisher(Image, f"camera/{v}/image_raw", 1000) for v in ("front", "wrist")}
    pubs["sensor"] = client.create_publisher(WrenchStamped, "sensor", 1000)
    pubs["state"] = client.create_publisher(JointState, "joint_states", 1000)
    pose_pub = client.create_publisher(PoseStamped, "ee_pose", 1000)
    text_pub = client.create_publisher(String, "instruction", 1000)
    chunks, commands = [], []
    client.create_subscription(ActionChunk, "/vla_policy/action_chunk", chunks.append, 100)
    client.create_subscription(PoseStamped, "/target_frame", commands.append, 1000)
    ros.wait_for(lambda: all(p.get_subscription_count() for p in [*pubs.values(), pose_pub, text_pub]), what="discovery")
    from std_srvs.srv import SetBool

    enable = client.create_client(SetBool, "/vla_policy/enable")  # dry_run false does not arm: ~/enable does
    assert enable.wait_for_service(timeout_sec=10.0)
    answer = enable.call_async(SetBool.Request(data=True))
    ros.wait_for(answer.done, what="~/enable")
    assert answer.result().success, answer.result().message
    pose = PoseStamped()
    pose.pose.position.x, pose.pose.orientation.w = 0.5, 1.0
    rng = np.random.default_rng(0)
    t = 1000.0

    def good_until(predicate):
        def step():
            nonlocal t
            t += 0.05
            pose.header.stamp = stamp(t)
            pose_pub.publish(pose)
            publish_inputs(pubs, t, ["front", "wrist"], 8, rng)
            return predicate()

        ros.wait_for(step, what="chunks and commands on good input")

    good_until(lambda: len(commands) >= 2)
    kinds: dict[str, int] = {}
    makers = [("front", _bad_image), ("wrist", _bad_image), ("sensor", _bad_wrench), ("state", _bad_state),
              ("pose", _bad_pose)]
    for i in range(FUZZ_MESSAGES):
        t += 0.001
        target, make = makers[i % len(makers)]
        msg, kind = make(rng, t)
        (pose_pub if target == "pose" else pubs[target]).publish(msg)
        kinds[kind] = kinds.get(kind, 0) + 1
        if i % 97 == 0:
            text_pub.publish(String(data="x" * int(rng.integers(0, 100000))))
        time.sleep(0.003)  # camera and sensor topics are best effort (sensor QoS, depth 5): do not flood them
    drops = lambda: sum(v for k, v in node.stats.items() if k.startswith("dropped_"))  # noqa: E731
    history = []

    def settled():
        history.append(drops())
        time.sleep(0.2)
        return len(history) > 5 and history[-1] == history[-5]

    ros.wait_for(settled, timeout=60, what="the node to work through the fuzz messages")
    assert drops() >= 0.6 * FUZZ_MESSAGES  # best-effort transport may lose some before they reach the node
    assert node.worker.running and ros.context.ok()
    n_chunks, n_commands = len(chunks), len(commands)
    t += 10.0
    good_until(lambda: len(chunks) > n_chunks + 2 and len(commands) > n_commands + 2)
    last = chunks[-1]
    assert (last.horizon, last.action_dim) == (8, 4) and np.isfinite(np.asarray(last.actions)).all()
    horizon = chunks[-1].horizon
    for cmd in commands:  # every target ever published is finite, in the workspace, within reach of the speed limit
        p = cmd.pose.position
        point = np.array([p.x, p.y, p.z])
        assert np.isfinite(point).all()
        assert np.all(point >= WS_MIN - 1e-9) and np.all(point <= WS_MAX + 1e-9)
        assert np.linalg.norm(point - [0.5, 0.0, 0.0]) <= MAX_SPEED * 0.1 * horizon + 1e-9
    print(f"fuzz: {FUZZ_MESSAGES} malformed messages of {len(kinds)} kinds {sorted(kinds)}; dropped {drops()}; "
          f"stats {dict(node.stats)}")
