"""MoveIt Servo set up and read by policy_node, against the Servo stand-in (test/servo_standin.py). Run by
test_servo_setup.py: the Jazzy case in a process that imports the stand-in moveit_msgs (pause_servo,
switch_command_type, ServoStatus), the Humble case (start_servo / stop_servo, std_msgs/Int8 status) in the test
process itself, where moveit_msgs is not importable (the node's fallback)."""

import time

import pytest

from conftest import make_policy  # noqa: F401 - the fixtures below come from conftest
from ros_helpers import start_policy_node
from servo_standin import ServoStandIn
from test_robot_deployment import Robot, _enable, _params, checkpoint  # noqa: F401

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402

LIMITS = {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0], "max_speed": 5.0}


def servo_scenario(ros, checkpoint, humble: bool):  # noqa: F811
    """Set up on activate, moved by the armed node, a halting status holds (no motion after Servo's command
    timeout) until it clears, paused / stopped on deactivate."""
    servo = ros.add(ServoStandIn(ros.context, humble=humble))
    node = start_policy_node(ros, _params(checkpoint, command_interface="servo_twist", pose_topic="ee_pose",
                                          translation_scale=0.01, servo_node="/servo_node", **LIMITS))
    robot = Robot(ros)
    diagnostics = []
    robot.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.append(m.status[0]), 100)
    setup = ["started"] if humble else ["command type 1", "unpaused"]
    robot.run_until(ros, lambda: servo.events == setup and len(robot.chunks) >= 1, f"Servo {setup} on activate")
    assert servo.ignored == 0  # nothing was sent to a paused Servo
    assert _enable(ros, robot).success
    armed = time.monotonic()
    robot.run_until(ros, lambda: servo.moving_since(armed), "the armed node moving Servo's arm")

    def halting():
        servo.publish_status(4, "" if humble else "collision with the table")
        return node.holding.startswith("MoveIt Servo halted: halt for collision")

    robot.run_until(ros, halting, "a hold on Servo's halting status")
    held = time.monotonic()
    robot.run_until(ros, lambda: (servo.publish_status(4), time.monotonic() > held + 0.6)[1], "0.6 s halted")
    still = [v for t, v in servo.velocity_log if t > held + servo.command_timeout_s + 0.05]
    assert still and not any(v.any() for v in still), "Servo moved while it reported a halt"
    ros.wait_for(lambda: any("halt for collision" in s.message and s.level == DiagnosticStatus.ERROR
                             for s in diagnostics), 5, "the halt in /diagnostics")
    assert any(kv.key == "servo_status" and kv.value.startswith("4") for kv in diagnostics[-1].values)
    cleared = time.monotonic()
    robot.run_until(ros, lambda: (servo.publish_status(0), node.holding == "" and servo.moving_since(cleared))[1],
                    "commands again once the status is no longer halting")
    node.trigger_deactivate()
    ros.wait_for(lambda: servo.events[-1] == ("stopped" if humble else "paused"), what="Servo paused on deactivate")
    return servo, node


def test_servo_on_jazzy_is_switched_paused_and_read(ros, checkpoint):  # noqa: F811
    servo, node = servo_scenario(ros, checkpoint, humble=False)
    assert "command type twist" in node.servo_setup.state or servo.events[:2] == ["command type 1", "unpaused"]


def test_joint_jog_for_joint_space_servo(ros, checkpoint):  # noqa: F811
    """servo_joint_jog: Servo switched to JOINT_JOG; control_msgs/JointJog by joint name, velocities within the
    URDF limits; a zero-velocity hold on disarm."""
    from test_robot_deployment import JOINTS, URDF

    servo = ros.add(ServoStandIn(ros.context))
    node = start_policy_node(ros, _params(checkpoint, command_interface="servo_joint_jog", action_roles=JOINTS,
                                          robot_description=URDF.replace("velocity='500'", "velocity='0.5'")))
    robot = Robot(ros)
    robot.run_until(ros, lambda: servo.events == ["command type 0", "unpaused"] and len(robot.chunks) >= 1,
                    "Servo switched to joint jog and unpaused")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: any(any(v != 0 for v in m.velocities) for m in servo.joint_jogs), "joint jogs")
    jog = next(m for m in servo.joint_jogs if any(v != 0 for v in m.velocities))
    assert list(jog.joint_names) == JOINTS and jog.duration == pytest.approx(node.dt) and servo.ignored == 0
    assert max(abs(v) for m in servo.joint_jogs for v in m.velocities) <= 0.5 + 1e-9  # the URDF limit
    assert _enable(ros, robot, on=False).success
    ros.wait_for(lambda: not any(servo.joint_jogs[-1].velocities), what="a zero-velocity hold")
