"""Meta-World (`metaworld==3.1.1`, MuJoCo) as a data source and an evaluation environment.

`SimEnv` wraps one task: placements from `metaworld.MT1(task, seed)` (another seed = held-out
placements), 2 rendered views on the fast CPU path, the 39-d observation as robot state, and a
**contact wrench sensor** sampled at the physics rate: after every physics substep the contact
forces (`mujoco.mj_contactForce`) on the peg and on the gripper are summed into world-frame force
and torque, 12 channels (peg fx fy fz tx ty tz, gripper fx fy fz tx ty tz).

`generate_demos` runs the package's scripted expert and keeps successful episodes only; with
`modes=2` each episode first passes through one of two via-points (left or right of the straight
approach, chosen at random), so the demonstrations have two distinct modes. For the obstacle task
(data/obstacle.py) every placement is demonstrated twice, passing the post in front and behind.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_models import ConfigError

from .obstacle import (BASE_TASK, OBSTACLE_TASK, DetourExpert, obstacle_env_class, passed_side, placement_layout,
                       post_position, touches)

os.environ.setdefault("MUJOCO_GL", "egl")
# The scripted experts ask for actions beyond [-1, 1]; we clip them ourselves (ViaPointExpert).
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")

ACTION_NAMES = ["dx", "dy", "dz", "grip"]
# the manipulated object (the task's one free-moving body: the peg, a puck, a plug) and the gripper
SENSOR_NAMES = [f"{body}_{q}" for body in ("object", "gripper") for q in ("fx", "fy", "fz", "tx", "ty", "tz")]
STATE_NAMES = ([f"hand_{a}" for a in "xyz"] + ["gripper"] + [f"obj_{i}" for i in range(14)]
               + [f"prev_{i}" for i in range(18)] + [f"goal_{a}" for a in "xyz"])
DEFAULT_VIEWS = ("corner", "gripperPOV")
FLIPPED_CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview")  # render upside down
GRIPPER_BODIES = ("hand", "rightclaw", "rightpad", "leftclaw", "leftpad")


def manipulated_body(model, task: str) -> int:
    """The body whose contact wrench is sensed: the task's one free-moving body (Meta-World gives the
    manipulated object, and only it, a free joint: `peg`, `obj`, `plug1`, ...)."""
    import mujoco

    free = sorted({int(model.jnt_bodyid[j]) for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE})
    if len(free) != 1:
        names = [model.body(b).name for b in free]
        raise ConfigError(f"task {task!r}: expected one free-moving object to sense the contact wrench of, found "
                         f"{len(free)} {names}")
    return free[0]


def scripted_policy(task: str):
    """Meta-World's scripted expert for a task, or an error naming the tasks that have one."""
    from metaworld.policies import ENV_POLICY_MAP

    task = BASE_TASK if task == OBSTACLE_TASK else task
    if task not in ENV_POLICY_MAP:
        raise ConfigError(f"task {task!r}: no scripted policy in metaworld.policies to record demonstrations with; "
                         f"expected one of {sorted(ENV_POLICY_MAP)}")
    return ENV_POLICY_MAP[task]()


def task_instruction(task: str) -> str:
    """The instruction recorded with a task's demonstrations (and given to the policy in closed loop)."""
    return task.replace("-v3", "").replace("-", " ")  # peg-insert-side-obstacle-v3: "peg insert side obstacle"


@dataclass
class StepRecord:
    state: np.ndarray  # (39,)
    images: dict[str, np.ndarray]  # view -> (H, W, 3) uint8
    sensor: np.ndarray  # (substeps, 12) samples since the previous step
    sensor_t: np.ndarray  # (substeps,)
    t: float
    success: bool = False
    info: dict = field(default_factory=dict)


