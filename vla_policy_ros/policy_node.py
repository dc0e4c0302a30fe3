"""`policy_node`: camera + sensor + state topics in, action chunks (and commands) out.

Subscriptions only convert and buffer messages. A single worker thread runs inference off the
executor, on the latest synchronised observation (latest wins, never two in flight), at a fixed
rate or adaptively, and publishes `~/action_chunk`, the command trajectory (unless dry_run) and
`~/status`. `policy_type`, sampler and steps switch live through the parameter services: both
checkpoints are loaded once at start and kept, so a switch takes effect at the next inference.

async_inference: a second worker runs the backbone on each new camera frame at its own pace; the
expert worker samples at rate_hz from the newest cached features plus the freshest sensor window
and state, so the sensor reaches the actions at the expert's rate, not the cameras'.
stream_actions: a ChunkExecutor turns the chunks into one action per control period on ~/action
(receding horizon or temporal ensembling; actions whose time has passed are skipped).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float32MultiArray, Header, String
from trajectory_msgs.msg import JointTrajectory, MultiDOFJointTrajectory

from vla_models import CheckpointError, load_policy

from . import params as P
from .chunk_executor import ChunkExecutor
from .commands import ee_delta_targets, joint_trajectory, multidof_trajectory
from .image_conversion import ImageConversionError, image_to_rgb
from .msg import ActionChunk, SensorPacket
from .observation import STATE_KEY, WAITING_FOR_SENSOR, assemble, sensor_inputs
from .safety import OutputLimits, StampGuard, Watchdog
from .sensor_buffer import SensorRingBuffer
from .synchronizer import ApproximateSynchronizer



def stamp_seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class PolicyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("vla_policy", **kwargs)
        self.params = P.declare(self)
        P.validate_static(self.params)
        self.policies = {}
        for kind in P.EXPERT_TYPES:
            path = getattr(self.params, f"{kind}_checkpoint")
            if path:
                self.policies[kind] = load_policy(path, device=self.params.device)
                self.get_logger().info(f"loaded {kind} policy from {path}")
        self.spec = self._input_spec()
        self._lock = threading.Lock()
        self.stats = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10)
        self.instruction = self.params.instruction
        self.pose: tuple[np.ndarray, np.ndarray] | None = None
        self.joints: tuple[list[str], np.ndarray] | None = None
        self.last_stamp: float | None = None
        self.last_error = ""
        self.last_limit = ""
        self.limits = self._output_limits()
        self.stamp_guard = StampGuard(self.params.future_stamp_tolerance_s)
        watched = list(self.spec["views"]) + (["sensor"] if self.spec["sensor_channels"] else []) + (
            [STATE_KEY] if self.spec["state_dim"] else [])
        self.watchdog = Watchdog(watched, self.params.input_timeout_s)
        self.stale: list[str] = []
        sync_inputs = list(self.spec["views"]) + ([STATE_KEY] if self.spec["state_dim"] else [])
        self.sync = ApproximateSynchronizer(sync_inputs, self.params.slop_s)
        channels, window = self.spec["sensor_channels"], self.spec["sensor_window"]
        self.sensor = SensorRingBuffer(max(4 * window, 1), channels) if channels else None
        self._subscribe()
        self.chunk_pub = self.create_publisher(ActionChunk, "~/action_chunk", 10)
        self.action_pub = self.create_publisher(ActionChunk, "~/action", 10)
        command_type = MultiDOFJointTrajectory if self.params.action_space == "ee_delta" else JointTrajectory
        self.command_pub = self.create_publisher(command_type, "~/command_trajectory", 10)
        self.status_pub = self.create_publisher(DiagnosticArray, "~/status", 10)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.create_timer(1.0, self._publish_status)
        self.latest_state: tuple[float, np.ndarray] | None = None
        self.features: tuple[str, float, object] | None = None  # async: (policy_type, frame stamp, Features)
        self.event_times = {k: collections.deque(maxlen=50) for k in ("backbone", "chunk", "tick")}
        self.sensor_to_action: collections.deque[float] = collections.deque(maxlen=50)
        dt = next(iter(self.policies.values())).config.dt
        self.chunk_executor = ChunkExecutor(dt, self.params.execution_mode, self.params.execute_steps,
                                      self.params.ensemble_decay) if self.params.stream_actions else None
        if self.chunk_executor is not None:
            self.create_timer(dt, self._tick)
        # Torch releases the GIL around each op; with the executor's threads busy in Python, every
        # re-acquire waited up to the 5 ms switch interval (a 10 ms backbone took seconds).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._inference_loop, name="vla_inference", daemon=True)]
        if self.params.async_inference and self.spec["views"]:
            self._workers.append(threading.Thread(target=self._backbone_loop, name="vla_backbone", daemon=True))
        for worker in self._workers:
            worker.start()

    # -- set-up -----------------------------------------------------------------------------------
    def _input_spec(self) -> dict:
        specs = {}
        for kind, policy in self.policies.items():
            c = policy.config
            specs[kind] = {"views": tuple(c.views), "sensor_channels": c.sensor.channels,
                           "sensor_window": c.sensor.window, "state_dim": c.state.dim}
        first = next(iter(specs.values()))
        for kind, spec in specs.items():
            if spec != first:
                raise ValueError(f"the checkpoints expect different inputs ({specs}); both policy types must share "
                                 "views, sensor channels and state size to switch live")
        topics = self.params.image_topics
        if topics and len(topics) != len(first["views"]):
            raise ValueError(f"parameter image_topics: expected {len(first['views'])} topics for views "
                             f"{list(first['views'])}, got {list(topics)}")
        return first

    def _output_limits(self) -> OutputLimits:
        p = self.params
        action_dim = next(iter(self.policies.values())).config.action_dim
        max_delta = np.asarray(p.max_delta, float) if p.max_delta else np.full(action_dim, np.inf)
        if max_delta.size not in (1, action_dim):
            raise ValueError(f"parameter max_delta: expected [] , 1 or {action_dim} values, got {list(p.max_delta)}")
        return OutputLimits(max_delta=max_delta, workspace_min=p.workspace_min or np.full(3, -np.inf),
                            workspace_max=p.workspace_max or np.full(3, np.inf),
                            max_speed=p.max_speed if p.max_speed > 0 else np.inf, mode=p.limit_mode)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _accept(self, what: str, msg, size: int) -> bool:
        """Size and header-stamp checks shared by every input; counts and warns on a drop."""
        if size > self.params.max_message_bytes:
            self._drop(what, f"{size} bytes is over max_message_bytes {self.params.max_message_bytes}")
            return False
        if hasattr(msg, "header"):
            reason = self.stamp_guard.check(what, stamp_seconds(msg.header.stamp), self._now())
            if reason:
                self._drop(what, reason)
                return False
        return True

    def _subscribe(self) -> None:
        topics = self.params.image_topics or tuple(f"camera/{v}/image_raw" for v in self.spec["views"])
        for view, topic in zip(self.spec["views"], topics):
            kind = CompressedImage if topic.endswith("/compressed") else Image
            self.create_subscription(kind, topic, lambda msg, v=view: self._on_image(v, msg), qos_profile_sensor_data)
        if self.sensor is not None:
            kind = {"wrench": WrenchStamped, "packet": SensorPacket, "array": Float32MultiArray}[self.params.sensor_type]
            self.create_subscription(kind, self.params.sensor_topic, self._on_sensor, qos_profile_sensor_data)
        if self.spec["state_dim"] or self.params.action_space == "joint_delta":
            kind = PoseStamped if self.params.state_type == "pose" else JointState
            self.create_subscription(kind, self.params.state_topic, self._on_state, 10)
        pose_topic = self.params.pose_topic
        if pose_topic and (pose_topic != self.params.state_topic or self.params.state_type != "pose"):
            self.create_subscription(PoseStamped, pose_topic, self._on_pose, 10)
        self.create_subscription(String, self.params.instruction_topic, self._on_instruction, 10)

    # -- subscriptions: convert, validate, buffer -------------------------------------------------
    def _drop(self, what: str, reason: str) -> None:
        self.stats[f"dropped_{what}"] += 1
        self.get_logger().warning(f"dropped a {what} message: {reason}", throttle_duration_sec=5.0)

    def _on_image(self, view: str, msg) -> None:
        if not self._accept(view, msg, len(msg.data)):
            return
        try:
            rgb = image_to_rgb(msg)
        except ImageConversionError as exc:
            return self._drop(f"image[{view}]", str(exc))
        self.sync.add(view, stamp_seconds(msg.header.stamp), rgb)
        self.watchdog.feed(view, self._now())

    def _on_sensor(self, msg) -> None:
        c = self.spec["sensor_channels"]
        if not self._accept("sensor", msg, 4 * len(getattr(msg, "data", ()))):
            return
        if isinstance(msg, WrenchStamped):
            f, t = msg.wrench.force, msg.wrench.torque
            samples = np.array([[f.x, f.y, f.z, t.x, t.y, t.z]], np.float32)
            stamps = np.array([stamp_seconds(msg.header.stamp)])
        elif isinstance(msg, SensorPacket):
            samples = np.asarray(msg.data, np.float32)
            if msg.channels == 0 or samples.size != msg.num_samples * msg.channels:
                return self._drop("sensor", f"data has {samples.size} values; expected num_samples x channels = "
                                            f"{msg.num_samples} x {msg.channels}")
            samples = samples.reshape(msg.num_samples, msg.channels)
            if msg.sample_stamps:
                stamps = np.array([stamp_seconds(s) for s in msg.sample_stamps])
            elif msg.sample_rate > 0:
                stamps = stamp_seconds(msg.header.stamp) + np.arange(msg.num_samples) / msg.sample_rate
            else:
                return self._drop("sensor", "neither sample_stamps nor a sample_rate > 0")
        else:  # Float32MultiArray: no header, stamped on receipt
            samples = np.asarray(msg.data, np.float32)
            if samples.size == 0 or samples.size % c:
                return self._drop("sensor", f"{samples.size} values is not a whole number of {c}-channel samples")
            samples = samples.reshape(-1, c)
            stamps = np.full(len(samples), self.get_clock().now().nanoseconds * 1e-9)
        if samples.shape[1] != c:
            return self._drop("sensor", f"{samples.shape[1]} channels; the policy expects {c}")
        if len(stamps) != len(samples):
            return self._drop("sensor", f"{len(stamps)} stamps for {len(samples)} samples")
        if not np.isfinite(samples).all() or not np.isfinite(stamps).all():
            return self._drop("sensor", "NaN or inf values")
        if len(stamps) > 1 and np.any(np.diff(stamps) < 0):
            return self._drop("sensor", "sample stamps go backwards")
        self.sensor.extend(stamps, samples)
        self.watchdog.feed("sensor", self._now())

    def _on_state(self, msg) -> None:
        if not self._accept(STATE_KEY, msg, 8 * len(getattr(msg, "position", ()))):
            return
        if isinstance(msg, PoseStamped):
            p, q = msg.pose.position, msg.pose.orientation
            state = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], np.float32)
            self._on_pose(msg)
        else:
            state = np.asarray(msg.position, np.float32)
            self.joints = (list(msg.name), state.astype(float))
        dim = self.spec["state_dim"]
        if not dim:
            return
        if state.shape != (dim,) or not np.isfinite(state).all():
            return self._drop("state", f"expected {dim} finite values, got {state.shape[0]}")
        self.sync.add(STATE_KEY, stamp_seconds(msg.header.stamp), state)
        self.latest_state = (stamp_seconds(msg.header.stamp), state)
        self.watchdog.feed(STATE_KEY, self._now())

    def _on_pose(self, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        position, orientation = np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])
        if not (np.isfinite(position).all() and np.isfinite(orientation).all()) or np.linalg.norm(orientation) < 1e-6:
            return self._drop("pose", "non-finite position or a zero quaternion")
        self.pose = (position, orientation)

    def _on_instruction(self, msg: String) -> None:
        self.instruction = msg.data

    # -- parameters ---------------------------------------------------------------------------------
    def _validate_parameters(self, changes) -> SetParametersResult:
        steps = max((p.config.expert.num_train_timesteps for p in self.policies.values()), default=None)
        for change in changes:
            reason = P.validate(change.name, change.value, steps, set(self.policies), set())
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changes) -> None:
        with self._lock:
            self.params = P.read(self)
            if any(c.name == "instruction" for c in changes):
                self.instruction = self.params.instruction
        self.get_logger().info("parameters: " + ", ".join(f"{c.name}={c.value}" for c in changes))

    # -- inference ----------------------------------------------------------------------------------
    def assemble_observation(self) -> tuple[float, dict] | None:
        """The latest synchronised observation (batch 1) and its stamp, or None while inputs are missing."""
        result = assemble(self.sync, self.sensor, self.spec["views"], self.spec["sensor_window"], self.instruction,
                          self.params.max_sensor_lag_s)
        if result == WAITING_FOR_SENSOR:
            self.stats["waiting_for_sensor"] += 1
            return None
        return result

    def assemble_async_observation(self) -> tuple[float, dict, object] | None:
        """Async: the newest cached backbone features + the freshest sensor window and state.

        The stamp is that of the freshest input (newest sensor sample, else state, else frame).
        None while features, state or any sensor sample are missing, features are of another policy
        type, or older than max_feature_age_s.
        """
        with self._lock:
            features, policy_type = self.features, self.params.policy_type
        if features is None or features[0] != policy_type:
            return None
        stamps = [features[1]]
        obs: dict = {}
        if self.spec["state_dim"]:
            if self.latest_state is None:
                return None
            stamps.append(self.latest_state[0])
            obs["state"] = self.latest_state[1][None]
        if self.sensor is not None:
            newest = self.sensor.newest_stamp()
            if newest is None:  # never act on an empty sensor window
                self.stats["waiting_for_sensor"] += 1
                return None
            stamps.append(newest)
            obs.update(sensor_inputs(self.sensor, self.spec["sensor_window"], max(stamps)))
        stamp = max(stamps)
        if stamp - features[1] > self.params.max_feature_age_s:
            self.stats["stale_features"] += 1
            return None
        return stamp, obs, features[2]

    def _share_cpu(self) -> None:
        """Async on a CPU: fewer intra-op threads (process-wide), so that the two workers' ops do not
        oversubscribe the cores."""
        if self.params.async_inference and torch.device(self.params.device).type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    def _backbone_loop(self) -> None:
        """Async: backbone features of each new synchronised frame, for the active policy type."""
        self._share_cpu()
        done: tuple[str, tuple] | None = None
        while not self._stop.is_set():
            matched = self.sync.latest()
            with self._lock:
                policy_type, instruction = self.params.policy_type, self.instruction
            frame = tuple(matched[1][v][0] for v in self.spec["views"]) if matched else None
            if matched is None or (policy_type, frame) == done:  # a new state alone is no new frame
                self._stop.wait(0.002)
                continue
            stamp, chosen = max(frame), matched[1]
            obs = {"images": {v: chosen[v][1][None] for v in self.spec["views"]}, "instruction": [instruction]}
            try:
                features = self.policies[policy_type].encode_images(obs)
            except Exception as exc:  # noqa: BLE001 - reported in status; the node keeps serving
                self.stats["backbone_errors"] += 1
                self.last_error = f"backbone: {type(exc).__name__}: {exc}"
                self._stop.wait(0.1)
                continue
            with self._lock:
                self.features = (policy_type, stamp, features)
            done = (policy_type, frame)
            self.stats["backbone_runs"] += 1
            self.event_times["backbone"].append(time.monotonic())

    def _interval(self) -> float:
        if self.params.rate_hz > 0:
            return 1.0 / self.params.rate_hz
        mean = (sum(self.latencies) / len(self.latencies)) if len(self.latencies) >= 5 else 0.0
        return max(1.15 * mean, self.params.min_interval_s)

    def _inference_loop(self) -> None:
        self._share_cpu()
        next_time = time.monotonic()
        while not self._stop.is_set():
            self._stop.wait(max(0.0, next_time - time.monotonic()))
            next_time = time.monotonic() + self._interval()
            try:
                self.infer_once()
            except Exception as exc:  # noqa: BLE001 - the node keeps serving; status reports it
                self.stats["inference_errors"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.get_logger().error(f"inference failed: {self.last_error}", throttle_duration_sec=5.0)

    def infer_once(self) -> bool:
        """Run one inference on the latest observation if it is new; True when a chunk was published."""
        self.stale = self.watchdog.stale(self._now())
        if self.stale:  # never act on old data: no chunk, no command until fresh inputs arrive
            self.stats["stale_skips"] += 1
            return False
        features = None
        sensor_newest = self.sensor.newest_stamp() if self.sensor is not None else None
        if self.params.async_inference and self.spec["views"]:
            assembled = self.assemble_async_observation()
            if assembled is not None:
                stamp, obs, features = assembled
                assembled = (stamp, obs)
        else:
            assembled = self.assemble_observation()
        if assembled is None or assembled[0] == self.last_stamp:
            return False
        stamp, obs = assembled
        with self._lock:
            params = self.params
        policy = self.policies[params.policy_type]
        overrides = {}
        if params.policy_type == "diffusion":
            overrides = {"sampler": params.sampler, "ddim_steps": params.ddim_steps}
        start = time.perf_counter()
        chunk = policy.predict_action_chunk(obs, seed=params.seed if params.seed >= 0 else None, vl_features=features,
                                            **overrides)
        latency = (time.perf_counter() - start) * 1e3
        chunk = chunk[0].cpu().numpy()  # (H, A)
        self.latencies.append(latency / 1e3)
        self.last_stamp = stamp
        self.stats["inferences"] += 1
        header = Header(frame_id=params.frame_id)
        header.stamp = Time(nanoseconds=int(round(stamp * 1e9))).to_msg()
        if not np.isfinite(chunk).all():
            self.stats["non_finite_chunks"] += 1
            self.last_error = "the model produced non-finite actions; nothing was published"
            return False
        self.chunk_pub.publish(self._chunk_message(header, params, policy, chunk, latency))
        self.event_times["chunk"].append(time.monotonic())
        if sensor_newest is not None:  # from the newest sensor sample this chunk used to its publication
            self.sensor_to_action.append(self._now() - min(sensor_newest, stamp))
        if self.chunk_executor is not None:
            with self._lock:
                self.chunk_executor.execute_steps = params.execute_steps
                self.chunk_executor.add_chunk(stamp, chunk)
        if not params.dry_run:
            self._publish_command(header, params, policy.config.dt, chunk)
        return True

    def _tick(self) -> None:
        """stream_actions: the action due now (holding when none is), within the output limits."""
        with self._lock:
            executed = self.chunk_executor.action_at(self._now())
            params = self.params
        self.event_times["tick"].append(time.monotonic())
        if executed is None or params.dry_run:
            return
        limited = self.limits.apply_chunk(executed.action[None])
        self._limit_outcome(limited)
        if limited.chunk is None:
            return
        policy = self.policies[params.policy_type]
        header = Header(frame_id=params.frame_id, stamp=self.get_clock().now().to_msg())
        self.action_pub.publish(ActionChunk(header=header, policy_type=params.policy_type, horizon=1,
                                            action_dim=policy.config.action_dim, dt=policy.config.dt,
                                            action_names=list(policy.config.action_names),
                                            actions=limited.chunk.astype(np.float32).ravel().tolist()))
        self.stats["actions"] += 1

    def _chunk_message(self, header, params, policy, chunk: np.ndarray, latency: float) -> ActionChunk:
        c = policy.config
        diffusion = params.policy_type == "diffusion"
        steps = (params.ddim_steps if params.sampler == "ddim" else c.expert.num_train_timesteps) if diffusion else 0
        timings = {k: v for k, v in policy.last_timings.items() if k != "total_ms"}
        return ActionChunk(header=header, policy_type=params.policy_type, sampler=params.sampler if diffusion else "",
                           num_steps=steps, horizon=c.horizon, action_dim=c.action_dim, dt=c.dt,
                           action_names=list(c.action_names), actions=chunk.astype(np.float32).ravel().tolist(),
                           latency_ms=latency, stage_names=list(timings),
                           stage_latency_ms=[float(v) for v in timings.values()])

    def _publish_command(self, header, params, dt: float, chunk: np.ndarray) -> None:
        """The command trajectory, within the output limits (clipped or rejected, counted in status)."""
        limited = self.limits.apply_chunk(chunk)
        if limited.chunk is None:
            return self._limit_outcome(limited)
        if params.action_space == "ee_delta":
            if self.pose is None:
                self.stats["commands_without_pose"] += 1
                self.last_error = "no current end-effector pose yet: command not published"
                return
            position, orientation = self.pose
            positions, orientations = ee_delta_targets(limited.chunk, position, orientation, params.translation_scale,
                                                       params.rotation_scale)
            targets = self.limits.apply_targets(positions, position, dt)
            if targets.positions is None:
                return self._limit_outcome(targets)
            self._limit_outcome(targets if targets.outcome != "ok" else limited)
            self.command_pub.publish(multidof_trajectory(header, targets.positions, orientations, dt))
        else:
            if self.joints is None:
                self.last_error = "no joint state yet: command not published"
                return
            self._limit_outcome(limited)
            names = list(params.joint_names) or self.joints[0]
            self.command_pub.publish(joint_trajectory(header, names, self.joints[1][:len(names)], limited.chunk, dt))
        self.stats["commands"] += 1

    def _limit_outcome(self, result) -> None:
        if result.outcome != "ok":
            self.stats[f"commands_{result.outcome}"] += 1
            self.last_limit = f"{result.outcome}: {result.reason}"
            self.get_logger().warning(f"command {self.last_limit}", throttle_duration_sec=5.0)

    # -- status -------------------------------------------------------------------------------------
    def _publish_status(self) -> None:
        params = self.params
        waiting = (bool(self.sync.names) and self.sync.latest() is None) or \
            (self.sensor is not None and self.sensor.newest_stamp() is None)  # no sample: no inference
        level = DiagnosticStatus.WARN if (waiting or self.last_error or self.stale) else DiagnosticStatus.OK
        values = {"policy_type": params.policy_type, "sampler": params.sampler, "ddim_steps": params.ddim_steps,
                  "dry_run": params.dry_run, "loaded": ",".join(sorted(self.policies)),
                  "last_latency_ms": f"{self.latencies[-1] * 1e3:.1f}" if self.latencies else "",
                  "waiting_for_inputs": waiting, "stale_inputs": ",".join(self.stale), "limit_mode": params.limit_mode,
                  "last_limit": self.last_limit, "last_error": self.last_error,
                  **{f"{k}_hz": f"{_rate(v):.1f}" for k, v in self.event_times.items() if len(v) > 1},
                  "sensor_to_action_ms": f"{1e3 * float(np.median(self.sensor_to_action)):.1f}"
                  if self.sensor_to_action else "", **self.stats}
        if self.chunk_executor is not None:
            values.update({f"executor_{k}": v for k, v in self.chunk_executor.counts.items()})
        status = DiagnosticStatus(level=level, name=self.get_fully_qualified_name(), hardware_id="vla_policy",
                                  message=("stale: " + ", ".join(self.stale)) if self.stale else
                                  "waiting for inputs" if waiting else (self.last_error or "serving"),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(array)

    def shutdown(self) -> None:
        self._stop.set()
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout=5.0)


def _rate(times) -> float:
    """Events per second over the recorded monotonic times."""
    return (len(times) - 1) / max(times[-1] - times[0], 1e-9)


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = PolicyNode()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ValueError, OSError, CheckpointError) as exc:  # bad parameters or checkpoints: one clear line, exit 1
        print(f"policy_node: error: {exc}", flush=True)
        return 1
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
