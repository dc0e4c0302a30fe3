"""Run by test_fault_holds.py in a process that imports the stand-in control_msgs: every fault of the armed node
ends in a hold at the controller within the watchdog period, with the reason in /diagnostics.

One parametrised test over the faults; each starts the node armed on a controller stand-in (the JTC's topic, its
FollowJointTrajectory action, or MoveIt Servo's twist input), injects the fault and measures the time from the
fault (for a stale input: from the moment its timeout runs out) to the hold the controller receives."""

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import make_policy  # noqa: F401 - the fixtures below come from conftest
from fake_controllers import FakeJointTrajectoryController, FakeServo
from ros_helpers import stamp, start_policy_node
from test_robot_deployment import JOINTS, URDF, Robot, _enable, _params, checkpoint  # noqa: F401

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402

WATCHDOG_S = 0.5  # input_timeout_s, and every input's own timeout, in these tests
ACTION = "/joint_trajectory_controller/follow_joint_trajectory"
SERVO_LIMITS = {"workspace_min": [0.0, -1.0, -1.0], "workspace_max": [1.0, 1.0, 1.0], "max_speed": 5.0}


class SimClockRobot(Robot):
    """The deployment robot on simulated time: /clock ticks with every set of inputs."""

    def __init__(self, ros):
        super().__init__(ros)
        self.wall_clock, self.t = False, 1000.0
        self.clock = self.node.create_publisher(Clock, "/clock", 10)

    def step(self, dt=0.05):
        self.clock.publish(Clock(clock=stamp(self.t + dt)))
        super().step(dt)


@dataclass
class Rig:
    node: object
    robot: Robot
    jtc: FakeJointTrajectoryController | None = None
    server: object = None  # trajectory_action_interop.FakeTrajectoryActionServer
    servo: FakeServo | None = None
    diagnostics: list = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)  # frees a gated model at the end

    def hold_times(self) -> list[float]:
        """time.monotonic() of every hold a controller received: a one-point trajectory, a cancelled goal, a
        zero twist."""
        times = []
        if self.jtc is not None:
            times += [t for m, t in zip(self.jtc.accepted, self.jtc.received_at) if len(m.points) == 1]
        if self.server is not None:
            times += self.server.cancelled_at
        if self.servo is not None:
            times += [t for m, t in zip(self.servo.accepted, self.servo.received_at) if FakeServo.is_zero(m)]
        return sorted(times)


def _rig(ros, checkpoint, kind: str) -> Rig:  # noqa: F811
    timeouts = {"camera_timeout_s": WATCHDOG_S, "sensor_timeout_s": WATCHDOG_S, "joint_state_timeout_s": WATCHDOG_S,
                "input_timeout_s": WATCHDOG_S}
    jtc_params = dict(command_interface="joint_trajectory", action_roles=JOINTS, robot_description=URDF, **timeouts)
    server = servo = jtc = None
    if kind == "servo":
        params = _params(checkpoint, command_interface="servo_twist", pose_topic="ee_pose", translation_scale=0.01,
                         **timeouts, **SERVO_LIMITS)
        servo = ros.add(FakeServo(ros.context))
    else:
        params = _params(checkpoint, **jtc_params)
        jtc = ros.add(FakeJointTrajectoryController(ros.context, JOINTS))
        if kind == "action":
            from trajectory_action_interop import FakeTrajectoryActionServer  # control_msgs: the stand-in's

            server = ros.add(FakeTrajectoryActionServer(ros.context))
            params["joint_trajectory_action"] = ACTION
        if kind == "sim_clock":
            params["use_sim_time"] = True
    robot = SimClockRobot(ros) if kind == "sim_clock" else Robot(ros)
    node = start_policy_node(ros, params)
    if kind == "sim_clock":
        ros.wait_for(lambda: robot.clock.get_subscription_count() > 0, what="/clock subscriber")
    rig = Rig(node, robot, jtc, server, servo)
    robot.node.create_subscription(DiagnosticArray, "/diagnostics",
                                   lambda m: rig.diagnostics.append((time.monotonic(), m.status[0])), 100)
    robot.run_until(ros, lambda: len(robot.chunks) >= 1, "chunks")
    assert _enable(ros, robot).success
    if servo is not None:
        robot.run_until(ros, lambda: any(not FakeServo.is_zero(m) for m in servo.accepted), "twists")
    elif server is not None:
        robot.run_until(ros, lambda: node.trajectory_action.counts["accepted"] >= 2, "accepted goals")
    else:
        robot.run_until(ros, lambda: sum(len(m.points) > 1 for m in jtc.accepted) >= 2 and not node.holding,
                        "trajectories")
    return rig


def _gate_model(rig: Rig, broken=None) -> None:
    """From now on the model raises, returns NaN (`broken`), or blocks until the test ends (no chunk at all)."""
    policy = rig.node.policies["regression"]
    horizon, dim = policy.config.horizon, policy.config.action_dim

    def gated(*args, **kwargs):
        if broken == "exception":
            raise RuntimeError("CUDA error: an illegal memory access")
        if broken == "nan":
            return torch.full((1, horizon, dim), float("nan"))
        rig.release.wait(30.0)
        raise RuntimeError("released at the end of the test")

    policy.predict_action_chunk = gated


