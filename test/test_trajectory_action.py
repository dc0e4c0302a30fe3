"""The FollowJointTrajectory client against an action server, with a stand-in control_msgs built by
rosidl (the real package is not installable here; the stand-in has the same names and fields)."""

from ros_helpers import run_with_standins, standins_prefix


def test_follow_joint_trajectory_goals_cancel_abort_and_reject():
    """trajectory_action_interop.py: goals and cancel on a hold; an aborted goal (path tolerance) disarms and
    holds while preempted ones do not; a rejected goal disarms and holds."""
    run = run_with_standins(standins_prefix(), "trajectory_action_interop.py")
    assert run.returncode == 0 and "3 passed" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
