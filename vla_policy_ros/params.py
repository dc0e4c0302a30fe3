"""The policy node's parameters: one table of (name, default, description, read-only), a typed view,
and the validation used for live changes. Documented key by key in config/policy.yaml."""

from __future__ import annotations

from dataclasses import dataclass, fields

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from vla_models.experts import EXPERTS

EXPERT_TYPES = tuple(EXPERTS)  # each has a `<type>_checkpoint` parameter
SENSOR_TYPES = ("wrench", "packet", "array")
STATE_TYPES = ("joint_state", "pose")
COMMAND_INTERFACES = ("joint_trajectory", "servo_twist", "servo_joint_jog", "pose_target", "none")
JOINT_INTERFACES = ("joint_trajectory", "servo_joint_jog")  # joints by name, URDF limits
SERVO_COMMAND_TYPES = {"servo_twist": "twist", "servo_joint_jog": "joint_jog"}  # MoveIt Servo's command type
# The topic each interface's controller listens on by default (remap or set command_topic for yours).
DEFAULT_COMMAND_TOPICS = {"joint_trajectory": "/joint_trajectory_controller/joint_trajectory",
                          "servo_twist": "/servo_node/delta_twist_cmds",
                          "servo_joint_jog": "/servo_node/delta_joint_cmds", "pose_target": "/target_frame", "none": ""}

# Array parameters default to empty; an empty list has no type of its own, so they are declared by type.
ARRAY_TYPES = {"image_topics": Parameter.Type.STRING_ARRAY, "action_roles": Parameter.Type.STRING_ARRAY,
               "max_delta": Parameter.Type.DOUBLE_ARRAY, "workspace_min": Parameter.Type.DOUBLE_ARRAY,
               "workspace_max": Parameter.Type.DOUBLE_ARRAY}
LIMIT_MODES = ("clip", "reject")


