"""A JointTrajectoryController as it *executes* a trajectory (ros2_controllers `Trajectory::sample`), on a
kinematic arm that publishes its joint states at 500 Hz, for tests and bench/jtc_timing.py.

What the real controller does with a trajectory message, reproduced here:
- on receipt it remembers its current state and the time (`state_before`, `time_before`); the
  trajectory starts at the header stamp, or on receipt when the stamp is zero;
- before the first point's time it interpolates from `state_before` to the first point;
- between two points it interpolates between them (linear with positions only, cubic Hermite when
  the points carry velocities); points whose time has passed are skipped, so a trajectory whose
  first points are already due makes the arm *jump* into the middle of it;
- after the last point it holds the last point; a new message replaces the running trajectory; a message
  without points is rejected (`validate_trajectory_msg`: "Empty trajectory received."), the running one goes on.
The arm follows the sampled position exactly (a perfect position loop), so what the arm does is
what the controller commands: its speed is what a real joint would be asked for. It runs in a process of
its own (`ArmProcess`), as the controller runs in controller_manager's: in the test's process the policy
node's inference and callbacks would delay its receipt of a trajectory while it executes the last one.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from geometry_msgs.msg import WrenchStamped
from rclpy.node import Node
from ros_helpers import stamp, start_policy_node
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from vla_policy_ros.image_conversion import rgb_to_image_msg


JOINTS = [f"joint_{i}" for i in range(1, 7)]
VELOCITY = 1.0  # rad/s, every joint (a real arm's order of magnitude, not 500)
URDF = "<robot name='arm6'><link name='base'/>" + "".join(
    f"<link name='l{i}'/><joint name='{n}' type='revolute'><parent link='{'base' if i == 0 else f'l{i - 1}'}'/>"
    f"<child link='l{i}'/><axis xyz='0 0 1'/><limit lower='-3' upper='3' velocity='{VELOCITY}' effort='1'/></joint>"
    for i, n in enumerate(JOINTS)) + "</robot>"


def arm_policy_checkpoint(directory: Path) -> str:
    """A tiny policy whose joint deltas ask for up to 0.3 rad per 0.1 s step: 3x the URDF's 1 rad/s."""
    import torch

    from vla_models import build_policy, preset
    from vla_models.testing import fit_fake_statistics

    torch.manual_seed(0)
    policy = build_policy(preset("tiny", **{"expert.type": "regression", "action_dim": 6, "action_names": JOINTS,
                                            "state.dim": 6}))
    fit_fake_statistics(policy)
    policy.normalizer["action"].fit(torch.tensor([[-0.3] * 6, [0.3] * 6]))
    return str(policy.eval().save(Path(directory) / "regression"))


def _seconds(t) -> float:
    return t.sec + t.nanosec * 1e-9


@dataclass
class _Trajectory:
    time_before: float
    position_before: np.ndarray
    velocity_before: np.ndarray
    times: np.ndarray  # (P,) absolute
    positions: np.ndarray  # (P, J)
    velocities: np.ndarray | None  # (P, J) when every point has them


def _hermite(t0, p0, v0, t1, p1, v1, t):
    h = t1 - t0
    s = (t - t0) / h
    h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
    return h00 * p0 + h10 * h * v0 + h01 * p1 + h11 * h * v1


class TrajectoryExecution:
    """The controller's trajectory sampling, in the controller's joint order; no ROS here."""

    def __init__(self, joints: list[str], start: np.ndarray) -> None:
        self.joints = list(joints)
        self.position = np.asarray(start, float).copy()
        self.velocity = np.zeros(len(joints))
        self.trajectory: _Trajectory | None = None

    def receive(self, msg: JointTrajectory, now: float) -> None:
        """A new trajectory replaces the running one, starting from the state now."""
        if not msg.points:  # the real controller rejects it ("Empty trajectory received.") and runs on
            return
        order = [list(msg.joint_names).index(n) for n in self.joints]
        start = _seconds(msg.header.stamp) or now
        times = np.array([start + _seconds(p.time_from_start) for p in msg.points])
        positions = np.array([[p.positions[i] for i in order] for p in msg.points], float)
        velocities = np.array([[p.velocities[i] for i in order] for p in msg.points], float) \
            if all(len(p.velocities) for p in msg.points) else None
        self.trajectory = _Trajectory(now, self.position.copy(), self.velocity.copy(), times, positions, velocities)

    def sample(self, t: float) -> np.ndarray:
        tr = self.trajectory
        if tr is None:
            return self.position
        if t < tr.times[0]:  # before the first point: from the state the trajectory arrived in
            t = max(t, tr.time_before)  # (never extrapolated back before its arrival)
            p0, v0, t0 = tr.position_before, tr.velocity_before, tr.time_before
            p1, t1 = tr.positions[0], tr.times[0]
            v1 = tr.velocities[0] if tr.velocities is not None else None
        elif t >= tr.times[-1]:
            return tr.positions[-1]
        else:
            i = int(np.searchsorted(tr.times, t, side="right")) - 1  # the segment holding t (past points skipped)
            t0, p0, t1, p1 = tr.times[i], tr.positions[i], tr.times[i + 1], tr.positions[i + 1]
            v0 = tr.velocities[i] if tr.velocities is not None else None
            v1 = tr.velocities[i + 1] if tr.velocities is not None else None
        if t1 <= t0:
            return p1
        if v0 is None or v1 is None:  # positions only: linear
            return p0 + (p1 - p0) * (t - t0) / (t1 - t0)
        return _hermite(t0, p0, v0, t1, p1, v1, t)

    def step(self, t: float, dt: float) -> np.ndarray:
        new = np.asarray(self.sample(t), float)
        self.velocity = (new - self.position) / dt
        self.position = new
        return new