def _stop(attribute: str):
    def inject(rig: Rig, ros) -> None:
        setattr(rig.robot, attribute, False)
    return inject


def _nan_joint(rig: Rig, ros) -> None:
    rig.robot.joint_values["j1"] = float("nan")


def _reject(rig: Rig, ros) -> None:
    rig.server.reject_from = rig.server.received + 1  # the next goal is rejected


def _abort(rig: Rig, ros) -> None:
    rig.server.abort_goal = len(rig.server.goals) + 1  # the next goal aborts (path tolerance violated)


def _deactivate(rig: Rig, ros) -> None:
    rig.node.trigger_deactivate()


def _shutdown(rig: Rig, ros) -> None:
    rig.node.shutdown()  # what main runs on Ctrl-C / SIGTERM


def _clock_back(rig: Rig, ros) -> None:
    rig.robot.t -= 10.0  # a simulator reset: the clock and every stamp go back


# fault: (controller stand-in, injection, the reason's words in node.holding and /diagnostics, an input whose
# timeout must run out before the fault is there at all)
FAULTS = {
    "stale_camera": ("jtc", _stop("send_images"), "stale inputs: front", "camera_timeout_s"),
    "stale_sensor": ("jtc", _stop("send_sensor"), "sensor", "sensor_timeout_s"),
    "stale_joints": ("jtc", _stop("send_joints"), "joints", "joint_state_timeout_s"),
    "nan_input": ("jtc", _nan_joint, "the latest joint state has a non-finite", None),
    "model_exception": ("jtc", lambda rig, ros: _gate_model(rig, "exception"), "model failed: RuntimeError", None),
    "non_finite_output": ("jtc", lambda rig, ros: _gate_model(rig, "nan"), "non-finite actions", None),
    "controller_reject": ("action", _reject, "the controller rejected the trajectory goal", None),
    "controller_abort": ("action", _abort, "path tolerance violated", None),
    "servo_starvation": ("servo", lambda rig, ros: _gate_model(rig), "servo stream starved", None),
    "deactivate": ("jtc", _deactivate, "deactivated", None),
    "shutdown": ("jtc", _shutdown, "shutting down", None),
    "clock_jump": ("sim_clock", _clock_back, "the clock jumped back", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_fault_ends_in_a_hold_within_the_watchdog_period(ros, checkpoint, fault):  # noqa: F811
    kind, inject, reason, timeout = FAULTS[fault]
    rig = _rig(ros, checkpoint, kind)
    try:
        holds_before = len(rig.hold_times())
        injected = time.monotonic()
        inject(rig, ros)
        steps = fault not in ("shutdown",)  # inputs keep coming (a node shut down is not fed)
        what = f"a hold with {reason!r} for {fault}"

        def held_for_it():  # the reason as the node took the hold (/diagnostics keeps it: node.holding may have
            # moved on to the next one meanwhile, e.g. stale inputs right after a clock jump cleared them)
            said = any(reason in s.message and s.level == DiagnosticStatus.ERROR
                       for t, s in list(rig.diagnostics) if t >= injected)
            return (said or reason in rig.node.holding) and len(rig.hold_times()) > holds_before

        if steps:
            rig.robot.run_until(ros, held_for_it, what, timeout=15)
        else:
            ros.wait_for(held_for_it, 15, what)
        held = rig.hold_times()[holds_before]
        fault_at = injected + (getattr(rig.node.params, timeout) if timeout else 0.0)
        if fault == "servo_starvation":  # the fault: the stream runs out, after the last row's twist
            fault_at = max(t for m, t in zip(rig.servo.accepted, rig.servo.received_at) if not FakeServo.is_zero(m))
        assert held - fault_at <= WATCHDOG_S, f"{fault}: the hold came {held - fault_at:.3f} s after the fault"
        ros.wait_for(lambda: any(reason in s.message and s.level == DiagnosticStatus.ERROR
                                 for t, s in rig.diagnostics if t >= injected), 5, f"{reason!r} in /diagnostics")
        if fault in ("controller_reject", "controller_abort"):
            assert rig.node.params.dry_run, "a controller failure disarms"
        if fault == "stale_joints":  # the hold is where the last trajectory had the joints, not the stale sample
            hold = next(m for m in reversed(rig.jtc.accepted) if len(m.points) == 1)
            position = rig.jtc.positions(hold)[0]
            _, sent = rig.node.command.sent
            assert np.all(position >= sent.min(axis=0) - 1e-9) and np.all(position <= sent.max(axis=0) + 1e-9)
            assert not np.allclose(position, [rig.robot.joint_values[j] for j in JOINTS], atol=1e-6)
        if rig.jtc is not None:
            assert rig.jtc.rejected == []
    finally:
        rig.release.set()
