"""FollowJointTrajectory (control_msgs) goals for the joint_trajectory interface, with cancel on hold.

A JointTrajectoryController also serves `~/follow_joint_trajectory`; through the action the node
learns whether a trajectory was accepted, and a hold cancels the running goal (the controller then
holds its current position). control_msgs is imported when this is configured: a robot PC has it
from apt; where it is missing, configure fails and says so.
"""

from __future__ import annotations

import threading

from rclpy.action import ActionClient


class TrajectoryAction:
    """Goals to the controller's FollowJointTrajectory server, and what it answers.

    A rejected goal, or one the controller aborts (e.g. a path tolerance violated: the needle meets
    tissue), is told to `on_failure(reason)` (the node holds and disarms). A goal replaced by the next
    one is ended by the controller itself (preemption: "Current goal cancelled due to new incoming
    action.", whatever status it reports), which is no fault. `cancel`
    cancels every goal still running *and* every goal sent but not yet answered, so none survives a hold.
    """

    def __init__(self, node, action_name: str, on_failure=None) -> None:
        try:
            from control_msgs.action import FollowJointTrajectory
        except ImportError:
            raise ValueError(f"parameter joint_trajectory_action {action_name!r}: control_msgs is not importable "
                             "(install ros-<distro>-control-msgs, or leave it '' to use the controller's topic)") from None
        self.goal_type = FollowJointTrajectory.Goal
        self.client = ActionClient(node, FollowJointTrajectory, action_name)
        self.on_failure = on_failure or (lambda reason: None)
        self.counts = {"goals": 0, "accepted": 0, "rejected": 0, "aborted": 0, "cancelled": 0}
        self._handles: list = []  # accepted goals not finished yet
        self._generation = 0  # bumped by cancel(): a goal sent before it is cancelled when it is accepted
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Whether the controller's action server is there (arming requires it)."""
        return self.client.server_is_ready()

    def send(self, trajectory) -> None:
        """Send a JointTrajectory as a goal (the controller replaces the running one)."""
        with self._lock:
            self.counts["goals"] += 1
            generation = self._generation
        future = self.client.send_goal_async(self.goal_type(trajectory=trajectory))
        future.add_done_callback(lambda f: self._on_response(f, generation))

    def _on_response(self, future, generation: int) -> None:
        handle = future.result()
        with self._lock:
            if handle is None or not handle.accepted:
                self.counts["rejected"] += 1
                failure = "the controller rejected the trajectory goal"
            else:
                self.counts["accepted"] += 1
                failure = ""
                late = generation != self._generation  # a hold came while this goal waited for acceptance
                if late:
                    self.counts["cancelled"] += 1
                else:
                    self._handles.append(handle)
        if failure:
            return self.on_failure(failure)
        if late:
            handle.cancel_goal_async()
            return
        handle.get_result_async().add_done_callback(lambda f: self._on_result(f, handle))

    def _on_result(self, future, handle) -> None:
        from action_msgs.msg import GoalStatus

        with self._lock:
            if handle in self._handles:
                self._handles.remove(handle)
        response = future.result()
        preempted = response is not None and response.result.error_string.startswith("Current goal cancelled")
        if response is not None and response.status == GoalStatus.STATUS_ABORTED and not preempted:
            with self._lock:
                self.counts["aborted"] += 1
            result = response.result
            self.on_failure(f"the controller aborted the trajectory (error_code {result.error_code}: "
                            f"{result.error_string or 'no reason given'})")

    def cancel(self) -> bool:
        """Cancel every goal running or awaiting acceptance: the controller holds where it is."""
        with self._lock:
            self._generation += 1
            handles, self._handles = self._handles, []
            self.counts["cancelled"] += len(handles)
        for handle in handles:
            handle.cancel_goal_async()
        return bool(handles)

    def destroy(self) -> None:
        self.client.destroy()