@dataclass
class NodeParams:
    # -- live (changeable through the parameter services while running) --
    policy_type: str = "regression"
    sampler: str = ""  # "" = the active expert's own (its checkpoint's config); the expert checks the value
    ddim_steps: int = 10  # steps of an iterative expert: DDIM steps (diffusion), Euler steps (flow)
    seed: int = -1  # >= 0: reproducible samples of the stochastic experts
    rate_hz: float = 0.0  # 0 = adaptive: interval = max(1.15 x mean recent latency, min_interval_s)
    min_interval_s: float = 0.1
    instruction: str = ""
    dry_run: bool = True  # publish chunks but no commands; live: can be switched on, off only through ~/enable
    execute_steps: int = 0  # stream_actions, receding mode: actions executed per chunk (0 = all)
    # -- fixed at start --
    autostart: bool = True  # configure and activate at start; false: wait for a lifecycle manager
    regression_checkpoint: str = ""
    diffusion_checkpoint: str = ""
    flow_checkpoint: str = ""
    device: str = "cpu"
    backbone_path: str = ""  # the backbone weights' directory on this PC ("" = the path recorded at training)
    image_topics: tuple = ()  # one per checkpoint view, in the checkpoint's order; default camera/<view>/image_raw
    sensor_topic: str = "sensor/wrench"
    sensor_type: str = "wrench"
    state_topic: str = "joint_states"
    state_type: str = "joint_state"
    pose_topic: str = ""  # current end-effector pose for ee_delta commands; "" = state_topic when state_type=pose
    ee_frame: str = ""  # cartesian commands: the ee pose from TF (base_frame <- ee_frame) when tf2_ros imports
    base_frame: str = "base_link"  # the frame the TF lookup gives the ee pose in
    instruction_topic: str = "instruction"
    slop_s: float = 0.05
    max_sensor_lag_s: float = 0.1  # wait while the newest sensor sample is older than the observation by more
    state_history_s: float = 2.0  # seconds of robot state kept and interpolated at the cameras' stamp
    # -- commands (docs/ros.md "Deploy on your arm") --
    command_interface: str = "servo_twist"
    command_topic: str = ""  # "" = the interface's usual controller topic (DEFAULT_COMMAND_TOPICS)
    joint_trajectory_action: str = ""  # joint_trajectory: a FollowJointTrajectory action instead of the topic
    servo_node: str = "/servo_node"  # servo_twist / servo_joint_jog: MoveIt Servo's node (its pause/start services, status); "" = none
    command_frame: str = ""  # cartesian commands: "" = the frame of the pose messages
    command_rate_hz: float = 100.0  # streamed interfaces: commands per second
    pose_reference: str = "measured"  # pose_target: deltas from the measured pose, or from the last setpoint
    action_roles: tuple = ()  # per action dimension: x y z roll pitch yaw gripper, a joint name, or "" (ignored)
    control_period_s: float = 0.0  # time per action; 0 = the checkpoint's dt
    translation_scale: float = 0.001  # action units -> metres (the seed's actions are mm)
    rotation_scale: float = 0.017453292519943295  # action units -> radians (the seed's are degrees)
    gripper_topic: str = ""  # std_msgs/Float64MultiArray gripper command ("" = none)
    gripper_scale: float = 1.0
    gripper_min: float = -1.0  # the gripper command's limits (after gripper_scale): clamped into them
    gripper_max: float = 1.0
    max_command_age_s: float = 0.5  # a command whose observation is older at publication is not sent (hold)
    heartbeat_topic: str = ""  # std_msgs/Bool from the operator's station; "" = no heartbeat
    heartbeat_timeout_s: float = 0.5  # no heartbeat (or false) for longer: hold and disarm
    # -- asynchronous inference and chunk execution (docs/performance.md) --
    async_inference: bool = False  # backbone on new frames in its own thread; expert at rate_hz on cached features
    max_feature_age_s: float = 1.0  # async: backbone features older than this (vs the newest input) are not used
    stream_actions: bool = False  # publish one action per control period (1 / the checkpoint's dt) on ~/action
    chunk_execution: str = "switch"  # switch (newest chunk) | ensemble (temporal ensembling) | rtc (real-time chunking)
    rtc_delay_steps: int = 0  # rtc: actions frozen per inference (0 = the measured inference time / dt, rounded up)
    ensemble_decay: float = 0.01  # temporal: weight exp(-decay * k), k = 0 for the oldest chunk
    # -- safety (docs/safety.md) --
    max_delta: tuple = ()  # per action dimension, in action units; () = unlimited
    workspace_min: tuple = ()  # x y z metres for absolute targets; () = unlimited
    workspace_max: tuple = ()
    max_speed: float = 0.0  # m/s between consecutive targets; 0 = unlimited
    max_angular_speed: float = 0.0  # rad/s of the ee orientation per control period; 0 = unset (cartesian: required)
    max_chunk_rotation: float = 0.0  # rad, largest orientation change from the pose a chunk starts at; 0 = unset
    robot_description: str = ""  # URDF; joint position/velocity limits for joint_trajectory ("" = /robot_description)
    max_chunk_motion: float = 0.0  # joint_trajectory: largest |target - current| per joint in a chunk; 0 = unlimited
    limit_mode: str = "clip"  # clip | reject
    input_timeout_s: float = 1.0  # watchdog: the longest any input may be old (caps the ones below); 0 = off
    camera_timeout_s: float = 0.5  # each camera: 5 frames at 10 Hz, shorter than a chunk
    sensor_timeout_s: float = 0.2  # the high-rate sensor (>= 100 Hz: 20 samples)
    joint_state_timeout_s: float = 0.2  # joint states, the ee pose and the policy's state (100 Hz - 1 kHz)
    future_stamp_tolerance_s: float = 1.0
    max_message_bytes: int = 50_000_000


LIVE = ("policy_type", "sampler", "ddim_steps", "seed", "rate_hz", "min_interval_s", "instruction", "dry_run",
        "execute_steps", "chunk_execution", "rtc_delay_steps")
# Numeric ranges announced in the parameter descriptors (ros2 param describe) and enforced by rcl.
RANGES = {"ddim_steps": (1, 1000), "seed": (-1, 2**31 - 1), "rate_hz": (0.0, 1000.0), "min_interval_s": (0.0, 10.0),
          "execute_steps": (0, 1000), "rtc_delay_steps": (0, 1000), "slop_s": (0.0, 1.0), "max_sensor_lag_s": (0.0, 10.0),
          "state_history_s": (0.1, 60.0), "command_rate_hz": (1.0, 2000.0), "control_period_s": (0.0, 10.0),
          "max_command_age_s": (0.0, 10.0), "heartbeat_timeout_s": (0.01, 10.0), "max_feature_age_s": (0.001, 60.0),
          "ensemble_decay": (0.0, 10.0), "max_speed": (0.0, 10.0), "max_chunk_motion": (0.0, 10.0),
          "max_angular_speed": (0.0, 20.0), "max_chunk_rotation": (0.0, 6.3),
          "input_timeout_s": (0.0, 60.0), "camera_timeout_s": (0.0, 60.0), "sensor_timeout_s": (0.0, 60.0),
          "joint_state_timeout_s": (0.0, 60.0), "gripper_min": (-1e6, 1e6), "gripper_max": (-1e6, 1e6), "future_stamp_tolerance_s": (0.0, 1e9), "max_message_bytes": (1, 2**31 - 1)}
