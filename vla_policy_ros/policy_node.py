"""`policy_node`: a lifecycle node; camera + sensor + state topics in, action chunks and controller commands out.

Lifecycle (rclpy managed node; `autostart: true` walks configure -> activate by itself):
- configure: load the checkpoints (services answer meanwhile), resolve the action layout and the
  command interface, read joint limits from the URDF, subscribe;
- activate: check the controlled joints by name, start inference; commands go out only when armed;
- deactivate: explicit hold, disarm, stop inference; cleanup: release the models and topics.

Arming goes through `~/enable` (std_srvs/SetBool) only: it refuses with no limits configured; the
`dry_run` parameter can be switched on live (disarm), never off. On any fault (stale input, lost
heartbeat, rejected command, disarm, policy switch, deactivation) the node publishes the command
interface's explicit hold and says why in /diagnostics. The pieces live in their own modules:
inputs.py (messages -> buffers), inference.py (worker threads), command_interfaces.py (messages
for JTC / MoveIt Servo / cartesian controllers), params.py (parameters), status.py (diagnostics).
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, Float64MultiArray, Header, String
from std_srvs.srv import SetBool

from vla_models import CheckpointError, load_policy
from vla_models.runtime import ChunkExecutor, StateHistory

from . import params as P
from .command_interfaces import ActionLayout, CommandError, build_command, gripper_message
from .inference import ChunkResult, InferenceWorker
from .inputs import InputSpec, Inputs
from .msg import ActionChunk, SensorPacket
from .robot_limits import JointBounds, RobotDescriptionError, joint_limits_from_urdf
from .safety import OutputLimits
from .status import diagnostics
from .trajectory_action import TrajectoryAction


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("vla_policy", **kwargs)
        self.params = P.declare(self)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._lock = threading.RLock()
        self._arming: int | None = None  # the thread of ~/enable while it switches dry_run
        self.policies: dict = {}
        self.inputs: Inputs | None = None
        self.worker: InferenceWorker | None = None
        self.command = None
        self.layout: ActionLayout | None = None
        self.joint_bounds: JointBounds | None = None
        self.command_executor: ChunkExecutor | None = None  # streamed interfaces: command rows per period
        self.setpoints: StateHistory | None = None
        self.action_executor: ChunkExecutor | None = None  # stream_actions: ~/action
        self.command_frame = ""
        self.active = False
        self.holding = ""  # why the node holds now ("" = not holding)
        self.last_limit, self.configure_error, self.failed = "", "", ""
        self.instruction = self.params.instruction
        self.last_heartbeat: float | None = None
        self.sensor_to_action: list[float] = []
        self.tick_times: list[float] = []
        self._entities: list = []  # subscriptions / publishers / timers created by configure
        self.chunk_pub = self.action_pub = self.command_pub = self.gripper_pub = None
        self.trajectory_action = None  # joint_trajectory through FollowJointTrajectory (control_msgs)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(SetBool, "~/enable", self._on_enable)
        steady = Clock(clock_type=ClockType.STEADY_TIME)  # not the simulated clock: it may not run yet
        self.create_timer(1.0, self.publish_status, clock=steady)
        # Torch releases the GIL around each op; with the executor's threads busy in Python, every
        # re-acquire waited up to the 5 ms switch interval (a 10 ms backbone took seconds).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        # Simulated time (use_sim_time): the command tick follows each clock step; a jump back (bag loop,
        # sim reset) forgets the buffered inputs, stamp history and chunks.
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=Duration(nanoseconds=1), min_backward=Duration(nanoseconds=-1),
                          on_clock_change=False), post_callback=self._on_clock_jump)
        if self.params.autostart:  # once the executor spins, so that services answer while models load
            self._autostart_timer = self.create_timer(0.01, self._autostart, clock=steady)

    # -- lifecycle -----------------------------------------------------------------------------------
    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.failed = f"configure failed: {self.configure_error}"
        elif self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.failed = f"activate failed: {self.configure_error}"

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ValueError, OSError, CheckpointError) as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        p = self.params = P.read(self)
        P.validate_static(p)
        for kind in P.EXPERT_TYPES:
            path = getattr(p, f"{kind}_checkpoint")
            if path:
                self.policies[kind] = load_policy(path, device=p.device, backbone_pretrained=p.backbone_path or None)
                self.get_logger().info(f"loaded {kind} policy from {path}")
        try:  # the starting expert takes the sampler / steps it is given
            self.sampling_options(p.policy_type, p.sampler, p.ddim_steps)
        except TypeError as exc:
            raise ValueError(f"parameters sampler/ddim_steps for {p.policy_type}: {exc}") from exc
        spec = self._input_spec()
        config = next(iter(self.policies.values())).config
        self.dt = p.control_period_s or config.dt
        self.layout = ActionLayout.from_names(list(config.action_names), list(p.action_roles))
        self.limits = self._output_limits(config.action_dim)
        if p.robot_description:
            self._set_robot_description(p.robot_description)
        self.command = build_command(p.command_interface, self.layout, self.limits, self.dt, self.joint_bounds,
                                     p.translation_scale, p.rotation_scale, p.command_frame)
        if not p.dry_run and self.limits_missing():
            raise ValueError(f"parameter dry_run: false needs limits ({self.limits_missing()}); start with dry_run: "
                             "true and arm through ~/enable once they are configured")
        joints = p.command_interface == "joint_trajectory" or (spec.state_dim and p.state_type == "joint_state")
        pose = p.command_interface in ("servo_twist", "pose_target") and bool(p.pose_topic or p.state_type == "pose")
        self.inputs = Inputs(spec, p, self._now, self.get_logger(), watch_joints=bool(joints), watch_pose=pose)
        self.command_executor = ChunkExecutor(self.dt, p.execution_mode, p.execute_steps, p.ensemble_decay) \
            if getattr(self.command, "streaming", False) else None
        self.action_executor = ChunkExecutor(self.dt, p.execution_mode, p.execute_steps, p.ensemble_decay) \
            if p.stream_actions else None
        self.setpoints = StateHistory(horizon_s=max(2.0, 4 * self.dt), tolerance_s=self.dt)  # pose_target: sent targets
        self.worker = InferenceWorker(self.policies, self.inputs, self.snapshot, self._on_chunk, self.get_logger())
        self._create_entities(spec)

    def _create_entities(self, spec: InputSpec) -> None:
        p, add = self.params, self._entities.append
        topics = p.image_topics or tuple(f"camera/{v}/image_raw" for v in spec.views)
        for view, topic in zip(spec.views, topics):
            kind = CompressedImage if topic.endswith("/compressed") else Image
            add(self.create_subscription(kind, topic, lambda m, v=view: self.inputs.on_image(v, m),
                                         qos_profile_sensor_data))
        if spec.sensor_channels:
            kind = {"wrench": WrenchStamped, "packet": SensorPacket, "array": Float32MultiArray}[p.sensor_type]
            add(self.create_subscription(kind, p.sensor_topic, self.inputs.on_sensor, qos_profile_sensor_data))
        state_is_pose = p.state_type == "pose"
        if spec.state_dim and state_is_pose:
            add(self.create_subscription(PoseStamped, p.state_topic, lambda m: self.inputs.on_pose(m, True), 50))
        if not state_is_pose or p.command_interface == "joint_trajectory":
            topic = p.state_topic if not state_is_pose else "joint_states"
            add(self.create_subscription(JointState, topic,
                                         lambda m: self.inputs.on_joint_state(m, bool(spec.state_dim) and not state_is_pose),
                                         qos_profile_sensor_data))
        if p.pose_topic and not (state_is_pose and p.pose_topic == p.state_topic):
            add(self.create_subscription(PoseStamped, p.pose_topic, lambda m: self.inputs.on_pose(m, False),
                                         qos_profile_sensor_data))
        add(self.create_subscription(String, p.instruction_topic, self._on_instruction, 10))
        if p.heartbeat_topic:
            add(self.create_subscription(Bool, p.heartbeat_topic, self._on_heartbeat, 10))
        if p.command_interface == "joint_trajectory" and not p.robot_description:
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            add(self.create_subscription(String, "/robot_description",
                                         lambda m: self._set_robot_description(m.data, from_topic=True), latched))
        self.chunk_pub = self.create_publisher(ActionChunk, "~/action_chunk", 10)
        self.action_pub = self.create_publisher(ActionChunk, "~/action", 10)
        self.command_pub = None
        if self.command is not None:
            topic = p.command_topic or P.DEFAULT_COMMAND_TOPICS[p.command_interface]
            self.command_pub = self.create_publisher(self.command.message_type, topic, 10)
        self.trajectory_action = None
        if p.joint_trajectory_action and p.command_interface == "joint_trajectory":
            self.trajectory_action = TrajectoryAction(self, p.joint_trajectory_action)
            add(self.trajectory_action)
        self.gripper_pub = self.create_publisher(Float64MultiArray, p.gripper_topic, 10) \
            if p.gripper_topic and self.layout.gripper is not None else None
        self._entities += [pub for pub in (self.chunk_pub, self.action_pub, self.command_pub, self.gripper_pub) if pub]
        add(self.create_timer(1.0 / p.command_rate_hz, self._command_tick))
        if self.action_executor is not None:
            add(self.create_timer(self.dt, self._action_tick))

    def on_activate(self, state) -> TransitionCallbackReturn:
        unknown = self._unknown_joints()
        if unknown:
            self.configure_error = unknown
            self.get_logger().error(f"activate: {unknown}")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self.active, self.holding = True, ""
        self.worker.start()
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._hold("deactivated")
        self._disarm()
        with self._lock:
            self.active = False
        self.worker.stop()
        self.inputs.clear()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        if self.active:
            self._hold("shutting down")
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        for entity in self._entities:
            destroy = {"Subscription": self.destroy_subscription, "Publisher": self.destroy_publisher,
                       "Timer": self.destroy_timer, "TrajectoryAction": lambda a: a.destroy()}.get(type(entity).__name__)
            if destroy is not None:
                destroy(entity)
        self._entities, self.policies, self.inputs, self.worker, self.command = [], {}, None, None, None
        self.active = False

    def _input_spec(self) -> InputSpec:
        specs = {kind: InputSpec(tuple(pol.config.views), pol.config.sensor.channels, pol.config.sensor.window,
                                 pol.config.state.dim, tuple(pol.config.state.columns))
                 for kind, pol in self.policies.items()}
        first = next(iter(specs.values()))
        if any(spec != first for spec in specs.values()):
            raise ValueError(f"the checkpoints expect different inputs ({specs}); both policy types must share "
                             "views, sensor channels, sensor window and state size to switch live")
        topics = self.params.image_topics
        if topics and len(topics) != len(first.views):
            raise ValueError(f"parameter image_topics: expected {len(first.views)} topics for views "
                             f"{list(first.views)}, got {list(topics)}")
        return first

    def _output_limits(self, action_dim: int) -> OutputLimits:
        p = self.params
        max_delta = np.asarray(p.max_delta, float) if p.max_delta else np.full(action_dim, np.inf)
        if max_delta.size not in (1, action_dim):
            raise ValueError(f"parameter max_delta: expected [], 1 or {action_dim} values, got {list(p.max_delta)}")
        return OutputLimits(max_delta=max_delta, workspace_min=p.workspace_min or np.full(3, -np.inf),
                            workspace_max=p.workspace_max or np.full(3, np.inf),
                            max_speed=p.max_speed if p.max_speed > 0 else np.inf, mode=p.limit_mode)

    def _set_robot_description(self, urdf: str, from_topic: bool = False) -> None:
        """Joint bounds of the commanded joints from a URDF (parameter at configure, or the latched topic)."""
        if self.layout is None or not self.layout.joints:
            return
        try:
            limits = joint_limits_from_urdf(urdf)
            bounds = JointBounds.for_joints([n for _, n in self.layout.joints], limits,
                                            self.params.max_chunk_motion or np.inf, self.params.limit_mode)
        except RobotDescriptionError as exc:
            if not from_topic:
                raise
            self.get_logger().error(f"/robot_description: {exc}")
            return
        self.joint_bounds = bounds
        if self.command is not None and hasattr(self.command, "bounds"):
            self.command.bounds = bounds

    def limits_missing(self) -> str:
        """Why the node may not arm ('' = it may)."""
        p = self.params
        if p.command_interface == "none":
            return ""  # chunks (and ~/action) only: nothing reaches a controller
        if p.command_interface == "joint_trajectory":
            return "" if self.joint_bounds is not None else \
                "no joint limits: set robot_description (or publish /robot_description) with the commanded joints"
        unset = [n for n in ("workspace_min", "workspace_max") if not getattr(p, n)] + \
            (["max_speed"] if p.max_speed <= 0 else [])
        return f"cartesian limits not set: {unset}" if unset else ""

    def _unknown_joints(self) -> str:
        if not (self.params.command_interface == "joint_trajectory" and self.inputs.joint_names):
            return ""  # checked again at every command
        missing = [n for n in self.command.names if n not in self.inputs.joint_names]
        return f"joints {missing} are not in the JointState (it has {self.inputs.joint_names})" if missing else ""

    # -- parameters, enable, heartbeat ---------------------------------------------------------------
    def snapshot(self):
        with self._lock:
            return self.params, self.instruction

    def _validate_parameters(self, changes) -> SetParametersResult:
        loaded = set(self.policies) or {k for k in P.EXPERT_TYPES if getattr(self.params, f"{k}_checkpoint")}
        for change in changes:
            if change.name == "dry_run" and self._arming == threading.get_ident():
                continue
            reason = P.validate(change.name, change.value, loaded, set())
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        after = {c.name: c.value for c in changes}
        if self.policies and {"policy_type", "sampler", "ddim_steps"} & set(after):  # the expert that will serve
            kind = after.get("policy_type", self.params.policy_type)  # says whether it takes these options
            try:
                self.sampling_options(kind, after.get("sampler", self.params.sampler),
                                      after.get("ddim_steps", self.params.ddim_steps))
            except (TypeError, ValueError) as exc:
                return SetParametersResult(successful=False, reason=f"{kind}: {exc}")
        return SetParametersResult(successful=True)

    def sampling_options(self, kind: str, sampler: str, steps: int) -> dict:
        """The node's sampler/steps parameters as the options the `kind` expert takes (checked by it)."""
        return self.policies[kind].expert.options_for(sampler=sampler, steps=steps)  # raises, naming what it expected

    def _apply_parameters(self, changes) -> None:
        names = {c.name for c in changes}
        with self._lock:
            before, self.params = self.params, P.read(self)
            if "instruction" in names:
                self.instruction = self.params.instruction
            for executor in (self.command_executor, self.action_executor):
                if executor is not None:
                    executor.execute_steps = self.params.execute_steps
        if "policy_type" in names and self.params.policy_type != before.policy_type and self.worker is not None:
            self.worker.reset()
            self._hold(f"policy switched to {self.params.policy_type}")
        if "dry_run" in names and self.params.dry_run and not before.dry_run:
            self._hold("disarmed: dry_run set")
        self.get_logger().info("parameters: " + ", ".join(f"{c.name}={c.value}" for c in changes))

    def _set_dry_run(self, value: bool) -> None:
        """The node's own change of dry_run (arming, disarming): allowed for this thread's call only, so a
        parameter service request arriving meanwhile from another process is still refused."""
        self._arming = threading.get_ident()
        try:
            self.set_parameters([Parameter("dry_run", value=value)])
        finally:
            self._arming = None

    def _on_enable(self, request, response):
        if not request.data:
            self._hold("disarmed through ~/enable")
            self._disarm()
            response.success, response.message = True, "disarmed"
            return response
        refusal = ("not active (lifecycle state); activate first" if not self.active else self.limits_missing()
                   or self._heartbeat_fault())
        if refusal:
            response.success, response.message = False, f"not armed: {refusal}"
            return response
        self._set_dry_run(False)
        with self._lock:
            self.holding = ""
        response.success, response.message = True, f"armed: {self.params.command_interface}"
        self.get_logger().warning(f"armed: commands go to {self.command_pub.topic_name}")
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

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self.instruction = msg.data

    def _on_clock_jump(self, jump) -> None:
        if self.inputs is None:
            return
        if jump.delta.nanoseconds < 0:
            self.get_logger().warning(f"the clock jumped back {-jump.delta.nanoseconds * 1e-9:.3f} s: inputs reset")
            self.worker.reset()  # first: a chunk computed from before the jump is dropped, not published
            self.inputs.clear()
            self.inputs.stamp_guard.reset()
            with self._lock:
                for executor in (self.command_executor, self.action_executor):
                    if executor is not None:
                        executor.reset()
        elif self.command_executor is not None:
            self.inputs.stats["clock_steps"] += 1
            self._command_tick()

    # -- chunks and commands -----------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def stats(self):
        """Counters of drops, inferences, commands, holds (also in /diagnostics)."""
        return self.inputs.stats if self.inputs is not None else {}

    def armed(self) -> bool:
        return self.active and not self.params.dry_run

    def fault(self) -> str:
        """The input fault that forbids commanding now ('' = none): stale inputs or a lost heartbeat."""
        if self.inputs is None:
            return ""
        stale = self.inputs.watchdog.stale(self._now())
        if stale:
            return f"stale inputs: {', '.join(stale)}"
        watched = [name for name in self.inputs.invalid if name in self.inputs.watchdog.inputs]
        return self.inputs.invalid[watched[0]] if watched else self._heartbeat_fault()

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
            self.holding = ""
            if not self.command.streaming:
                if planned.gripper is not None:
                    self._publish_gripper(planned.gripper[0])
                if self.trajectory_action is not None:
                    self.trajectory_action.send(planned.message)
                else:
                    self.command_pub.publish(planned.message)
                self.inputs.stats["commands"] += 1
                return
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
                                                                                              self.params.pose_topic)
        needs_joints = self.params.command_interface == "joint_trajectory"
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
            if self.holding:
                return
            due = self.command_executor.action_at(now)
            if due is None:  # no chunk covers now: nothing new (the controller keeps its last target)
                return
            width = 6 if self.command.name == "servo_twist" else 7
            message = self.command.message(due.action[:width], now, self.command_frame)
            if self.command.name == "pose_target":  # the target is reached by the end of its period
                self.setpoints.add(due.chunk_stamp + (due.index + 1) * self.dt, due.action[:7])
            if len(due.action) > width:  # the gripper first: a controller stepping on the arm command has it
                self._publish_gripper(due.action[width])
            self.command_pub.publish(message)
            self.inputs.stats["commands"] += 1
            self.tick_times = (self.tick_times + [time.monotonic()])[-50:]

    def _publish_gripper(self, value: float) -> None:
        if self.gripper_pub is not None:
            self.gripper_pub.publish(gripper_message(value, self.params.gripper_scale))

    def _hold(self, reason: str) -> None:
        """The explicit hold of the command interface (once per reason), the reason in diagnostics."""
        with self._lock:
            if self.command_executor is not None:
                self.command_executor.reset()
                self.setpoints.clear()  # after a hold, targets start from the measured pose again
            if self.holding == reason or self.command is None or self.inputs is None:
                self.holding = reason
                return
            self.holding = reason
            self.inputs.stats["holds"] += 1
        self.get_logger().warning(f"hold: {reason}", throttle_duration_sec=2.0)
        if self.params.dry_run and not reason.startswith("disarmed"):
            return  # disarmed: nothing of ours is moving the arm
        if self.trajectory_action is not None and self.trajectory_action.cancel():
            return  # the controller holds where it is when its goal is cancelled
        try:
            msg = self.command.hold(self.inputs.robot_state(), self._now(), self.command_frame)
        except CommandError as exc:
            self.inputs.stats["holds_unsent"] += 1
            self.get_logger().error(f"hold could not be built ({exc}); the controller keeps its last command")
            return
        self.command_pub.publish(msg)

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

    # -- status ----------------------------------------------------------------------------------------------
    def publish_status(self) -> None:
        self.diagnostics_pub.publish(diagnostics(self))

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def main(args=None) -> int:
    rclpy.init(args=args)
    node, code = None, 0
    try:
        node = PolicyNode()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        while rclpy.ok() and not node.failed and spinner.is_alive():
            spinner.join(timeout=0.1)
        if node.failed:  # bad parameters or checkpoints at autostart: one clear line, exit 1
            print(f"policy_node: error: {node.failed}", flush=True)
            code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
