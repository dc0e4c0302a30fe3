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
    def __init__(self, node, action_name: str) -> None:
        try:
            from control_msgs.action import FollowJointTrajectory
        except ImportError:
            raise ValueError(f"parameter joint_trajectory_action {action_name!r}: control_msgs is not importable "
                             "(install ros-<distro>-control-msgs, or leave it '' to use the controller's topic)") from None
        self.goal_type = FollowJointTrajectory.Goal
        self.client = ActionClient(node, FollowJointTrajectory, action_name)
        self.counts = {"goals": 0, "accepted": 0, "rejected": 0, "cancelled": 0}
        self._handle = None
        self._lock = threading.Lock()

    def send(self, trajectory) -> None:
        """Send a JointTrajectory as a goal (the controller replaces the running one)."""
        self.counts["goals"] += 1
        self.client.send_goal_async(self.goal_type(trajectory=trajectory)).add_done_callback(self._on_response)

    def _on_response(self, future) -> None:
        handle = future.result()
        with self._lock:
            if handle is None or not handle.accepted:
                self.counts["rejected"] += 1
                return
            self.counts["accepted"] += 1
            self._handle = handle

    def cancel(self) -> bool:
        """Cancel the running goal, if any: the controller holds where it is."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is None:
            return False
        handle.cancel_goal_async()
        self.counts["cancelled"] += 1
        return True

    def destroy(self) -> None:
        self.client.destroy()