CHUNK_EXECUTIONS = ("switch", "ensemble", "rtc")
EXECUTOR_MODE = {"switch": "receding", "ensemble": "temporal", "rtc": "receding"}  # ChunkExecutor's mode for each
RTC_SAMPLERS = {"flow": ("euler",), "diffusion": ("ddim",)}  # the samplers real-time chunking guides

DESCRIPTIONS = {
    "policy_type": f"expert serving the next inference: one of {list(EXPERT_TYPES)}",
    "sampler": "sampler of the active expert ('' = its checkpoint's): diffusion ddim|ddpm, flow euler",
    "ddim_steps": "steps of an iterative expert: DDIM steps (diffusion, 1..num_train_timesteps), Euler steps (flow)",
    "seed": "sampling seed of the diffusion and flow experts (-1: random)",
    "rate_hz": "inference rate in Hz; 0 = adaptive (max(1.15 x mean latency, min_interval_s))",
    "min_interval_s": "floor of the adaptive inference interval (s)",
    "instruction": "task instruction (a std_msgs/String on instruction_topic overrides it)",
    "dry_run": "true: publish action chunks only, never a command; live: may be set true, arming is ~/enable only",
    "autostart": "configure and activate at start (false: wait for a lifecycle manager's transitions)",
    "state_history_s": "seconds of robot state kept, interpolated at the cameras' stamp",
    "command_interface": f"how chunks reach the controller: one of {list(COMMAND_INTERFACES)}",
    "command_topic": "controller command topic ('' = the interface's usual topic)",
    "command_frame": "frame of cartesian commands ('' = the frame of the pose messages)",
    "joint_trajectory_action": "joint_trajectory: FollowJointTrajectory action name (e.g. "
                               "/joint_trajectory_controller/follow_joint_trajectory); '' = the topic",
    "command_rate_hz": "servo_twist / pose_target: commands per second",
    "servo_node": "servo_twist / servo_joint_jog: MoveIt Servo's node name; on activate its command type is selected and it is "
                  "unpaused (or started on Humble), on deactivate paused; its status is read ('' = none of this)",
    "pose_reference": "pose_target: accumulate deltas from the 'measured' pose at the observation, or from the "
                      "'setpoint' (the target the controller was given for that time; measured when there is none)",
    "action_roles": "per action dimension: x y z roll pitch yaw gripper, a joint name, or '' ([] = the checkpoint's "
                    "action_names)",
    "control_period_s": "seconds per action (0 = the checkpoint's dt)",
    "gripper_topic": "std_msgs/Float64MultiArray gripper command topic ('' = none)",
    "gripper_scale": "gripper action -> gripper command",
    "max_command_age_s": "a command whose observation is older than this at publication is not sent; hold instead",
    "heartbeat_topic": "std_msgs/Bool heartbeat; missing or false for heartbeat_timeout_s: hold and disarm ('' = off)",
    "heartbeat_timeout_s": "heartbeat timeout (s)",
    "robot_description": "URDF with the joint limits ('' = the /robot_description topic)",
    "max_chunk_motion": "joint_trajectory: largest |target - current| per joint within a chunk (0 = unlimited)",
    "execute_steps": "stream_actions, receding mode: at most this many actions of a chunk are executed (0 = all)",
    "async_inference": "run the backbone on new frames in its own thread and the expert at rate_hz on cached features",
    "max_feature_age_s": "async: backbone features older than this (vs the newest input) are not used (s)",
    "stream_actions": "publish one action per control period (the checkpoint's dt) on ~/action (not in dry_run)",
    "chunk_execution": f"how chunks are executed while the next is inferred: one of {list(CHUNK_EXECUTIONS)} (switch: "
                       "the newest chunk; ensemble: temporal ensembling; rtc: real-time chunking, flow and diffusion "
                       "ddim: the rows that execute during inference frozen, the rest guided toward the current chunk)",
    "rtc_delay_steps": "rtc: actions frozen per inference (0 = the measured inference time / control period, rounded up)",
    "ensemble_decay": "temporal ensembling: weight exp(-decay * k), k = 0 for the oldest chunk",
    "regression_checkpoint": "checkpoint directory of the regression expert",
    "diffusion_checkpoint": "checkpoint directory of the diffusion expert",
    "flow_checkpoint": "checkpoint directory of the flow-matching expert",
    "device": "torch device (cpu, cuda, cuda:1)",
    "backbone_path": "directory of the backbone weights on this PC ('' = the path recorded in the checkpoint)",
    "image_topics": "image topic per checkpoint view (raw Image, or CompressedImage if it ends in /compressed)",
    "sensor_topic": "high-rate sensor topic",
    "sensor_type": f"sensor message: one of {list(SENSOR_TYPES)} (WrenchStamped, SensorPacket, Float32MultiArray)",
    "state_topic": "robot state topic",
    "state_type": f"state message: one of {list(STATE_TYPES)} (JointState positions, or PoseStamped xyz+quaternion)",
    "pose_topic": "PoseStamped of the end effector for absolute targets ('' = state_topic if state_type is pose)",
    "instruction_topic": "std_msgs/String topic that sets the instruction",
    "ee_frame": "end-effector frame: the pose from a tf2 lookup in base_frame when tf2_ros imports (else pose_topic; "
                "'' = pose_topic only)",
    "base_frame": "frame of the ee pose looked up in TF (the commands' frame unless command_frame is set)",
    "slop_s": "approximate-time synchronisation window for the views and the state (s)",
    "max_sensor_lag_s": "inference waits while the newest sensor sample is older than the observation by more (s)",
    "translation_scale": "action translation units -> metres",
    "rotation_scale": "action rotation units -> radians",
    "max_delta": "maximum |action| per dimension for commands, in action units ([] = unlimited)",
    "workspace_min": "lower x y z bound (m) of absolute ee targets ([] = unlimited)",
    "workspace_max": "upper x y z bound (m) of absolute ee targets ([] = unlimited)",
    "max_speed": "maximum speed (m/s) between consecutive ee targets (0 = unlimited)",
    "max_angular_speed": "maximum ee angular rate (rad/s) per control period; arming a cartesian interface whose "
                         "actions rotate needs it (0 = unset)",
    "max_chunk_rotation": "largest ee orientation change (rad) from the pose a chunk starts at; arming a cartesian "
                          "interface whose actions rotate needs it (0 = unset)",
    "limit_mode": f"what a command beyond the limits gets: one of {list(LIMIT_MODES)}",
    "input_timeout_s": "watchdog: no inference or command while a camera, the sensor or the state is older than its "
                       "own timeout, at most this (s; 0 = the watchdog off)",
    "camera_timeout_s": "watchdog timeout of each camera (s; 0 = input_timeout_s)",
    "sensor_timeout_s": "watchdog timeout of the high-rate sensor (s; 0 = input_timeout_s)",
    "joint_state_timeout_s": "watchdog timeout of the joint states, the ee pose and the policy's state (s; "
                             "0 = input_timeout_s)",
    "gripper_min": "lowest gripper command (after gripper_scale); lower values are clamped",
    "gripper_max": "highest gripper command (after gripper_scale); higher values are clamped",
    "future_stamp_tolerance_s": "messages stamped further in the future than this are dropped",
    "max_message_bytes": "messages larger than this are dropped",
}


