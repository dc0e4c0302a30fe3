"""`sim_robot_node`: a Meta-World task behind the topics a real robot would use.

Publishes, stamped on one simulated clock (also published on /clock, so nodes run with
use_sim_time:=true see the same time):
- camera/<view>/image_raw (sensor_msgs/Image, rgb8) for each rendered view,
- sensor (vla_policy_ros/SensorPacket): the 12-channel contact wrench at every physics substep,
  batched per control step with per-sample stamps,
- joint_states (sensor_msgs/JointState): the task's 39-value observation as `position`,
- ee_pose (geometry_msgs/PoseStamped, frame `world`): the commanded end-effector pose (the mocap body the
  hand follows through a weld; the hand itself sags a few mm below it under gravity, as an impedance-
  controlled arm's measured pose differs from its setpoint),
- ~/executed_action (vla_policy_ros/ActionChunk, horizon 1): each action applied, stamped at its step,
- ~/episode_result (std_msgs/String, JSON): success and length of each episode.
It executes the first `execute_steps` actions of each ActionChunk it receives (receding horizon),
or, with `command_interface` servo_twist / pose_target, acts as a Cartesian controller would: it
takes geometry_msgs/TwistStamped (MoveIt Servo's delta_twist_cmds) or PoseStamped targets
(a cartesian controller's target_frame) in frame `world` only, and the gripper effort from a
std_msgs/Float64MultiArray (a forward command controller); non-finite or wrongly framed commands
are refused (counted in the episode result). In lockstep it waits, for each step, for the command
stamped at the simulated time of that step, after the chunk of the observation has come.

Clock: in `lockstep` (default) the simulation advances only when the chunk answering the current
observation has arrived, so the loop runs as fast as the policy allows (faster than real time when
the policy is fast) and is the same loop as the in-process `vla eval --sim`; otherwise it steps in
real time at the control rate and holds (`SimEnv.hold_action`: the setpoint where it is, the gripper at its
command) while no fresh chunk covers the current step.
`latency_s` (lockstep only) injects camera-to-command latency: each observation published is the one
taken latency_s of simulated time before the step it is published at (stamped with its own time), so
the node's chunk and commands start latency_s late, as on a robot whose camera and inference take that
long (the chunk interface skips the actions already due; the streamed ones get the node's command due
now). An episode starts with the arm holding for latency_s (simulated, counted in max_steps), as the
in-process loop holds until its first chunk arrives.
`chunk_execution` (switch | ensemble | rtc), as the policy node's: in real time the sim's own executor
plays the newest ActionChunk (switch; rtc, whose guidance the policy node does) or ensembles them
(ensemble); in lockstep the chunk interface plays the newest chunk's due rows (ensemble is refused there:
with a streamed interface the policy node ensembles before it commands).
`expert: true` drives the robot with the scripted expert instead (to record demonstrations).
The sensor history restarts at each episode: zero samples precede the first reading, as the
in-process evaluation pads its window.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool

from vla_models.runtime import ChunkExecutor
from vla_training.data.sim import STATE_NAMES, SimEnv, ViaPointExpert

from .image_conversion import rgb_to_image_msg
from .params import CHUNK_EXECUTIONS, EXECUTOR_MODE
from .msg import ActionChunk, SensorPacket

PAD_SAMPLES = 64  # zero samples before an episode's first reading (the evaluation's window)
COMMAND_INTERFACES = ("chunk", "servo_twist", "pose_target")


def to_time(seconds: float):
    return Time(nanoseconds=int(round(seconds * 1e9))).to_msg()


class SimRobotNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sim_robot", **kwargs)
        p = {name: self.declare_parameter(name, default).value for name, default in (
            ("task", "peg-insert-side-v3"), ("placement_seed", 1), ("episodes", 10), ("first_placement", 0),
            ("views", [""]), ("image_size", 96), ("execute_steps", 8), ("max_steps", 300), ("lockstep", True),
            ("chunk_topic", "/vla_policy/action_chunk"), ("chunk_timeout_s", 30.0), ("expert", False),
            ("start_time", 1000.0), ("command_interface", "chunk"), ("twist_topic", "/servo_node/delta_twist_cmds"),
            ("pose_target_topic", "/target_frame"), ("gripper_topic", "gripper_command"), ("frame", "world"),
            ("enable_service", "/vla_policy/enable"), ("latency_s", 0.0), ("chunk_execution", "switch"))}
        if p["command_interface"] not in COMMAND_INTERFACES:
            raise ValueError(f"parameter command_interface: expected one of {list(COMMAND_INTERFACES)}, "
                             f"got {p['command_interface']!r}")
        if p["latency_s"] < 0 or (p["latency_s"] > 0 and not p["lockstep"]):
            raise ValueError(f"parameter latency_s: expected >= 0, and lockstep: true when > 0, got {p['latency_s']} "
                             f"with lockstep {p['lockstep']}")
        if p["chunk_execution"] not in CHUNK_EXECUTIONS or (
                p["chunk_execution"] == "ensemble" and p["lockstep"] and p["command_interface"] == "chunk"):
            raise ValueError(f"parameter chunk_execution: expected one of {list(CHUNK_EXECUTIONS)} (ensemble of "
                             f"ActionChunks in the sim: lockstep false; with a streamed interface the policy node "
                             f"ensembles), got {p['chunk_execution']!r} with lockstep {p['lockstep']}")
        self.p = p
        views = tuple(v for v in p["views"] if v)
        self.env = SimEnv(p["task"], seed=p["placement_seed"], views=views, image_size=p["image_size"],
                          render=bool(views))
        self.dt = self.env.control_dt
        self.clock_t = float(p["start_time"])  # simulated seconds, continuing across episodes
        self.image_pubs = {v: self.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in views}
        self.sensor_pub = self.create_publisher(SensorPacket, "sensor", 100)
        self.state_pub = self.create_publisher(JointState, "joint_states", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "ee_pose", 10)
        self.action_pub = self.create_publisher(ActionChunk, "~/executed_action", 100)
        self.result_pub = self.create_publisher(String, "~/episode_result", 10)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self._chunk_lock = threading.Condition()
        self._chunks: list[tuple[float, np.ndarray]] = []
        self.create_subscription(ActionChunk, p["chunk_topic"], self._on_chunk, 10)
        self._commands: dict[int, np.ndarray] = {}  # streamed commands by stamp (ns): xyz action
        self.gripper = 0.0
        self.refused = 0
        self.command_waits: list[float] = []  # lockstep, streamed: wall time from a step's clock to its command
        if p["command_interface"] == "servo_twist":
            self.create_subscription(TwistStamped, p["twist_topic"], self._on_twist, 100)
        elif p["command_interface"] == "pose_target":
            self.create_subscription(PoseStamped, p["pose_target_topic"], self._on_pose_target, 100)
        self.create_subscription(Float64MultiArray, p["gripper_topic"], self._on_gripper, 100)
        self.results: list[dict] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # sensor samples not yet published
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim_robot", daemon=True)
        self._thread.start()

    # -- inputs ----------------------------------------------------------------------------------
    def _on_chunk(self, msg: ActionChunk) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        chunk = np.asarray(msg.actions, np.float32).reshape(msg.horizon, msg.action_dim)
        with self._chunk_lock:
            self._chunks.append((stamp, chunk))
            self._chunks = self._chunks[-20:]
            self._chunk_lock.notify_all()

    def _command(self, msg, values: list[float], to_action) -> None:
        """A streamed command: refused unless finite and in the sim's frame; else stored by its stamp."""
        if msg.header.frame_id != self.p["frame"] or not np.isfinite(values).all():
            self.refused += 1
            self.get_logger().warning(f"refused a command in frame {msg.header.frame_id!r} (expected "
                                      f"{self.p['frame']!r}) or with non-finite values", throttle_duration_sec=2.0)
            return
        ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self._chunk_lock:  # converted when its step runs: a pose target is an error from the setpoint *then*
            self._commands[ns] = (to_action, np.asarray(values, float))
            if len(self._commands) > 200:
                self._commands.pop(min(self._commands))
            self._chunk_lock.notify_all()

    def _on_twist(self, msg: TwistStamped) -> None:
        v, w = msg.twist.linear, msg.twist.angular
        # velocity (m/s) over one control period -> the env's normalised mocap delta
        self._command(msg, [v.x, v.y, v.z, w.x, w.y, w.z], lambda x: x[:3] * self.dt / self.env.env.action_scale)

    def _on_pose_target(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        # the mocap (the hand's setpoint) moves to the target: the delta from where it is now
        self._command(msg, [p.x, p.y, p.z, q.x, q.y, q.z, q.w],
                      lambda x: (x[:3] - self.env.env.data.mocap_pos[0]) / self.env.env.action_scale)

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data) == 1 and np.isfinite(msg.data[0]):
            self.gripper = float(msg.data[0])

    def _command_at(self, t: float, timeout: float) -> np.ndarray | None:
        """Lockstep, streamed: the command stamped at simulated time t (waits for it), as an env action."""
        ns = int(round(t * 1e9))
        t_start = time.monotonic()
        deadline = time.monotonic() + timeout
        with self._chunk_lock:
            while not self._stop.is_set():
                match = [k for k in self._commands if abs(k - ns) <= 1000]
                if match:
                    to_action, values = self._commands.pop(match[0])
                    xyz = to_action(values)  # as a controller does at its control cycle, from its state now
                    self.command_waits.append(time.monotonic() - t_start)
                    return np.r_[xyz, self.gripper].astype(np.float32)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._chunk_lock.wait(min(left, 0.1))
        return None

    def _chunk_for(self, stamp: float, timeout: float) -> np.ndarray | None:
        """Lockstep: the chunk computed from the observation stamped `stamp` (waits for it)."""
        deadline = time.monotonic() + timeout
        with self._chunk_lock:
            while not self._stop.is_set():
                for s, chunk in reversed(self._chunks):
                    if abs(s - stamp) < 1e-6:
                        return chunk
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._chunk_lock.wait(min(left, 0.1))
        return None

    # -- outputs ---------------------------------------------------------------------------------
    def _publish_clock(self) -> None:
        self.clock_pub.publish(Clock(clock=to_time(self.clock_t)))

    def _publish_sensor(self, samples: np.ndarray, stamps: np.ndarray) -> None:
        if len(samples) == 0:
            return
        msg = SensorPacket(channels=samples.shape[1], num_samples=len(samples), sample_rate=1.0 / self.env.physics_dt,
                           sample_stamps=[to_time(s) for s in stamps], data=samples.astype(np.float32).ravel().tolist())
        msg.header.stamp = to_time(stamps[0])
        self.sensor_pub.publish(msg)

    def _snapshot(self, record) -> tuple:
        """(time, record, mocap position, mocap quaternion wxyz) of the observation taken now."""
        return (self.clock_t, record, self.env.env.data.mocap_pos[0].copy(), self.env.env.data.mocap_quat[0].copy())

    def _publish_observation(self, record, observed=None) -> None:
        """State, pose and images stamped now (after this step's sensor samples), or those of an observation
        taken earlier (`observed`: a _snapshot, stamped with its own time: latency_s)."""
        when, record, mocap, quat = observed if observed is not None else self._snapshot(record)
        stamp = to_time(when)
        for view, pub in self.image_pubs.items():
            pub.publish(rgb_to_image_msg(record.images[view], stamp))
        state = JointState(name=list(STATE_NAMES),  # as recorded: a policy picks state.columns by name
                           position=record.state.astype(float).tolist())
        state.header.stamp = stamp
        self.state_pub.publish(state)
        pose = PoseStamped()  # the commanded end-effector pose: the mocap, which the hand follows through a weld
        pose.header.stamp, pose.header.frame_id = stamp, "world"
        w, x, y, z = quat
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in mocap)
        o = pose.pose.orientation
        o.x, o.y, o.z, o.w = float(x), float(y), float(z), float(w)
        self.pose_pub.publish(pose)

    def _step(self, action: np.ndarray):
        executed = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        msg = ActionChunk(policy_type="expert" if self.p["expert"] else "policy", horizon=1,
                          action_dim=len(executed), dt=self.dt, actions=executed.tolist())
        msg.header.stamp = to_time(self.clock_t)
        self.action_pub.publish(msg)
        start = self.env.t
        record = self.env.step(executed)
        self.clock_t += self.env.t - start
        self._pending.append((record.sensor, self.clock_t - (self.env.t - record.sensor_t)))
        return record

    def _flush_sensor(self) -> None:
        """The samples since the last observation as one packet (few messages: none lost in a burst)."""
        if self._pending:
            self._publish_sensor(np.concatenate([s for s, _ in self._pending]),
                                 np.concatenate([t for _, t in self._pending]))
            self._pending = []
        self._publish_clock()

    # -- episodes --------------------------------------------------------------------------------
    def _wait_for_peers(self) -> None:
        """Until the state and sensor have subscribers and, driven by a policy, someone publishes chunks
        (expert mode: until the executed actions have a subscriber too, e.g. a recorder)."""
        pubs = [self.state_pub, self.sensor_pub] + ([self.action_pub] if self.p["expert"] else [])
        deadline = time.monotonic() + 120.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            if all(pub.get_subscription_count() > 0 for pub in pubs) and \
                    (self.p["expert"] or self.count_publishers(self.p["chunk_topic"]) > 0):
                return
            time.sleep(0.05)
        raise RuntimeError("no peers within 120 s: nothing subscribes the robot's topics"
                           + ("" if self.p["expert"] else f" or publishes {self.p['chunk_topic']}"))

    def _arm_policy(self) -> None:
        """Commanded by the policy node (servo_twist / pose_target): arm it through its ~/enable, as the operator
        does on a robot (the node always starts disarmed)."""
        client = self.create_client(SetBool, self.p["enable_service"])
        deadline, answer = time.monotonic() + 120.0, "no answer"
        while not self._stop.is_set() and time.monotonic() < deadline:
            if client.wait_for_service(timeout_sec=1.0):
                future = client.call_async(SetBool.Request(data=True))
                while not future.done() and time.monotonic() < deadline:
                    time.sleep(0.01)
                answer = future.result().message if future.done() else answer
                if future.done() and future.result().success:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the policy node did not arm through {self.p['enable_service']} within 120 s: {answer}")

    def _run(self) -> None:
        try:
            self._wait_for_peers()
            if self.p["command_interface"] != "chunk":
                self._arm_policy()
            for k in range(self.p["episodes"]):
                if self._stop.is_set():
                    return
                self.results.append(self._episode(self.p["first_placement"] + k))
                self.result_pub.publish(String(data=json.dumps(self.results[-1])))
                self.get_logger().info(f"episode {k}: {self.results[-1]}")
        except Exception as exc:  # noqa: BLE001 - reported; the node still finishes
            self.get_logger().error(f"simulation failed: {type(exc).__name__}: {exc}")
            self.results.append({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.finished.set()

    def _episode(self, placement: int) -> dict:
        record = self.env.reset(placement)
        self.clock_t += 1.0  # a gap between episodes
        self._publish_clock()
        pad_t = self.clock_t - self.env.physics_dt * np.arange(PAD_SAMPLES, 0, -1)
        self._pending = [(np.zeros((PAD_SAMPLES - 1, record.sensor.shape[1]), np.float32), pad_t[1:]),
                         (record.sensor, np.array([self.clock_t]))]
        expert = None
        if self.p["expert"]:
            expert = ViaPointExpert(self.p["task"])
        executor = None if self.p["lockstep"] else ChunkExecutor(self.dt, EXECUTOR_MODE[self.p["chunk_execution"]],
                                                                 self.p["execute_steps"])
        latency = self.p["latency_s"]
        history = [self._snapshot(record)]  # observations, oldest first (latency_s: the one published is older)
        steps, success, chunks, holds = 0, False, 0, 0
        wall_start = time.monotonic()
        while steps < self.p["max_steps"] and not success and not self._stop.is_set():
            history = [h for h in history if h[0] >= self.clock_t - latency - 1.0]
            observed = [h for h in history if h[0] <= self.clock_t - latency + 1e-9]
            if not observed:  # latency_s: the episode's first observation is not out yet; the arm holds (in-process:
                record = self._step(self.env.hold_action())  # the steps before the first chunk arrives)
                history.append(self._snapshot(record))
                steps += 1
                holds += 1
                continue
            observed = observed[-1]
            obs_t = observed[0]
            self._flush_sensor()
            self._publish_observation(record, observed)
            if expert is not None:
                actions = [expert(record.state)]
            elif self.p["lockstep"]:
                chunk = None
                waited = 0.0
                while chunk is None and waited < self.p["chunk_timeout_s"]:
                    chunk = self._chunk_for(obs_t, 1.0)
                    waited += 1.0
                    if chunk is None:  # lost on the way? the same observation again (deduplicated by stamp)
                        self._publish_observation(record, observed)
                if chunk is None:
                    return {"placement": placement, "success": False, "length": steps, "chunks": chunks,
                            "error": f"no chunk for the observation at t={obs_t:.3f} within "
                                     f"{self.p['chunk_timeout_s']} s"}
                chunks += 1
                due = min(int(round((self.clock_t - obs_t) / self.dt)), len(chunk) - 1)  # latency: already due
                actions = chunk[due:due + self.p["execute_steps"]]
                if self.p["command_interface"] != "chunk":  # the controller's commands, one per step
                    actions = self._streamed(len(actions), record)
            else:  # real time: one control period per step; the action due now from the newest chunk, or hold
                time.sleep(max(0.0, wall_start + self.dt - time.monotonic()))
                wall_start = time.monotonic()
                with self._chunk_lock:
                    for stamp, chunk in self._chunks:
                        executor.add_chunk(stamp, chunk)
                    self._chunks.clear()
                due = executor.action_at(obs_t)
                holds += due is None
                actions = [self.env.hold_action() if due is None else due.action]
            for action in actions:
                if action is None:
                    return {"placement": placement, "success": False, "length": steps, "chunks": chunks,
                            "error": f"no {self.p['command_interface']} command at t={self.clock_t:.4f}"}
                record = self._step(action)
                history.append(self._snapshot(record))
                steps += 1
                if record.success or steps >= self.p["max_steps"]:
                    success = record.success
                    break
        self._flush_sensor()  # the last step's samples
        return {"placement": placement, "success": bool(success), "length": steps, "chunks": chunks,
                "holds": holds, "refused_commands": self.refused, "final_hand": [float(v) for v in record.state[:3]],
                "command_wait_ms_p50_p90": [round(1e3 * float(np.percentile(self.command_waits, q)), 1) for q in (50, 90)]
                if self.command_waits else []}

    def _streamed(self, count: int, record):
        """Lockstep with a streamed interface: for each of `count` steps, the command stamped at the
        step's time (the node publishes it when the simulated clock reaches it), then the step."""
        for k in range(count):
            if k:
                self._publish_clock()  # the node's command timer runs on this clock
            yield self._command_at(self.clock_t, self.p["chunk_timeout_s"])

    def summary(self) -> dict:
        done = [r for r in self.results if "success" in r]
        wins = sum(r["success"] for r in done)
        return {"task": self.p["task"], "placement_seed": self.p["placement_seed"], "episodes": len(done),
                "successes": wins, "success_rate": wins / max(len(done), 1), "per_episode": self.results}

    def shutdown(self) -> None:
        self._stop.set()
        with self._chunk_lock:
            self._chunk_lock.notify_all()
        self._thread.join(timeout=5.0)
        self.env.close()


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = SimRobotNode()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not node.finished.is_set():
            executor.spin_once(timeout_sec=0.1)
        summary = node.summary()
        print("SIM_RESULT " + json.dumps(summary), flush=True)
        code = 0 if all("error" not in r for r in node.results) else 3
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"sim_robot_node: error: {exc}", flush=True)
        code = 1
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