class SimEnv:
    def __init__(self, task: str = "peg-insert-side-v3", seed: int = 0, views: tuple[str, ...] = DEFAULT_VIEWS,
                 image_size: int = 96, render: bool = True) -> None:
        import metaworld
        import mujoco

        self._mujoco = mujoco
        self.task, self.seed = task, seed
        self.obstacle = task == OBSTACLE_TASK  # peg-insert-side + a post (data/obstacle.py)
        base = BASE_TASK if self.obstacle else task
        self.benchmark = metaworld.MT1(base, seed=seed)
        env_cls = self.benchmark.train_classes[base]
        self.env = (obstacle_env_class(env_cls) if self.obstacle else env_cls)()
        self.placements = self.benchmark.train_tasks
        self.views = tuple(views) if render else ()
        self.image_size = image_size
        model = self.env.model
        self.control_dt = float(self.env.frame_skip * model.opt.timestep)
        self.physics_dt = float(model.opt.timestep)
        cams = [model.camera(i).name for i in range(model.ncam)]
        for view in self.views:
            if view not in cams:
                raise ConfigError(f"views: camera {view!r} does not exist in {task}; expected some of {cams}")
        self._renderer = None
        if self.views:
            model.vis.quality.offsamples = 0  # no multisampling: the fast CPU path
            self._renderer = mujoco.Renderer(model, image_size, image_size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._object = manipulated_body(model, task)
        self._post = model.geom("obstacle").id if self.obstacle else -1
        self.touched_obstacle = False
        self._gripper = {model.body(n).id for n in GRIPPER_BODIES}
        self._bodies = np.array([self._object, *self._gripper])
        self._force = np.zeros(6)
        self._samples: list[np.ndarray] = []
        self._sample_t: list[float] = []
        self.t = 0.0
        self._patch_substeps()

    # -- physics with a wrench sample after every substep ------------------------------------------
    def _patch_substeps(self) -> None:
        env, mujoco = self.env, self._mujoco

        def step_mujoco(ctrl, n_frames):
            env.data.ctrl[:] = ctrl
            for _ in range(n_frames):
                mujoco.mj_step(env.model, env.data)
                self.t += self.physics_dt
                self._samples.append(self._wrench())
                self._sample_t.append(self.t)
                if self.obstacle and not self.touched_obstacle:
                    self.touched_obstacle = touches(env.model, env.data, self._post)
            mujoco.mj_rnePostConstraint(env.model, env.data)

        env._step_mujoco_simulation = step_mujoco

    def _wrench(self) -> np.ndarray:
        """Contact wrench (12,) on the manipulated object and on the gripper, world frame (vectorised over contacts)."""
        model, data, mujoco = self.env.model, self.env.data, self._mujoco
        out = np.zeros(12)
        if data.ncon == 0:
            return out
        bodies = model.geom_bodyid[np.stack([data.contact.geom1, data.contact.geom2], axis=1)]  # (ncon, 2)
        relevant = np.nonzero(np.isin(bodies, self._bodies).any(axis=1))[0]
        if relevant.size == 0:
            return out
        local = np.empty((relevant.size, 6))
        for k, i in enumerate(relevant):
            mujoco.mj_contactForce(model, data, int(i), local[k])
        frames = data.contact.frame[relevant].reshape(-1, 3, 3)
        force = np.einsum("nij,ni->nj", frames, local[:, :3])  # contact frame -> world; on body 2 from body 1
        pos, bodies = data.contact.pos[relevant], bodies[relevant]
        for slot, members in ((0, [self._object]), (6, list(self._gripper))):
            for side, sign in ((0, -1.0), (1, 1.0)):
                hit = np.isin(bodies[:, side], members)
                if hit.any():
                    f = sign * force[hit]
                    out[slot:slot + 3] += f.sum(0)
                    out[slot + 3:slot + 6] += np.cross(pos[hit] - data.xpos[bodies[hit, side]], f).sum(0)
        return out

    # -- episode API -------------------------------------------------------------------------------
    def reset(self, placement: int) -> StepRecord:
        self.env.set_task(self.placements[placement % len(self.placements)])
        if self.obstacle:  # our own placements (the hole on the near side, the peg on the far side) and the post
            layout = placement_layout(self.seed, placement)
            self.env._last_rand_vec = layout
            self.env.model.body("obstacle").pos = post_position(layout[3:])
        obs, _ = self.env.reset()
        self.touched_obstacle, self.crossing_x = False, None
        self.t = 0.0
        self._samples, self._sample_t = [self._wrench()], [0.0]
        return self._record(obs, {})

    def step(self, action: np.ndarray) -> StepRecord:
        self._samples, self._sample_t = [], []
        obs, _, _, truncated, info = self.env.step(np.clip(np.asarray(action, np.float64), -1.0, 1.0))
        if self.obstacle:
            info["obstacle_contact"] = self.touched_obstacle
            post_y = self.env.model.body("obstacle").pos[1]
            if self.crossing_x is None and obs[1] < post_y:  # the hand crossed the post's line: where?
                self.crossing_x = float(obs[0])
            info["passed"] = passed_side(self.crossing_x)
        record = self._record(obs, info)
        record.success = bool(info.get("success", 0.0)) and not self.touched_obstacle
        return record

    def get_state(self) -> np.ndarray:
        """The physics state (MuJoCo's integration state: time, positions, velocities, actuators, mocap), for
        `set_state` on this env or another of the same task and placement (a look-ahead on a twin)."""
        import mujoco

        model, data = self.env.model, self.env.data
        state = np.empty(mujoco.mj_stateSize(model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(model, data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        return state

    def set_state(self, state: np.ndarray) -> None:
        import mujoco

        model, data = self.env.model, self.env.data
        mujoco.mj_setState(model, data, np.asarray(state, np.float64), mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(model, data)

    def hold_action(self) -> np.ndarray:
        """The action that holds: the hand's setpoint where it is, the gripper at its current command (Meta-World
        drives the fingers with ctrl = [a, -a]; a zero action would move them to half closed)."""
        hold = np.zeros(self.env.action_space.shape[0], np.float32)
        hold[3] = float(self.env.data.ctrl[0])
        return hold

    @property
    def setpoint(self) -> np.ndarray:
        """The hand's commanded position (the mocap body it follows; what the actions move), metres."""
        return self.env.data.mocap_pos[0].copy()

    @property
    def setpoint_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The box the setpoint is kept in (Meta-World's mocap_low / mocap_high), metres."""
        return np.asarray(self.env.mocap_low, float), np.asarray(self.env.mocap_high, float)

    @property
    def action_scale(self) -> float:
        """Metres of setpoint motion per unit of a position action."""
        return float(self.env.action_scale)

    @property
    def max_steps(self) -> int:
        return int(self.env.max_path_length)

    def _record(self, obs: np.ndarray, info: dict) -> StepRecord:
        images = {}
        for view in self.views:
            self._renderer.update_scene(self.env.data, camera=view)
            frame = self._renderer.render()
            images[view] = np.ascontiguousarray(frame[::-1] if view in FLIPPED_CAMERAS else frame)
        return StepRecord(obs.astype(np.float32), images, np.asarray(self._samples, np.float32),
                          np.asarray(self._sample_t), self.t, info=info)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class ViaPointExpert:
    """The package's scripted expert, optionally detouring through a via-point (mode -1 or +1) first.

    Once the peg is grasped and lifted, the hand is first sent to a via-point `offset` metres to one
    side of the hole's axis (y = goal_y + mode x offset, kept inside the hand's reachable y range), halfway to the approach point and a little
    higher; then the expert takes over and completes the insertion. `start_step`/`via_step` record
    when the detour began and when the via-point was reached.
    """

    def __init__(self, task: str, mode: int = 0, offset: float = 0.12,
                 y_bounds: tuple[float, float] = (0.43, 0.97)) -> None:
        self.expert = scripted_policy(task)
        self.mode, self.offset, self.y_bounds = mode, offset, y_bounds
        self.via: np.ndarray | None = None
        self.steps = 0
        self.start_step: int | None = None
        self.via_step: int | None = None
        self.done = mode == 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The executed action: the expert's, clipped to the env's [-1, 1] (it may ask for more)."""
        self.steps += 1
        action = np.clip(np.asarray(self.expert.get_action(obs), np.float32), -1.0, 1.0)
        if self.done:
            return action
        hand, peg, goal = obs[:3], obs[4:7], obs[36:39]
        if not (action[3] > 0 and peg[2] > 0.08):  # not yet grasped and lifted
            return action
        if self.via is None:
            approach_x = -0.35 + 0.4
            via_y = np.clip(goal[1] + self.mode * self.offset, *self.y_bounds)  # stay inside the mocap workspace
            self.via = np.array([(hand[0] + approach_x) / 2, via_y, 0.22])
            self.start_step = self.steps - 1
        if np.linalg.norm(hand - self.via) < 0.03:
            self.done, self.via_step = True, self.steps - 1
            return action
        action[:3] = np.clip((self.via - hand) * 25.0, -1.0, 1.0)
        return action

    @property
    def record(self) -> dict | None:
        if self.via is None:
            return None
        return {"via": self.via.tolist(), "start_step": self.start_step, "via_step": self.via_step}


def generate_demos(out_dir: str | Path, task: str, episodes: int, seed: int, views: tuple[str, ...],
                   image_size: int, modes: int = 1, max_attempts_factor: int = 3, progress: bool = True,
                   action_noise: float = 0.0) -> dict:
    """Write `episodes` successful expert demonstrations; returns a summary (kept, attempted, modes).

    action_noise: DART (Laskey et al. 2017, "DART: Noise Injection for Robust Imitation Learning"): the
    simulator executes the demonstrator's action + N(0, action_noise^2) on the motion dimensions (clipped
    to [-1, 1]), the recording keeps the demonstrator's own action as the label, so the data visits the
    states a learned policy drifts into and says how the demonstrator recovers from each."""
    from tqdm import tqdm

    from .episodes import EpisodeData, next_episode_name, write_episode

    if modes not in (1, 2):
        raise ConfigError(f"--modes: expected 1 or 2, got {modes}")
    if modes == 2 and task not in (BASE_TASK, OBSTACLE_TASK):
        raise ConfigError(f"--modes 2: the two detours are defined for {BASE_TASK} (its hole's approach) and "
                          f"{OBSTACLE_TASK}, not {task!r}; use --modes 1")
    if task == OBSTACLE_TASK and modes != 2:
        raise ConfigError(f"--modes {modes}: {OBSTACLE_TASK}'s demonstrations pass the post in front or behind, at "
                          f"random (two modes); use --modes 2")
    if not (isinstance(action_noise, (int, float)) and 0.0 <= action_noise <= 1.0):
        raise ConfigError(f"--action-noise: expected a standard deviation in [0, 1] (action units), got {action_noise!r}")
    scripted_policy(task)  # a task without a scripted expert stops here, before any file is written
    env = SimEnv(task, seed=seed, views=views, image_size=image_size, render=bool(views))
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])  # its own stream: the placements' modes draw as without noise
    kept, attempts, mode_counts = 0, 0, {-1: 0, 0: 0, 1: 0}
    bar = tqdm(total=episodes, desc=f"sim demos {task}", disable=not progress, unit="ep")
    try:
        while kept < episodes and attempts < episodes * max_attempts_factor:
            if task == OBSTACLE_TASK:  # each placement twice, once in front of the post and once behind: the
                placement, mode = attempts // 2, (-1, 1)[attempts % 2]  # same state, both answers, half each
            else:
                placement, mode = attempts, int(rng.choice([-1, 1])) if modes == 2 else 0
            attempts += 1
            expert = DetourExpert(mode) if task == OBSTACLE_TASK else ViaPointExpert(task, mode)
            record = env.reset(placement)
            states, actions, times, sensor, sensor_t = [], [], [], [record.sensor], [record.sensor_t]
            frames = {v: [record.images[v]] for v in env.views}
            frame_t = [record.t]
            success = False
            for _ in range(env.max_steps - 1):
                action = expert(record.state)
                states.append(record.state)
                actions.append(action)
                times.append(record.t)
                executed = action
                if action_noise:  # DART: the label is the demonstrator's action, the sim executes a perturbed one
                    executed = action.copy()
                    executed[:3] = np.clip(action[:3] + noise_rng.normal(0.0, action_noise, 3), -1.0, 1.0)
                record = env.step(executed)
                sensor.append(record.sensor)
                sensor_t.append(record.sensor_t)
                if record.success:
                    success = True
                    break
                for v in env.views:
                    frames[v].append(record.images[v])
                frame_t.append(record.t)
            if not success:
                continue
            data = EpisodeData(
                instruction=task_instruction(task),
                actions=np.asarray(actions), actions_t=np.asarray(times), action_names=ACTION_NAMES,
                state=np.asarray(states), state_t=np.asarray(times), state_names=STATE_NAMES,
                sensor=np.concatenate(sensor), sensor_t=np.concatenate(sensor_t), sensor_names=SENSOR_NAMES,
                images={v: np.asarray(f[:len(actions)]) for v, f in frames.items()},
                images_t={v: np.asarray(frame_t[:len(actions)]) for v in frames},
                meta={"source": "metaworld", "task": task, "placement_seed": seed, "placement": placement,
                      "mode": mode, "success": True, "mm_per_action_unit": 10.0, "action_noise": action_noise,
                      "detour": expert.record, "action_units": ["normalised mocap delta"] * 3 + ["effort"]},
            )
            write_episode(out_dir, next_episode_name(out_dir), data)
            kept += 1
            mode_counts[mode] += 1
            bar.update(1)
    finally:
        bar.close()
        env.close()
    return {"kept": kept, "attempted": attempts, "modes": {str(k): v for k, v in mode_counts.items() if v}}