def declare(node) -> NodeParams:
    """Declare every parameter with a descriptor and return the typed values."""
    for f in fields(NodeParams):
        default = f.default
        descriptor = ParameterDescriptor(description=DESCRIPTIONS[f.name], read_only=f.name not in LIVE)
        if f.name in RANGES:
            low, high = RANGES[f.name]
            if isinstance(low, int):
                descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=0)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        if f.name in ARRAY_TYPES:
            default = ARRAY_TYPES[f.name]  # uninitialised unless overridden; read() turns that into ()
        node.declare_parameter(f.name, default, descriptor)
    return read(node)


def read(node) -> NodeParams:
    values = {}
    for f in fields(NodeParams):
        try:
            values[f.name] = node.get_parameter(f.name).value
        except ParameterUninitializedException:  # `[]` in a params file has no type: an empty list
            values[f.name] = ()
    for name in ARRAY_TYPES:
        values[name] = tuple(values[name] or ())
    return NodeParams(**values)


def validate(name: str, value, loaded: set[str], configured: set[str]) -> str | None:
    """Why a new value is rejected, or None when it is fine. (Whether the active expert takes the sampler
    and step count is the expert's to say: `PolicyNode` asks it.)"""
    if name == "policy_type" and value not in EXPERT_TYPES:
        return f"policy_type: expected one of {list(EXPERT_TYPES)}, got {value!r}"
    if name == "policy_type" and value not in loaded | configured:
        return f"policy_type: no checkpoint is configured for {value!r} (set {value}_checkpoint at start)"
    if name == "ddim_steps" and (not isinstance(value, int) or value < 1):
        return f"ddim_steps: expected an integer >= 1, got {value!r}"
    if name in ("rate_hz", "min_interval_s") and (not isinstance(value, (int, float)) or value < 0):
        return f"{name}: expected a number >= 0, got {value!r}"
    if name == "execute_steps" and (not isinstance(value, int) or value < 0):
        return f"execute_steps: expected an integer >= 0 (0 = the whole chunk), got {value!r}"
    if name == "chunk_execution" and value not in CHUNK_EXECUTIONS:
        return f"chunk_execution: expected one of {list(CHUNK_EXECUTIONS)}, got {value!r}"
    if name == "rtc_delay_steps" and (not isinstance(value, int) or value < 0):
        return f"rtc_delay_steps: expected an integer >= 0 (0 = measured), got {value!r}"
    if name == "dry_run" and value is False:
        return "dry_run: cannot be switched off by a parameter; arm through the ~/enable service (std_srvs/SetBool)"
    return None


