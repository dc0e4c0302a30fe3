"""Chunks -> commands: what the policy node publishes when a chunk arrives and at every command tick.

A chunk from the inference worker is published as an ActionChunk; armed and without a fault, it is
planned into the command interface's message from the robot's state at the observation's stamp
(one message for JTC / FollowJointTrajectory, rows streamed per control period for MoveIt Servo and
pose targets). `_command_tick` sends the streamed row due now and holds on a fault; `_action_tick`
streams `~/action` within the output limits.

A mixin of PolicyNode: it uses the node's params, _lock, policies, inputs, command, limits, layout,
command_executor, action_executor, setpoints, chunk_pub, command_pub, action_pub, gripper_pub,
trajectory_action, and the arming mixin's armed / fault / _hold.
"""

from __future__ import annotations

import time

import numpy as np
from rclpy.time import Time
from std_msgs.msg import Header

from . import params as P
from .command_interfaces import CommandError, gripper_message
from .inference import ChunkResult
from .msg import ActionChunk


class CommandMixin:
    def chunk_message(self, result: ChunkResult) -> ActionChunk:
        c = self.policies[result.policy_type].config
        spec = result.sampling
        timings = {k: v for k, v in self.policies[result.policy_type].last_timings.items() if k != "total_ms"}
        header = Header(stamp=Time(nanoseconds=int(round(result.stamp * 1e9))).to_msg(), frame_id=self.inputs.pose_frame)
        return ActionChunk(header=header, policy_type=result.policy_type, sampler=spec.sampler, num_steps=spec.steps,
                           horizon=c.horizon, action_dim=c.action_dim, dt=self.dt, action_names=list(c.action_names), actions=result.chunk.astype(np.float32).ravel().tolist(),
                           latency_ms=result.latency_ms, stage_names=list(timings),
                           stage_latency_ms=[float(v) for v in timings.values()])

    def _on_chunk(self, result: ChunkResult) -> None:
        """From the worker: publish the chunk, then (armed, no fault) the command."""
        self.chunk_pub.publish(self.chunk_message(result))
        if result.sensor_newest is not None:  # newest sensor sample this chunk used -> its publication
            self.sensor_to_action = (self.sensor_to_action + [self._now() - min(result.sensor_newest, result.stamp)])[-50:]
        if self.action_executor is not None:
            with self._lock:
                self.action_executor.add_chunk(result.stamp, result.chunk)
        if not self.armed() or self.command is None:
            return
        fault = self.fault()
        if fault:
            return self._hold(fault)
        age = self._now() - result.stamp
        if age > result.params.max_command_age_s:
            return self._hold(f"observation {age:.3f} s old at publication (max_command_age_s "
                              f"{result.params.max_command_age_s})")
        try:  # from the robot's state at the observation's stamp: motion during inference is not counted twice
            robot = self._robot_state_at(result.stamp)
            if result.params.pose_reference == "setpoint" and self.command.name == "pose_target":
                setpoint = self.setpoints.at(result.stamp)
                robot.setpoint = None if setpoint is None else (setpoint[:3], setpoint[3:7])
            planned = self.command.plan(result.chunk, robot, result.stamp)
        except CommandError as exc:
            return self._hold(str(exc))
        self._limit_outcome(planned.outcome, planned.reason)
        if planned.outcome == "rejected":
            return self._hold(f"command rejected: {planned.reason}")
        with self._lock:  # holds take this lock too: no command goes out after a hold for a fault found meanwhile
            late = self.fault()
            if late:
                return self._hold(late)
            if not self.armed():  # disarmed while this chunk was planned: its command must not follow the hold
                return
            if not self.command.streaming:
                try:  # timed as the controller will execute it: from its state now, the points already due dropped
                    message, due = self.command.timed(planned, self.inputs.robot_state(), self._now())
                except CommandError as exc:
                    return self._hold(str(exc))
                self.inputs.stats["points_due_before_publication"] += due
                if message is None:
                    return self._hold("every point of the chunk was due before publication (latency > horizon x dt)")
                self.holding = ""
                if planned.gripper is not None:
                    self._publish_gripper(planned.gripper[min(due, len(planned.gripper) - 1)])
                if self.trajectory_action is not None:
                    self.trajectory_action.send(message)
                else:
                    self.command_pub.publish(message)
                self.inputs.stats["commands"] += 1
                return
            self.holding = ""
            rows = planned.rows if planned.gripper is None else np.hstack([planned.rows, planned.gripper[:, None]])
            self.command_frame = planned.frame
            self.command_executor.add_chunk(result.stamp, rows)
        self._command_tick(max(self._now(), result.stamp))  # the action due now goes out at once

    def _robot_state_at(self, stamp: float, wait_s: float = 0.05):
        """The joints/pose at the observation's stamp. A state stream published beside the cameras can
        arrive just after them: wait up to wait_s (the worker thread) for it to cover the stamp."""
        deadline = time.monotonic() + wait_s
        robot = self.inputs.robot_state(stamp)
        needs_pose = self.params.command_interface in ("servo_twist", "pose_target") and bool(self.inputs.pose_frame or
                                                                                              self.pose_source)
        needs_joints = self.params.command_interface in P.JOINT_INTERFACES
        while ((needs_pose and robot.pose is None) or (needs_joints and robot.joints is None)) and \
                time.monotonic() < deadline:
            time.sleep(0.001)
            robot = self.inputs.robot_state(stamp)
        return robot

    def _command_tick(self, now: float | None = None) -> None:
        """Streamed interfaces: the command due now; every interface: hold on a fault while armed."""
        if not self.armed() or self.command is None:
            return
        fault = self.fault()
        if fault:
            self._hold(fault)
            if "heartbeat" in fault:  # the operator's station is gone: arming again is theirs to do
                self._disarm()
            return
        if self.command_executor is None:
            return
        now = self._now() if now is None else now
        with self._lock:
            if self.holding or not self.armed():
                return
            due = self.command_executor.action_at(now)
            if due is None and self.command.name in P.SERVO_COMMAND_TYPES and self.stream_end is not None \
                    and now > self.stream_end + 1e-9:  # the last row's period is over and no chunk covers now:
                self.stream_end = None  # MoveIt Servo would integrate that twist until its own timeout; stop it
                return self._hold("servo stream starved: no chunk covers now (zero velocity)")
            if due is None:  # no chunk covers now: nothing new (a pose controller keeps its last target)
                return
            width = getattr(self.command, "width", 6 if self.command.name == "servo_twist" else 7)
            message = self.command.message(due.action[:width], now, self.command_frame)
            if self.command.name == "pose_target":  # the target is reached by the end of its period
                self.setpoints.add(due.chunk_stamp + (due.index + 1) * self.dt, due.action[:7])
            if len(due.action) > width:  # the gripper first: a controller stepping on the arm command has it
                self._publish_gripper(due.action[width])
            self.command_pub.publish(message)
            self.stream_end = due.chunk_stamp + (due.index + 1) * self.dt  # when this row's period ends
            self.inputs.stats["commands"] += 1
            self.tick_times = (self.tick_times + [time.monotonic()])[-50:]

    def _publish_gripper(self, value: float) -> None:
        if self.gripper_pub is not None:
            p = self.params
            self.gripper_pub.publish(gripper_message(value, p.gripper_scale, p.gripper_min, p.gripper_max))

    def _limit_outcome(self, outcome: str, reason: str) -> None:
        if outcome != "ok":
            self.inputs.stats[f"commands_{outcome}"] += 1
            self.last_limit = f"{outcome}: {reason}"
            self.get_logger().warning(f"command {self.last_limit}", throttle_duration_sec=5.0)

    def _action_tick(self) -> None:
        """stream_actions: the action due now on ~/action, within the limits (armed only)."""
        with self._lock:
            executed = self.action_executor.action_at(self._now())
        if executed is None or not self.armed() or self.holding or self.fault():
            return
        limited = self.limits.apply_chunk(executed.action[None])
        self._limit_outcome(limited.outcome, limited.reason)
        if limited.chunk is None:
            return
        c = self.policies[self.params.policy_type].config
        header = Header(frame_id=self.inputs.pose_frame, stamp=self.get_clock().now().to_msg())
        self.action_pub.publish(ActionChunk(header=header, policy_type=self.params.policy_type, horizon=1,
                                            action_dim=c.action_dim, dt=self.dt, action_names=list(c.action_names),
                                            actions=limited.chunk.astype(np.float32).ravel().tolist()))
        self.inputs.stats["actions"] += 1
