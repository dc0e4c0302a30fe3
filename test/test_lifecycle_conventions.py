"""Lifecycle conventions of policy_node: the Humble code path (no post-set parameter callback, no lifecycle
callback group) runs; a transition that raises ends in on_error: hold, disarm, clean up; lifecycle publishers."""

import pytest
import rclpy.node
from fake_controllers import FakeJointTrajectoryController
from rclpy.lifecycle import LifecycleNodeMixin
from rclpy.parameter import Parameter
from ros_helpers import start_policy_node
from test_robot_deployment import JOINTS, URDF, Robot, _call, _enable, _params, checkpoint  # noqa: F401

from rcl_interfaces.srv import SetParameters  # noqa: E402


def _armed(ros, checkpoint):  # noqa: F811
    node = start_policy_node(ros, _params(checkpoint, command_interface="joint_trajectory", action_roles=JOINTS,
                                          robot_description=URDF))
    jtc = ros.add(FakeJointTrajectoryController(ros.context, JOINTS))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: any(len(m.points) > 1 for m in jtc.accepted), "trajectories")
    return node, jtc, robot


@pytest.fixture
def humble(monkeypatch):
    """rclpy as on Humble: no add_post_set_parameters_callback, no callback_group for the lifecycle services."""
    monkeypatch.delattr(rclpy.node.Node, "add_post_set_parameters_callback")
    init = LifecycleNodeMixin.__init__

    def humble_init(self, *, enable_communication_interface=True):
        init(self, enable_communication_interface=enable_communication_interface)

    monkeypatch.setattr(LifecycleNodeMixin, "__init__", humble_init)


def test_the_humble_code_path_applies_parameters_and_arms(ros, checkpoint, humble):  # noqa: F811
    node, jtc, robot = _armed(ros, checkpoint)
    assert node.apply_on_validation and not node.params.dry_run  # armed through ~/enable on the Humble path
    setter = robot.node.create_client(SetParameters, "/vla_policy/set_parameters")

    def set_param(name, value):
        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        return _call(ros, setter, request, f"set {name}").results[0]

    assert set_param("instruction", "pick the red cube").successful
    assert node.instruction == "pick the red cube" and node.params.instruction == "pick the red cube"
    refused = set_param("dry_run", False)
    assert not refused.successful and "~/enable" in refused.reason
    holds = sum(len(m.points) == 1 for m in jtc.accepted)
    assert set_param("dry_run", True).successful
    assert node.params.dry_run and node.holding == "disarmed: dry_run set"
    robot.run_until(ros, lambda: sum(len(m.points) == 1 for m in jtc.accepted) > holds, "the hold on the disarm")


def test_a_transition_that_raises_holds_disarms_and_cleans_up(ros, checkpoint):  # noqa: F811
    node, jtc, robot = _armed(ros, checkpoint)
    assert type(node.command_pub).__name__ == "LifecyclePublisher"  # publishes only while active

    stop = node.worker.stop

    def broken_stop():
        node.worker.stop = stop  # once: the worker is stopped after all at the end
        stop()
        raise RuntimeError("the worker thread is stuck")

    node.worker.stop = broken_stop
    holds = sum(len(m.points) == 1 for m in jtc.accepted)
    node.trigger_deactivate()  # raises inside on_deactivate: rclpy runs on_error
    ros.wait_for(lambda: sum(len(m.points) == 1 for m in jtc.accepted) > holds, what="the hold")
    assert node.params.dry_run and not node.active and node.inputs is None and node.policies == {}
    assert node._state_machine.current_state[1] == "unconfigured"