class KinematicArm(Node):
    """The JTC's topic interface over a kinematic arm: executes trajectories, publishes /joint_states at
    `rate_hz` (wall clock) and records (time, positions) of every update."""

    def __init__(self, context, joints: list[str], start: np.ndarray, rate_hz: float = 500.0,
                 topic: str = "/joint_trajectory_controller/joint_trajectory") -> None:
        super().__init__("kinematic_arm", context=context)
        self.execution = TrajectoryExecution(joints, start)
        self.period = 1.0 / rate_hz
        self.log: list[tuple[float, np.ndarray]] = []
        # per trajectory: receipt time, points, first point's time from start, position on receipt, first point
        self.receipts: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.states = self.create_publisher(JointState, "joint_states", 100)
        self.create_subscription(JointTrajectory, topic, self._on_trajectory, 100)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        with self._lock:
            now = time.time()
            before = self.execution.position.copy()
            self.execution.receive(msg, now)
            if msg.points:
                first = self.execution.trajectory.positions[0]
                self.receipts.append(np.concatenate([[now, len(msg.points), _seconds(msg.points[0].time_from_start)],
                                                     before, first]))

    def _run(self) -> None:
        next_t = time.time()
        while not self._stop.is_set():
            with self._lock:  # the time read under the lock: a trajectory received in between starts later than it
                now = time.time()
                position = self.execution.step(now, self.period if not self.log else now - self.log[-1][0]).copy()
            self.log.append((now, position))
            msg = JointState(name=list(self.execution.joints), position=position.tolist())
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1) * 1e9)
            self.states.publish(msg)
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.time()))

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        super().destroy_node()


def speeds(times: np.ndarray, positions: np.ndarray, since: float = 0.0) -> np.ndarray:
    """(N, J) |joint velocity| between consecutive arm updates after `since` (s since the epoch)."""
    keep = times >= since
    return np.abs(np.diff(positions[keep], axis=0)) / np.diff(times[keep])[:, None]


@dataclass
class ArmLog:
    """What the kinematic arm did: every update (times (N,), positions (N, J)) and every trajectory it received
    (rows of KinematicArm.receipts)."""

    times: np.ndarray
    positions: np.ndarray
    receipts: np.ndarray


@dataclass
class ArmRun:
    """drive_arm's result: the largest executed joint speed over the URDF limit, how far the arm went, the node,
    and, when the speed was over the limit, what the arm was doing then."""

    ratio: float
    travelled: float
    node: object
    diagnosis: str = ""


class ArmProcess:
    """`KinematicArm` in a child process on the harness's domain; `stop()` returns its ArmLog."""

    def __init__(self, ros, joints: list[str], start: np.ndarray) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="kinematic-arm-")
        self.log_path = Path(self._dir.name) / "log.npz"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--domain", str(ros.domain_id), "--log", str(self.log_path),
             "--joints", *joints, "--start", *map(str, start)], stdin=subprocess.PIPE)

    def stop(self) -> ArmLog:
        try:
            self.process.communicate(timeout=20)  # stdin closed: the arm stops and writes its log
            if self.process.returncode != 0 or not self.log_path.exists():
                raise AssertionError(f"the kinematic arm process failed (exit {self.process.returncode})")
            with np.load(self.log_path) as log:
                return ArmLog(log["times"], log["positions"], log["receipts"])
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._dir.cleanup()


