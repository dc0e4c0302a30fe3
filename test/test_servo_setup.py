"""MoveIt Servo's switches and status (vla_policy_ros/servo_setup.py) against a Servo stand-in that integrates
twists with its command timeout: Humble's services here (moveit_msgs is not importable: the fallback), Jazzy's
in a process with the stand-in moveit_msgs (servo_interop.py)."""

from conftest import make_policy  # noqa: F401
from ros_helpers import run_with_standins, standins_prefix
from servo_interop import servo_scenario
from test_robot_deployment import checkpoint  # noqa: F401


def test_servo_on_humble_is_started_read_and_stopped(ros, checkpoint):  # noqa: F811
    servo, node = servo_scenario(ros, checkpoint, humble=True)
    assert node.servo_setup.state.startswith("stopped")


def test_servo_on_jazzy():
    run = run_with_standins(standins_prefix(), "servo_interop.py")
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-5000:] + run.stderr[-2000:]