def rtc_reason(chunk_execution: str, policy_type: str, sampler: str, prefix_max: int = 0,
               delay_steps: int = 0) -> str | None:
    """Why `rtc` cannot serve this expert and sampler ('' sampler = the expert's default), or None. prefix_max: the
    loaded expert's `expert.prefix_max` (trained with given rows: any expert and sampler takes them, up to that many);
    delay_steps: the rtc_delay_steps parameter (0 = measured, capped at prefix_max)."""
    if chunk_execution != "rtc":
        return None
    if prefix_max:
        if delay_steps > prefix_max:
            return (f"rtc_delay_steps {delay_steps}: the {policy_type} expert was trained with up to "
                    f"expert.prefix_max={prefix_max} given rows; expected rtc_delay_steps <= {prefix_max} (0 = measured)")
        return None
    if policy_type not in RTC_SAMPLERS:
        return (f"rtc guides an iterative sampler (flow, diffusion ddim); the {policy_type} expert predicts a chunk in "
                f"one pass: use switch or ensemble")
    if sampler and sampler not in RTC_SAMPLERS[policy_type]:
        return f"rtc guides the {policy_type} expert's {RTC_SAMPLERS[policy_type][0]} sampler, not {sampler!r}"
    return None


def validate_static(params: NodeParams) -> None:
    """Start-up checks of the fixed parameters (raises ValueError naming the parameter)."""
    for name, allowed in (("sensor_type", SENSOR_TYPES), ("state_type", STATE_TYPES),
                          ("command_interface", COMMAND_INTERFACES), ("pose_reference", ("measured", "setpoint")),
                          ("policy_type", EXPERT_TYPES), ("limit_mode", LIMIT_MODES),
                          ("chunk_execution", CHUNK_EXECUTIONS)):
        if getattr(params, name) not in allowed:
            raise ValueError(f"parameter {name}: expected one of {list(allowed)}, got {getattr(params, name)!r}")
    if not getattr(params, f"{params.policy_type}_checkpoint"):
        raise ValueError(f"parameter {params.policy_type}_checkpoint: expected a checkpoint directory for the "
                         f"starting policy_type {params.policy_type!r}, got ''")
    if params.max_feature_age_s <= 0:
        raise ValueError(f"parameter max_feature_age_s: expected > 0, got {params.max_feature_age_s}")
    if not params.gripper_min < params.gripper_max:
        raise ValueError(f"parameters gripper_min/gripper_max: expected gripper_min < gripper_max, got "
                         f"{params.gripper_min} and {params.gripper_max}")
    if params.slop_s < 0:
        raise ValueError(f"parameter slop_s: expected >= 0, got {params.slop_s}")
    for name in ("workspace_min", "workspace_max"):
        if getattr(params, name) and len(getattr(params, name)) != 3:
            raise ValueError(f"parameter {name}: expected [] or 3 values (x y z), got {list(getattr(params, name))}")