def _arm_main(argv: list[str] | None = None) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vla_policy_ros.spinning import spin

    parser = argparse.ArgumentParser(description="the kinematic arm for the JTC tests (runs until stdin closes)")
    parser.add_argument("--domain", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--joints", nargs="+", required=True)
    parser.add_argument("--start", type=float, nargs="+", required=True)
    args = parser.parse_args(argv)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=args.domain)
    arm = KinematicArm(context, args.joints, np.array(args.start))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(arm)
    done = threading.Event()
    spinner = threading.Thread(target=spin, args=(executor, context), kwargs={"until": done.is_set}, daemon=True)
    spinner.start()
    sys.stdin.read()  # until the parent closes it
    done.set()
    spinner.join(timeout=5.0)
    arm.destroy_node()
    executor.shutdown()
    rclpy.try_shutdown(context=context)
    times = np.array([t for t, _ in arm.log])
    positions = np.array([p for _, p in arm.log])
    partial = args.log + ".partial.npz"
    np.savez(partial, times=times, positions=positions,
             receipts=np.array(arm.receipts).reshape(len(arm.receipts), 3 + 2 * len(args.joints)))
    os.replace(partial, args.log)
    return 0


def _drive(ros, checkpoint, latency_s, seconds):
    """Start the node, feed it frames `latency_s` old, arm it, wait for 10 trajectories and `seconds`;
    returns (node, the time it was armed)."""
    node = start_policy_node(ros, {"regression_checkpoint": checkpoint, "sensor_topic": "sensor", "rate_hz": 10.0,
                                   "slop_s": 0.02, "input_timeout_s": 1.0, "max_command_age_s": 1.0,
                                   "sensor_timeout_s": 1.0, "joint_state_timeout_s": 1.0,
                                   "command_interface": "joint_trajectory", "robot_description": URDF})
    camera = ros.add(Node("camera", context=ros.context))
    pubs = {v: camera.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in ("front", "wrist")}
    sensor = camera.create_publisher(WrenchStamped, "sensor", 10)
    sent = []  # the trajectories on the controller's topic
    camera.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", sent.append, 100)
    rng, stop = np.random.default_rng(0), threading.Event()

    def frames():
        while not stop.is_set():
            t = time.time() - latency_s  # taken latency_s ago
            for pub in pubs.values():
                pub.publish(rgb_to_image_msg(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), stamp(t)))
            w = WrenchStamped()
            w.header.stamp = stamp(t)
            sensor.publish(w)
            stop.wait(0.05)

    thread = threading.Thread(target=frames, daemon=True)
    thread.start()
    try:
        ros.wait_for(lambda: node.stats.get("inferences", 0) >= 2, timeout=60, what="inference on the arm's inputs")
        client = camera.create_client(SetBool, "/vla_policy/enable")
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(SetBool.Request(data=True))
        ros.wait_for(future.done, what="~/enable")
        assert future.result().success, future.result().message
        armed_at = time.time()
        ros.wait_for(lambda: len(sent) >= 10 and node.stats.get("commands", 0) >= 10, timeout=60,
                     what="10 trajectories commanded")
        time.sleep(seconds - min(seconds, time.time() - armed_at))
    finally:
        stop.set()
        thread.join()
    return node, armed_at


def drive_arm(ros, checkpoint, latency_s, seconds=3.0):
    """The armed node commanding the kinematic arm through the JTC's topic while its camera frames are
    `latency_s` old on arrival; the arm's joint speeds / URDF limit, from arming on."""
    arm = ArmProcess(ros, JOINTS, np.zeros(6))
    try:
        node, armed_at = _drive(ros, checkpoint, latency_s, seconds)
    finally:
        log = arm.stop()
    assert len(log.receipts) >= 10, f"the arm received {len(log.receipts)} trajectories"
    ratio = float(speeds(log.times, log.positions, since=armed_at).max() / VELOCITY)
    return ArmRun(ratio, float(np.abs(log.positions[-1]).max()), node,
                  _diagnose(log, armed_at) if ratio > 1.05 else "")


def _diagnose(log: ArmLog, since: float) -> str:
    """The fastest update after `since` and the trajectories received around it."""
    keep = log.times >= since
    times, positions = log.times[keep], log.positions[keep]
    k = int(speeds(times, positions).max(axis=1).argmax())
    t = times[k + 1]
    lines = [f"fastest between t={times[k] - since:.4f} and {t - since:.4f} s after arming: "
             f"{np.round(positions[k], 4).tolist()} -> {np.round(positions[k + 1], 4).tolist()}"]
    receipts = log.receipts
    for r in receipts[(receipts[:, 0] > t - 0.5) & (receipts[:, 0] < t + 0.1)]:
        j = (len(r) - 3) // 2
        lines.append(f"trajectory received at {r[0] - since:.4f} s: {int(r[1])} points, first at +{r[2]:.4f} s, "
                     f"arm {np.round(r[3:3 + j], 4).tolist()} -> first point {np.round(r[3 + j:], 4).tolist()}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(_arm_main())
