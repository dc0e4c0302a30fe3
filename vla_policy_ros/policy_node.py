"""`policy_node`: a lifecycle node; camera + sensor + state topics in, action chunks and controller commands out.

Lifecycle (rclpy managed node; `autostart: true` walks configure -> activate by itself):
- configure: load the checkpoints (services answer meanwhile), resolve the action layout and the
  command interface, read joint limits from the URDF, subscribe;
- activate: check the controlled joints by name, start inference; commands go out only when armed;
- deactivate: explicit hold, disarm, stop inference; cleanup: release the models and topics.

Arming goes through `~/enable` (std_srvs/SetBool) only: it refuses with no limits configured; the
`dry_run` parameter can be switched on live (disarm), never off, and the node starts disarmed
whatever the params file says. On any fault (stale input, lost
heartbeat, rejected command, disarm, policy switch, deactivation) the node publishes the command
interface's explicit hold and says why in /diagnostics.

This file is the lifecycle shell; the node's behaviour is in modules readable on their own:
input_wiring.py (topics, publishers, limits at configure), arming.py (arming, faults, holds),
command_tick.py (chunks -> controller commands), node_parameters.py (live parameter changes),
inputs.py (messages -> buffers), inference.py (worker threads), command_interfaces.py (messages
for JTC / MoveIt Servo / cartesian controllers), params.py (the parameter table), status.py (diagnostics).
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import SetBool

from vla_models import CheckpointError, load_policy
from vla_models.runtime import ChunkExecutor, StateHistory

from . import params as P
from .arming import ArmingMixin
from .command_interfaces import ActionLayout, build_command
from .command_tick import CommandMixin
from .ee_pose import pose_source, tf2_importable
from .inference import InferenceWorker
from .input_wiring import WiringMixin
from .inputs import Inputs
from .node_parameters import ParametersMixin
from .robot_limits import JointBounds
from .spinning import InvalidHandle, spin
from .status import diagnostics

class PolicyNode(ArmingMixin, CommandMixin, WiringMixin, ParametersMixin, LifecycleNode):
    """The lifecycle transitions; arming, commands, wiring and parameters come from the mixins."""

    def __init__(self, **kwargs) -> None:
        # LifecycleNode's own __init__, with a reentrant callback group for the lifecycle services: get_state
        # answers while a transition (configure loading the checkpoints) is still running
        Node.__init__(self, "vla_policy", **kwargs)
        try:
            LifecycleNodeMixin.__init__(self, callback_group=ReentrantCallbackGroup())
        except TypeError:  # Humble / Iron: no callback_group (get_state then waits for a running transition)
            LifecycleNodeMixin.__init__(self)
        self.configuring_since: float | None = None  # monotonic time configure started, while it runs
        self.params = P.declare(self)
        self.add_on_set_parameters_callback(self._validate_parameters)
        # Iron+ applies accepted changes after they are set; Humble has no such callback: the validation
        # callback applies them itself, from the values about to be set (node_parameters.py)
        self.apply_on_validation = not hasattr(self, "add_post_set_parameters_callback")
        if not self.apply_on_validation:
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
        self.stream_end: float | None = None  # when the last streamed row's period ends (None: none since a hold)
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
        self.servo_setup = None  # servo_twist: MoveIt Servo's switches and status (servo_setup.py)
        self.pose_source = ""  # cartesian commands: "tf", "topic" or "" (ee_pose.py)
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
            self._autostart_timer = self.create_timer(0.01, self._autostart, clock=steady,
                                                      callback_group=MutuallyExclusiveCallbackGroup())

    # -- lifecycle -----------------------------------------------------------------------------------
    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.failed = f"configure failed: {self.configure_error}"
        elif self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            self.failed = f"activate failed: {self.configure_error}"

    def on_configure(self, state) -> TransitionCallbackReturn:
        self.configuring_since = time.monotonic()
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - any failure (bad params, checkpoints, CUDA) is a named FAILURE
            if not isinstance(exc, (ValueError, OSError, CheckpointError)):
                exc = f"{type(exc).__name__}: {exc}"
            self.configure_error = str(exc)
            self.get_logger().error(f"configure: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        finally:
            self.configuring_since = None
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        p = self.params = P.read(self)
        P.validate_static(p)
        if not p.dry_run:  # the params file (or launch argument) cannot arm: ~/enable is the only way
            self.get_logger().warning("dry_run: false at start: the node starts disarmed all the same; arm it "
                                      "through ~/enable")
            self._set_dry_run(True)
            p = self.params
        for kind in P.EXPERT_TYPES:
            path = getattr(p, f"{kind}_checkpoint")
            if path:
                self.policies[kind] = load_policy(path, device=p.device, backbone_pretrained=p.backbone_path or None)
                self.get_logger().info(f"loaded {kind} policy from {path}")
        try:  # the starting expert takes the sampler / steps it is given
            self.sampling_options(p.policy_type, p.sampler, p.ddim_steps)
        except TypeError as exc:
            raise ValueError(f"parameters sampler/ddim_steps for {p.policy_type}: {exc}") from exc
        reason = P.rtc_reason(p.chunk_execution, p.policy_type, p.sampler, self.prefix_max(p.policy_type),
                              p.rtc_delay_steps)  # what the loaded expert takes (trained with given rows or not)
        if reason:
            raise ValueError(f"parameter chunk_execution: {reason}")
        spec = self._input_spec()
        config = next(iter(self.policies.values())).config
        self.dt = p.control_period_s or config.dt
        self.layout = ActionLayout.from_names(list(config.action_names), list(p.action_roles))
        self.limits = self._output_limits(config.action_dim)
        if p.robot_description:
            self._set_robot_description(p.robot_description)
        self.command = build_command(p.command_interface, self.layout, self.limits, self.dt, self.joint_bounds,
                                     p.translation_scale, p.rotation_scale, p.command_frame)
        joints = p.command_interface in P.JOINT_INTERFACES or (spec.state_dim and p.state_type == "joint_state")
        self.pose_source = pose_source(p.ee_frame, p.pose_topic, tf2_importable()) \
            if p.command_interface in ("servo_twist", "pose_target") else ""
        pose = p.command_interface in ("servo_twist", "pose_target") and bool(self.pose_source or p.state_type == "pose")
        self.inputs = Inputs(spec, p, self._now, self.get_logger(), watch_joints=bool(joints), watch_pose=pose)
        mode = P.EXECUTOR_MODE[p.chunk_execution]
        self.command_executor = ChunkExecutor(self.dt, mode, p.execute_steps, p.ensemble_decay) \
            if getattr(self.command, "streaming", False) else None
        self.action_executor = ChunkExecutor(self.dt, mode, p.execute_steps, p.ensemble_decay) if p.stream_actions else None
        self.setpoints = StateHistory(horizon_s=max(2.0, 4 * self.dt), tolerance_s=self.dt)  # pose_target: sent targets
        self.worker = InferenceWorker(self.policies, self.inputs, self.snapshot, self._on_chunk, self.get_logger(),
                                     self._on_worker_fault, dt=self.dt)
        self._create_entities(spec)

    def on_activate(self, state) -> TransitionCallbackReturn:
        unknown = self._unknown_joints()
        if unknown:
            self.configure_error = unknown
            self.get_logger().error(f"activate: {unknown}")
            return TransitionCallbackReturn.FAILURE
        result = super().on_activate(state)  # first: the lifecycle publishers publish from now on
        with self._lock:
            self.active, self.holding = True, ""
        self.worker.start()
        if self.servo_setup is not None:  # select the command type, unpause / start Servo (~/enable waits for it)
            threading.Thread(target=self._start_servo, daemon=True).start()
        return result

    def _start_servo(self) -> None:
        setup = self.servo_setup
        try:
            if setup is not None:
                level = "info" if setup.start() else "warning"
                getattr(self.get_logger(), level)(f"MoveIt Servo: {setup.state}")
        except InvalidHandle:  # the node's clients were destroyed while Servo was awaited: the node went
            return
        except Exception as exc:  # noqa: BLE001 - the node went (cleanup, shutdown) while Servo was awaited
            if self.servo_setup is setup:
                self.get_logger().error(f"MoveIt Servo setup: {exc}")

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        with self._lock:  # first: no command of a chunk in flight goes out after the hold
            was_armed, self.active = self.armed(), False
        self._hold("deactivated", force=was_armed)
        self._disarm()
        self.worker.stop()
        if self.servo_setup is not None:
            self.servo_setup.stop()
        self.inputs.clear()
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        """A transition callback raised: hold if armed until now, disarm, release everything; the node ends
        unconfigured (configure again to recover)."""
        self.get_logger().error(f"lifecycle error from {state.label}: holding, disarming and cleaning up")
        with self._lock:
            was_armed, self.active = self.armed(), False
        try:
            self._hold(f"lifecycle error in {state.label}", force=was_armed)
            self._disarm()
        finally:
            self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        if self.active:
            self._hold("shutting down")
        self._release()
        return TransitionCallbackReturn.SUCCESS


    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def stats(self):
        """Counters of drops, inferences, commands, holds (also in /diagnostics)."""
        return self.inputs.stats if self.inputs is not None else {}

    # -- status ----------------------------------------------------------------------------------------------
    def publish_status(self) -> None:
        self.diagnostics_pub.publish(diagnostics(self))

    def shutdown(self) -> None:
        """Ctrl-C, SIGTERM or the end of a test: an armed node holds before it goes (inference stopped first,
        so no chunk in flight commands after the hold)."""
        if self.worker is not None:
            self.worker.stop()
        if self.armed():
            self._hold("shutting down")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args=None) -> int:
    # Ctrl-C (and SIGTERM from a launch shutdown) reach this thread with the context still up, so an armed
    # node publishes its hold before it goes (rclpy's own handler would shut the context down first)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node, code = None, 0
    try:
        node = PolicyNode()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        # not executor.spin: a cleanup destroying the node's topics must not end the spinning (spinning.py)
        spinner = threading.Thread(target=spin, args=(executor, node.context), daemon=True)
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
