"""The closed loop through ROS 2 without hardware: sim_robot_node + policy_node on one simulated clock.

Used by `launch/sim_demo.launch.py` and by `vla ros-demo` (which starts both executables as
processes, waits for the episodes and prints the success rate). Both nodes get their parameters
from `demo_parameters`, so the launch file and the command run the same pair.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from vla_models import PolicyConfig


def demo_parameters(checkpoint: str | Path, episodes: int = 10, placement_seed: int = 1, execute_steps: int = 8,
                    task: str = "peg-insert-side-v3", max_steps: int = 300, sampler: str | None = None,
                    steps: int | None = None, seed: int = 0, image_size: int = 96, lockstep: bool = True,
                    first_placement: int = 0, command_interface: str = "chunk", latency_s: float = 0.0,
                    chunk_execution: str = "switch") -> dict:
    """{'vla_policy': {...}, 'sim_robot': {...}} node parameters for one checkpoint directory.

    command_interface: `chunk` (the sim executes the ActionChunks; the node stays in dry run), or
    `servo_twist` / `pose_target`: the node is armed and commands the sim as it would a Cartesian
    controller (MoveIt Servo / a cartesian controller), one command per simulated control period.
    latency_s: camera-to-command latency injected by the sim (each observation is that old when published).
    chunk_execution: switch | ensemble | rtc, for both nodes (the policy node's parameter, the sim's)."""
    from ..data.sim import task_instruction

    checkpoint = Path(checkpoint)
    config = PolicyConfig.from_file(checkpoint / "config.json")
    kind = config.expert.type
    views = list(config.views)
    policy = {f"{kind}_checkpoint": str(checkpoint.resolve()), "policy_type": kind, "use_sim_time": lockstep,
              "dry_run": True, "rate_hz": 0.0, "min_interval_s": 0.002, "input_timeout_s": 0.0,
              "future_stamp_tolerance_s": 1e6, "state_topic": "joint_states", "state_type": "joint_state",
              "sensor_topic": "sensor", "sensor_type": "packet", "max_sensor_lag_s": 0.0, "slop_s": 0.001,
              "instruction": task_instruction(task), "seed": seed,
              "servo_node": "",  # the sim is the controller whatever the interface: no MoveIt Servo to set up
              "chunk_execution": chunk_execution}
    if command_interface != "chunk":
        from ..data.sim import SimEnv

        env = SimEnv(task, seed=placement_seed, views=(), render=False)
        dt, scale = env.control_dt, float(env.env.action_scale)
        low, high = (np.asarray(b, float) for b in (env.env.mocap_low, env.env.mocap_high))
        env.close()
        policy.update({"command_interface": command_interface, "pose_topic": "ee_pose",  # armed by the sim (~/enable)
                       "command_frame": "world", "control_period_s": dt, "translation_scale": scale,
                       # the rows the sim executes per chunk start latency_s after the observation: the node serves
                       # that many more of each chunk (its receding limit counts from the observation)
                       "execute_steps": execute_steps + int(round(latency_s / dt)),
                       "action_roles": ["dx", "dy", "dz", "gripper"],
                       "gripper_topic": "gripper_command",
                       # the sim's own limits: |action| <= 1 per axis, the mocap box, and the speed of a full
                       # action on all three axes
                       "max_delta": [1.0] * 4, "workspace_min": low.tolist(), "workspace_max": high.tolist(),
                       "max_speed": float(1.01 * np.sqrt(3) * scale / dt),
                       "max_command_age_s": 10.0})
    if views:
        policy["image_topics"] = [f"camera/{v}/image_raw" for v in views]
    if sampler:  # "" = the expert's own; the node asks the expert whether it takes these
        policy["sampler"] = sampler
    if steps:
        policy["ddim_steps"] = steps
    sim = {"task": task, "placement_seed": placement_seed, "episodes": episodes, "views": views or [""],
           "image_size": image_size, "execute_steps": execute_steps, "max_steps": max_steps, "lockstep": lockstep,
           "first_placement": first_placement, "use_sim_time": False, "command_interface": command_interface,
           "latency_s": float(latency_s), "chunk_execution": chunk_execution}
    return {"vla_policy": policy, "sim_robot": sim}


def write_params_file(params: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump({name: {"ros__parameters": values} for name, values in params.items()}))
    return path


_RUNS = itertools.count()


def run_ros_demo(checkpoint: str | Path, timeout_s: float = 3600.0, log_dir: str | Path | None = None,
                 **kwargs) -> dict:
    """Start policy_node and sim_robot_node as processes on a private ROS domain; the sim's summary."""
    bin_dir = Path(sys.executable).parent
    # a domain of its own for every run: the nodes of the previous run in this process (a policy node killed after
    # 10 s, its discovery entries) must not meet this run's
    domain = 100 + (os.getpid() + 37 * next(_RUNS)) % 100
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="vla-ros-demo-") as tmp:
        params_file = write_params_file(demo_parameters(checkpoint, **kwargs), Path(tmp) / "params.yaml")
        logs = Path(log_dir) if log_dir else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        policy_log = open(logs / "policy_node.log", "w")
        policy = subprocess.Popen([str(bin_dir / "policy_node"), "--ros-args", "--params-file", str(params_file)],
                                  env=env, stdout=policy_log, stderr=subprocess.STDOUT)
        sim = None
        try:
            sim = subprocess.run([str(bin_dir / "sim_robot_node"), "--ros-args", "--params-file", str(params_file)],
                                 env=env, capture_output=True, text=True, timeout=timeout_s)
        finally:
            policy.terminate()
            try:
                policy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                policy.kill()
            policy_log.close()
        (logs / "sim_robot_node.log").write_text(sim.stdout + sim.stderr)
        lines = [line for line in sim.stdout.splitlines() if line.startswith("SIM_RESULT ")]
        if sim.returncode not in (0, 3) or not lines:
            tail = (sim.stdout + sim.stderr)[-2000:]
            policy_tail = (logs / "policy_node.log").read_text()[-1500:]
            raise RuntimeError(f"sim_robot_node exited {sim.returncode}:\n{tail}\npolicy_node log:\n{policy_tail}")
        return json.loads(lines[-1][len("SIM_RESULT "):])

