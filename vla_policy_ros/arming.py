"""Arming, faults and holds of the policy node: when commands may reach the controller, and the explicit hold.

Arming goes through `~/enable` (std_srvs/SetBool) only: it refuses while the node is not active, while
limits are missing or the operator's heartbeat is absent; the node's own `dry_run` switch is the only
one that may turn it off (a parameter request from another process is refused in params validation).
A fault (stale or invalid input, lost heartbeat) forbids commanding; `_hold` publishes the command
interface's explicit hold (or cancels the FollowJointTrajectory goal) once per reason and says why.

A mixin of PolicyNode: it uses the node's params, _lock, active, holding, inputs, command,
command_executor, setpoints, trajectory_action, command_pub, command_frame and joint_bounds.
"""

from __future__ import annotations

import threading
import time

from rclpy.parameter import Parameter
from std_msgs.msg import Bool

from . import params as P
from .command_interfaces import CommandError


class ArmingMixin:
    def armed(self) -> bool:
        return self.active and not self.params.dry_run

    def limits_missing(self) -> str:
        """Why the node may not arm ('' = it may)."""
        p = self.params
        if p.command_interface == "none":
            return ""  # chunks (and ~/action) only: nothing reaches a controller
        if p.command_interface in P.JOINT_INTERFACES:
            return "" if self.joint_bounds is not None else \
                "no joint limits: set robot_description (or publish /robot_description) with the commanded joints"
        rotates = self.layout is not None and any(i is not None for i in self.layout.rotation)
        unset = [n for n in ("workspace_min", "workspace_max") if not getattr(p, n)] + \
            (["max_speed"] if p.max_speed <= 0 else []) + \
            [n for n in ("max_angular_speed", "max_chunk_rotation") if rotates and getattr(p, n) <= 0]
        return f"cartesian limits not set: {unset}" if unset else ""

    def _controller_missing(self) -> str:
        if self.trajectory_action is not None and not self.trajectory_action.ready():
            return f"no FollowJointTrajectory server at {self.params.joint_trajectory_action}"
        return ""

    def fault(self) -> str:
        """The input fault that forbids commanding now ('' = none): stale inputs or a lost heartbeat."""
        if self.inputs is None:
            return ""
        stale = self.inputs.watchdog.stale(self._now())
        if stale:
            return f"stale inputs: {', '.join(stale)}"
        watched = [name for name in self.inputs.invalid if name in self.inputs.watchdog.inputs]
        if watched:
            return self.inputs.invalid[watched[0]]
        halted = self.servo_setup.halted() if self.servo_setup is not None else ""
        return halted or self._heartbeat_fault()

    def _set_dry_run(self, value: bool) -> None:
        """The node's own change of dry_run (arming, disarming): allowed for this thread's call only, so a
        parameter service request arriving meanwhile from another process is still refused."""
        self._arming = threading.get_ident()
        try:
            self.set_parameters([Parameter("dry_run", value=value)])
        finally:
            self._arming = None

    def _on_enable(self, request, response):
        if not request.data:  # disarm first: a chunk in flight then cannot command after the hold
            self._disarm()
            self._hold("disarmed through ~/enable")
            response.success, response.message = True, "disarmed"
            return response
        refusal = ("not active (lifecycle state); activate first" if not self.active else self.limits_missing()
                   or self._heartbeat_fault() or self._controller_missing())
        if refusal:
            response.success, response.message = False, f"not armed: {refusal}"
            return response
        setup = self.servo_setup
        if setup is not None and not setup.started and setup.available():  # Servo came up after activation
            setup.start()
        self._set_dry_run(False)
        with self._lock:
            self.holding = ""
        response.success, response.message = True, f"armed: {self.params.command_interface}"
        self.get_logger().warning("armed: commands go to " + (self.command_pub.topic_name if self.command_pub else
                                                              "~/action (stream_actions; no command interface)"))
        return response

    def _disarm(self) -> None:
        if not self.params.dry_run:
            self._set_dry_run(True)

    def _on_heartbeat(self, msg: Bool) -> None:
        if msg.data:
            self.last_heartbeat = time.monotonic()

    def _heartbeat_fault(self) -> str:
        if not self.params.heartbeat_topic:
            return ""
        if self.last_heartbeat is None:
            return f"no heartbeat on {self.params.heartbeat_topic}"
        age = time.monotonic() - self.last_heartbeat
        return f"heartbeat lost (none for more than heartbeat_timeout_s {self.params.heartbeat_timeout_s} s)" \
            if age > self.params.heartbeat_timeout_s else ""

    def _on_worker_fault(self, reason: str) -> None:
        """The inference worker failed (model exception, non-finite output): no chunk this time, so the last
        command must not play out open loop."""
        if self.active:
            self._hold(reason)

    def _on_servo_halt(self, reason: str) -> None:
        """MoveIt Servo reports a halting status (singularity, collision, joint bound): hold at once; commands
        resume once its status is no longer halting (fault() says so meanwhile)."""
        if self.armed():
            self._hold(reason)

    def _on_controller_failure(self, reason: str) -> None:
        """The controller rejected or aborted a goal: disarm first (no command of a chunk in flight follows),
        then hold; arming again is the operator's (~/enable)."""
        was_armed = self.armed()
        self._disarm()
        self._hold(reason, force=was_armed)

    def _hold(self, reason: str, force: bool = False) -> None:
        """The explicit hold of the command interface (once per reason), the reason in diagnostics. Sent while
        armed, on a disarm, or with `force` (the node was armed until a moment ago)."""
        with self._lock:
            if self.command_executor is not None:
                self.command_executor.reset()
                self.setpoints.clear()  # after a hold, targets start from the measured pose again
            if self.holding == reason or self.command is None or self.inputs is None:
                self.holding = reason
                return
            self.holding, self.stream_end = reason, None
            self.inputs.stats["holds"] += 1
            # decided with the hold: a thread that disarms meanwhile (after its own call here found this hold
            # already taken) must not leave the arm without it
            send = force or reason.startswith("disarmed") or not self.params.dry_run
        self.get_logger().warning(f"hold: {reason}", throttle_duration_sec=2.0)
        self.publish_status()  # the reason in /diagnostics now, not at the next 1 Hz status
        if not send:
            return  # disarmed: nothing of ours is moving the arm
        if self.trajectory_action is not None and self.trajectory_action.cancel():
            return  # the controller holds where it is when its goal is cancelled
        try:
            robot = self.inputs.robot_state()
            if "joints" in self.inputs.watchdog.stale(self._now()):  # not where the arm is now: not a hold target
                robot.joints = None
            msg = self.command.hold(robot, self._now(), self.command_frame)
        except CommandError as exc:
            self.inputs.stats["holds_unsent"] += 1
            self.get_logger().error(f"hold could not be built ({exc}); the controller keeps its last command")
            return
        self.command_pub.publish(msg)
