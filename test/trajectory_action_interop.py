"""Run by test_trajectory_action.py in a process that can import the stand-in control_msgs: policy_node
sends its joint trajectories as FollowJointTrajectory goals and cancels the running goal on a hold."""

import time

from conftest import make_policy  # noqa: F401 - the fixtures below come from conftest
from control_msgs.action import FollowJointTrajectory
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.task import Future
from ros_helpers import start_policy_node
from test_robot_deployment import JOINTS, URDF, Robot, _enable, _params, checkpoint  # noqa: F401


class FakeTrajectoryActionServer(Node):
    """The JTC's follow_joint_trajectory: accepts goals naming its joints, runs each until cancelled; a new goal
    preempts the running one, as ros2_controllers does (INVALID_GOAL, "Current goal cancelled due to new
    incoming action."); `abort_goal` N aborts the Nth goal with PATH_TOLERANCE_VIOLATED (the needle meets
    tissue); `reject_from` N rejects goals from the Nth on."""

    def __init__(self, context, abort_goal: int = 0, reject_from: int = 0):
        super().__init__("fake_jtc_action", context=context)
        self.goals, self.cancelled, self.cancelled_at = [], [], []
        self.abort_goal, self.reject_from, self.received = abort_goal, reject_from, 0
        self.server = ActionServer(self, FollowJointTrajectory, "/joint_trajectory_controller/follow_joint_trajectory",
                                   self._execute, goal_callback=self._goal, cancel_callback=self._cancel,
                                   callback_group=ReentrantCallbackGroup())

    def _goal(self, goal):
        self.received += 1
        ok = sorted(goal.trajectory.joint_names) == sorted(JOINTS) and not (
            self.reject_from and self.received >= self.reject_from)
        return GoalResponse.ACCEPT if ok else GoalResponse.REJECT

    def _cancel(self, handle):
        self.cancelled.append(handle)
        self.cancelled_at.append(time.monotonic())
        return CancelResponse.ACCEPT

    def _sleep(self, seconds: float) -> Future:
        """A future done after `seconds` (awaited: the executor thread is free meanwhile)."""
        done = Future()

        def fire():
            timer.cancel()
            self.destroy_timer(timer)
            done.set_result(True)

        timer = self.create_timer(seconds, fire)
        return done

    async def _execute(self, handle):
        self.goals.append(handle.request.trajectory)
        number = len(self.goals)
        deadline = time.monotonic() + 60.0  # runs until cancelled (a trajectory longer than the test)
        while time.monotonic() < deadline and not handle.is_cancel_requested and handle.is_active:
            if number == self.abort_goal:
                await self._sleep(0.05)
                handle.abort()
                return FollowJointTrajectory.Result(error_code=FollowJointTrajectory.Result.PATH_TOLERANCE_VIOLATED,
                                                    error_string="path tolerance violated: joint j1")
            if len(self.goals) > number:  # preempted by a newer goal
                handle.abort()
                return FollowJointTrajectory.Result(error_code=FollowJointTrajectory.Result.INVALID_GOAL,
                                                    error_string="Current goal cancelled due to new incoming action.")
            await self._sleep(0.02)
        if handle.is_cancel_requested:
            handle.canceled()
        elif handle.is_active:
            handle.succeed()
        return FollowJointTrajectory.Result()


def test_goals_and_cancel_on_hold(ros, checkpoint):  # noqa: F811
    server = ros.add(FakeTrajectoryActionServer(ros.context))
    node = start_policy_node(ros, _params(checkpoint, command_interface="joint_trajectory", action_roles=JOINTS,
                                          robot_description=URDF,
                                          joint_trajectory_action="/joint_trajectory_controller/follow_joint_trajectory"))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    robot.run_until(ros, lambda: node.trajectory_action.counts["accepted"] >= 2, "accepted goals")
    assert list(server.goals[-1].joint_names) == JOINTS and node.trajectory_action.counts["rejected"] == 0
    assert _enable(ros, robot, on=False).success  # disarm (or the inputs going stale meanwhile): a hold
    ros.wait_for(lambda: len(server.cancelled) >= 1, what="the goal cancelled on the hold")
    assert node.trajectory_action.counts["cancelled"] >= 1 and node.holding.startswith("disarmed")


def _run_armed(ros, checkpoint, server):  # noqa: F811
    node = start_policy_node(ros, _params(checkpoint, command_interface="joint_trajectory", action_roles=JOINTS,
                                          robot_description=URDF,
                                          joint_trajectory_action="/joint_trajectory_controller/follow_joint_trajectory"))
    robot = Robot(ros)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    return node, robot


def test_an_aborted_goal_disarms_and_holds_a_preempted_one_does_not(ros, checkpoint):  # noqa: F811
    server = ros.add(FakeTrajectoryActionServer(ros.context, abort_goal=4))
    node, robot = _run_armed(ros, checkpoint, server)
    robot.run_until(ros, lambda: node.trajectory_action.counts["aborted"] >= 1, "the 4th goal aborted")
    robot.run_until(ros, lambda: node.params.dry_run and "aborted" in node.holding, "disarmed and held on the abort")
    assert "aborted" in node.holding and "error_code -4: path tolerance violated" in node.holding
    assert node.trajectory_action.counts["accepted"] >= 4  # goals 1-3 were preempted, not failures
    goals = len(server.goals)
    robot.run_until(ros, lambda: len(robot.chunks) >= 8, "chunks after the abort")
    assert len(server.goals) == goals  # disarmed: no goal follows until ~/enable


def test_a_rejected_goal_disarms_and_holds(ros, checkpoint):  # noqa: F811
    server = ros.add(FakeTrajectoryActionServer(ros.context, reject_from=2))
    node, robot = _run_armed(ros, checkpoint, server)
    robot.run_until(ros, lambda: node.params.dry_run and "rejected" in node.holding, "disarmed and held on the rejection")
    assert node.trajectory_action.counts["rejected"] >= 1 and "rejected" in node.holding
