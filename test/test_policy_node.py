"""policy_node with real rclpy: chunks on synthetic input, live switching, rejection, subprocess run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter
from ros_helpers import next_domain_id, publish_inputs, start_policy_node

from geometry_msgs.msg import WrenchStamped  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from geometry_msgs.msg import TwistStamped  # noqa: E402
from vla_policy_ros.msg import ActionChunk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _start(ros, checkpoints, **overrides):
    params = {"regression_checkpoint": checkpoints["regression"], "diffusion_checkpoint": checkpoints["diffusion"],
              "flow_checkpoint": checkpoints["flow"], "sensor_topic": "sensor",
              "rate_hz": 20.0, "instruction": "insert the needle", "slop_s": 0.02, **overrides}
    node = start_policy_node(ros, params)
    client = ros.add(rclpy_node(ros, "test_client"))
    pubs = {v: client.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in ("front", "wrist")}
    pubs["sensor"] = client.create_publisher(WrenchStamped, "sensor", 10)
    pubs["state"] = client.create_publisher(JointState, "joint_states", 10)
    chunks = []
    client.create_subscription(ActionChunk, "/vla_policy/action_chunk", chunks.append, 10)
    ros.wait_for(lambda: all(p.get_subscription_count() for p in pubs.values())
                 and node.chunk_pub.get_subscription_count(), what="discovery")
    return node, client, pubs, chunks


def rclpy_node(ros, name):
    from rclpy.node import Node

    return Node(name, context=ros.context)


def _feed_until(ros, pubs, chunks, count, t0=1000.0, predicate=None):
    rng = np.random.default_rng(0)
    t = t0
    predicate = predicate or (lambda: len(chunks) >= count)

    def step():
        nonlocal t
        t += 0.05
        publish_inputs(pubs, t, ["front", "wrist"], 8, rng)
        return predicate()

    ros.wait_for(step, what=f"{count} action chunks")
    return t


def test_chunk_has_shape_stamp_and_policy_type(ros, checkpoints):
    node, client, pubs, chunks = _start(ros, checkpoints)
    _feed_until(ros, pubs, chunks, 2)
    msg = chunks[-1]
    assert msg.policy_type == "regression" and msg.sampler == "" and msg.num_steps == 0
    assert (msg.horizon, msg.action_dim) == (8, 4) and len(msg.actions) == 32
    assert np.isfinite(np.asarray(msg.actions)).all() and msg.latency_ms > 0
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    assert 1000.0 < stamp < 1100.0  # the observation's stamp, not the wall clock
    assert "backbone_ms" in msg.stage_names and len(msg.stage_names) == len(msg.stage_latency_ms)


def test_live_switch_and_rejected_values(ros, checkpoints):
    node, client, pubs, chunks = _start(ros, checkpoints)
    _feed_until(ros, pubs, chunks, 1)
    setter = client.create_client(SetParameters, "/vla_policy/set_parameters")
    assert setter.wait_for_service(timeout_sec=10.0)

    def set_param(name, value):
        future = setter.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
        ros.wait_for(future.done, what=f"set {name}")
        return future.result().results[0]

    result = set_param("policy_type", "diffusion")
    assert result.successful
    n = len(chunks)
    _feed_until(ros, pubs, chunks, 0, t0=2000.0, predicate=lambda: len(chunks) > n and chunks[-1].policy_type == "diffusion")
    assert chunks[-1].sampler == "ddim" and chunks[-1].num_steps == 10
    assert set_param("ddim_steps", 5).successful
    n = len(chunks)
    _feed_until(ros, pubs, chunks, 0, t0=3000.0, predicate=lambda: len(chunks) > n and chunks[-1].num_steps == 5)

    assert set_param("sampler", "ddpm").successful
    n = len(chunks)
    _feed_until(ros, pubs, chunks, 0, t0=4000.0, predicate=lambda: len(chunks) > n and chunks[-1].sampler == "ddpm")
    assert chunks[-1].num_steps == 100  # DDPM visits every training timestep, whatever ddim_steps says

    # the experts decide what the shared sampler/steps parameters mean: flow has no 'ddpm' -> switch refused
    bad = set_param("policy_type", "flow")
    assert not bad.successful and "flow" in bad.reason and "'ddpm'" in bad.reason and "euler" in bad.reason
    assert set_param("sampler", "").successful  # '' = each expert's own sampler
    assert set_param("policy_type", "flow").successful
    n = len(chunks)
    _feed_until(ros, pubs, chunks, 0, t0=5000.0, predicate=lambda: len(chunks) > n and chunks[-1].policy_type == "flow")
    assert chunks[-1].sampler == "euler" and chunks[-1].num_steps == 5  # K = the live ddim_steps
    bad = set_param("sampler", "ddim")
    assert not bad.successful and "flow" in bad.reason
    assert set_param("policy_type", "regression").successful  # and back: all three live
    n = len(chunks)
    _feed_until(ros, pubs, chunks, 0, t0=6000.0,
                predicate=lambda: len(chunks) > n and chunks[-1].policy_type == "regression")
    assert chunks[-1].sampler == "" and chunks[-1].num_steps == 0
    assert set_param("policy_type", "diffusion").successful

    bad = set_param("policy_type", "vae")
    assert not bad.successful and "regression" in bad.reason and "'vae'" in bad.reason
    bad = set_param("ddim_steps", 0)
    assert not bad.successful and "ddim_steps" in bad.reason
    assert not set_param("sensor_topic", "other").successful  # read-only at runtime
    assert node.get_parameter("policy_type").value == "diffusion"
    n = len(chunks)
    _feed_until(ros, pubs, chunks, 0, t0=7000.0, predicate=lambda: len(chunks) > n + 1)
    assert chunks[-1].policy_type == "diffusion"  # still serving, with its state kept


def test_dry_run_publishes_no_command(ros, checkpoints):
    node, client, pubs, chunks = _start(ros, checkpoints, pose_topic="ee_pose")
    commands = []
    client.create_subscription(TwistStamped, "/servo_node/delta_twist_cmds", commands.append, 10)
    _feed_until(ros, pubs, chunks, 3)
    assert node.params.dry_run and commands == []


def test_node_as_a_process_with_the_shipped_params_file(tmp_path, checkpoints):
    env = dict(os.environ, ROS_DOMAIN_ID=str(next_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONUNBUFFERED="1")
    exe = Path(sys.executable).parent / "policy_node"
    cmd = [str(exe), "--ros-args", "--params-file", str(ROOT / "config" / "policy.yaml"), "-p", "policy_type:=diffusion",
           "-p", f"regression_checkpoint:={checkpoints['regression']}", "-p",
           f"diffusion_checkpoint:={checkpoints['diffusion']}", "-p", f"flow_checkpoint:={checkpoints['flow']}", "-p",
           "rate_hz:=20.0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import rclpy

        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        client = Node("probe", context=ctx)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(client)
        chunks = []
        client.create_subscription(ActionChunk, "/vla_policy/action_chunk", chunks.append, 10)
        pubs = {v: client.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in ("front", "wrist")}
        pubs["sensor"] = client.create_publisher(WrenchStamped, "sensor/wrench", 10)
        pubs["state"] = client.create_publisher(JointState, "joint_states", 10)
        rng = np.random.default_rng(0)
        import time

        deadline, t = time.monotonic() + 60, 10.0
        while not chunks and time.monotonic() < deadline and proc.poll() is None:
            t += 0.05
            publish_inputs(pubs, t, ["front", "wrist"], 8, rng)
            executor.spin_once(timeout_sec=0.05)
        assert chunks, f"no chunk from the node process; output:\n{proc.stdout.read() if proc.poll() is not None else ''}"
        assert chunks[0].policy_type == "diffusion"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out
        client.destroy_node()
        rclpy.try_shutdown(context=ctx)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_param_client_switches_and_reports_rejections(ros, checkpoints):
    node, client, pubs, chunks = _start(ros, checkpoints)
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros.domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    exe = str(Path(sys.executable).parent / "policy_param")
    ok = subprocess.run([exe, "set", "policy_type", "diffusion"], env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "set policy_type: ok" in ok.stdout, ok.stdout + ok.stderr
    assert node.params.policy_type == "diffusion"
    bad = subprocess.run([exe, "set", "sampler", "euler"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "rejected: diffusion: sampler: the diffusion expert samples with one of ['ddim', " \
        "'ddpm'], got 'euler'" in bad.stdout
    got = subprocess.run([exe, "get", "sampler"], env=env, capture_output=True, text=True, timeout=60)
    assert got.stdout.strip() == "sampler:"  # unchanged: '' = the expert's own


def test_chunk_execution_switches_live_and_rtc_freezes_the_rows_that_execute(ros, checkpoints):
    """`chunk_execution` is live like policy_type: the executors follow it, and with rtc each chunk's first
    rtc_delay_steps rows are the previous chunk's rows at the same times (what executes during inference)."""
    node, client, pubs, chunks = _start(ros, checkpoints, policy_type="flow", stream_actions=True,
                                        control_period_s=0.05)  # the feed's 0.05 s: rows on the stamps' grid
    _feed_until(ros, pubs, chunks, 1)
    setter = client.create_client(SetParameters, "/vla_policy/set_parameters")
    assert setter.wait_for_service(timeout_sec=10.0)

    def set_params(**values):
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        future = setter.call_async(request)
        ros.wait_for(future.done, what=f"set {values}")
        return future.result().results[0]

    assert set_params(chunk_execution="ensemble").successful
    assert node.action_executor.mode == "temporal"
    assert set_params(policy_type="regression").successful
    bad = set_params(chunk_execution="rtc")
    assert not bad.successful and "regression" in bad.reason and "one pass" in bad.reason
    assert set_params(policy_type="flow").successful
    assert set_params(rtc_delay_steps=3).successful and set_params(chunk_execution="rtc").successful
    assert node.action_executor.mode == "receding"
    assert "chunk execution switched to rtc" in node.holding
    bad = set_params(policy_type="regression")  # rtc serves no one-pass expert
    assert not bad.successful and "chunk_execution" in bad.reason

    def rows(msg):
        return np.asarray(msg.actions).reshape(msg.horizon, msg.action_dim)

    n = len(chunks)
    _feed_in_real_time(ros, pubs, 2000.0, lambda: len(chunks) >= n + 5)
    pairs = 0
    for before, after in zip(chunks[n:], chunks[n + 1:]):
        offset = round((_stamp(after) - _stamp(before)) / 0.05)
        if offset + 3 <= before.horizon:
            np.testing.assert_array_equal(rows(after)[:3], rows(before)[offset:offset + 3])
            rest = rows(before)[offset + 3:]
            assert len(rest) == 0 or not np.array_equal(rows(after)[3:3 + len(rest)], rest)  # guided, not copied
            pairs += 1
    assert pairs >= 2

    assert set_params(chunk_execution="switch").successful
    n = len(chunks)
    _feed_in_real_time(ros, pubs, 3000.0, lambda: len(chunks) >= n + 4)
    later = chunks[n + 1:]
    assert any(not np.array_equal(rows(b)[:3], rows(a)[round((_stamp(b) - _stamp(a)) / 0.05):][:3])
               for a, b in zip(later, later[1:]))  # switch: nothing frozen


def test_rtc_serves_an_expert_trained_with_given_rows_up_to_its_prefix_max(ros, checkpoints, tmp_path):
    """An expert trained with expert.prefix_max takes the executed rows as input, so rtc serves it even when it
    predicts in one pass (regression), freezing rtc_delay_steps rows; more rows than it was trained with is
    refused at configure and live, naming the parameter and the limit (it would fail every chunk)."""
    from conftest import make_policy
    from vla_policy_ros.policy_node import PolicyNode

    prefixed = str(make_policy("tiny", "regression", **{"expert.prefix_max": 2}).save(tmp_path / "regression"))
    params = {"regression_checkpoint": prefixed, "policy_type": "regression", "chunk_execution": "rtc",
              "rtc_delay_steps": 3, "sensor_topic": "sensor", "instruction": "insert the needle"}
    refused = ros.add(PolicyNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    ros.wait_for(lambda: refused.active or refused.failed, timeout=60, what="the policy node to fail its configure")
    assert "rtc_delay_steps 3" in refused.failed and "expert.prefix_max=2" in refused.failed

    node, client, pubs, chunks = _start(ros, checkpoints, regression_checkpoint=prefixed, policy_type="regression",
                                        chunk_execution="rtc", rtc_delay_steps=2, stream_actions=True,
                                        control_period_s=0.05)
    setter = client.create_client(SetParameters, "/vla_policy/set_parameters")
    assert setter.wait_for_service(timeout_sec=10.0)
    future = setter.call_async(SetParameters.Request(parameters=[Parameter("rtc_delay_steps", value=3).to_parameter_msg()]))
    ros.wait_for(future.done, what="set rtc_delay_steps")
    bad = future.result().results[0]
    assert not bad.successful and "expert.prefix_max=2" in bad.reason and node.params.rtc_delay_steps == 2

    def rows(msg):
        return np.asarray(msg.actions).reshape(msg.horizon, msg.action_dim)

    _feed_in_real_time(ros, pubs, 4000.0, lambda: len(chunks) >= 5)
    pairs = 0
    for before, after in zip(chunks[1:], chunks[2:]):
        offset = round((_stamp(after) - _stamp(before)) / 0.05)
        if offset + 2 <= before.horizon:
            np.testing.assert_array_equal(rows(after)[:2], rows(before)[offset:offset + 2])  # given, as executed
            pairs += 1
    assert pairs >= 2


def _feed_in_real_time(ros, pubs, t0: float, predicate, period: float = 0.05, timeout: float = 30.0) -> None:
    """Inputs stamped t0, t0 + period, ... published every `period` seconds of wall time."""
    import time

    rng, t, deadline = np.random.default_rng(0), t0, time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out feeding inputs"
        t += period
        publish_inputs(pubs, t, ["front", "wrist"], 8, rng)
        time.sleep(period)


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
