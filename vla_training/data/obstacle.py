"""`peg-insert-side-obstacle-v3`: peg-insert-side with a post between the peg and the hole.

The multimodal closed-loop task. Meta-World's peg-insert-side MJCF gets one more body, a post (a box,
red), added through `mujoco.MjSpec` when the model is built; nothing else in the scene changes.
Placements are drawn from the placement seed (not MT1's list): the hole on the robot's side of the
table (y 0.42..0.50), the peg on the far side (at least 0.18 further in y), so the peg must cross the
post's line to reach the hole. The post stands at x = 0.14, y = hole + 0.09, 0.25 m tall: away from
the insertion line (the peg's final pose) and from the peg's start, and across the straight path
between them. Because the peg is a 0.24 m bar lying along x, it passes the post either in front
(hand at x 0.01, the bar between the post and the hole's box) or behind it (hand at x 0.33), then
slides along the hole's axis; half-way between the two (what an average of both does) is the post.
The post moves with the hole, which the policy observes (state `goal_*`).

Success = Meta-World's insertion success and no contact with the post during the episode (every
physics substep's MuJoCo contacts, any geom against the post: peg, gripper, arm).

`DetourExpert` is the scripted demonstrator: grasp, lift, pass in front (mode -1) or behind (+1),
align with the hole, insert. Each stage ends on what the observation shows (it descends open, closes
once the hand is at the peg and lifts when the fingers have closed and stopped closing, not after a count
of steps), so a policy that sees the state can tell what comes next even when it sees it late.
`vla data sim --task peg-insert-side-obstacle-v3 --modes 2` demonstrates every placement both ways
(data/sim.py): the same observation is answered both ways, half each, so a policy cannot learn a side
per placement; it has to pick one.
"""

from __future__ import annotations

import numpy as np

BASE_TASK = "peg-insert-side-v3"
OBSTACLE_TASK = "peg-insert-side-obstacle-v3"
POST_HALF_SIZE = (0.015, 0.015, 0.125)  # m
POST_X, POST_DY = 0.14, 0.09  # post at (POST_X, hole_y + POST_DY)
PASS_X = {-1: 0.01, 1: 0.33}  # the hand's x while the bar crosses the post's line: in front of it / behind it
CARRY_Z = 0.16
SETTLED_GRIP = 0.001  # finger opening change per step (obs gripper vs its previous frame) that ends the grasp
CLOSED_GRIP = 0.5  # finger opening (obs gripper, 1 = open) below which the fingers hold something
MAX_GRASP_STEPS = 40  # a cap for fingers that never settle (reached in none of 80 demonstrations)


def obstacle_env_class(base_cls):
    """The Meta-World env class with the post added to its model."""
    import mujoco

    class ObstacleEnv(base_cls):
        def _initialize_simulation(self):
            spec = mujoco.MjSpec.from_file(self.fullpath)
            body = spec.worldbody.add_body(name="obstacle", pos=[POST_X, 0.55, POST_HALF_SIZE[2]])
            body.add_geom(name="obstacle", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(POST_HALF_SIZE),
                          rgba=[0.85, 0.15, 0.15, 1.0], contype=1, conaffinity=1)
            model = spec.compile()
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
            return model, mujoco.MjData(model)

    ObstacleEnv.__name__ = ObstacleEnv.__qualname__ = f"{base_cls.__name__}Obstacle"
    return ObstacleEnv


def placement_layout(seed: int, placement: int) -> np.ndarray:
    """Meta-World's reset vector for one placement: peg xyz, hole-box xyz (the same for the same seed)."""
    rng = np.random.default_rng([seed, placement, 7919])
    hole_y = rng.uniform(0.42, 0.50)
    return np.array([rng.uniform(0.10, 0.20), rng.uniform(hole_y + 0.18, 0.72), 0.02,
                     rng.uniform(-0.35, -0.25), hole_y, 0.0])


def post_position(goal: np.ndarray) -> np.ndarray:
    return np.array([POST_X, float(goal[1]) + POST_DY, POST_HALF_SIZE[2]])


def passed_side(crossing_x: float | None) -> str:
    """Where the hand crossed the post's line: 'front', 'behind', 'through' (within 5 cm of the post's x), or
    'not yet'."""
    if crossing_x is None:
        return "not yet"
    if abs(crossing_x - POST_X) < 0.05:
        return "through"
    return "front" if crossing_x < POST_X else "behind"


def touches(model, data, geom: int) -> bool:
    """Does any current MuJoCo contact involve `geom`?"""
    n = data.ncon
    return bool(n) and bool(np.any(data.contact.geom1[:n] == geom) or np.any(data.contact.geom2[:n] == geom))


class DetourExpert:
    """Scripted demonstrator for the obstacle task; `mode` -1 passes in front of the post, +1 behind it,
    0 crosses where it lifted the peg (no detour: the straight path, which meets the post).

    Actions as Meta-World's experts: hand target error x 25 clipped to [-1, 1], gripper -1 open / 0.6 closed.
    """

    GAIN = 25.0

    def __init__(self, mode: int) -> None:
        if mode not in (-1, 0, 1):
            raise ValueError(f"mode: expected -1 (in front of the post), 1 (behind it) or 0 (straight), got {mode!r}")
        self.mode, self.stage, self.closed_steps = mode, "reach", 0
        self.stages: dict[str, int] = {}
        self.steps = 0

    def _go(self, hand: np.ndarray, target: np.ndarray, grip: float) -> np.ndarray:
        return np.append(np.clip((target - hand) * self.GAIN, -1.0, 1.0), grip).astype(np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        hand, peg, goal = obs[:3], obs[4:7], obs[36:39]
        self.steps += 1
        self.stages.setdefault(self.stage, self.steps - 1)
        x_pass = PASS_X.get(self.mode, hand[0])
        if self.stage == "reach":  # above the peg, open
            if np.linalg.norm(hand[:2] - peg[:2]) < 0.01:
                self.stage = "descend"
            return self._go(hand, np.array([peg[0], peg[1], 0.15]), -1.0)
        if self.stage == "descend":  # open until the fingers are around the peg
            if hand[2] - peg[2] < 0.03:
                self.stage = "grasp"
            else:
                return self._go(hand, peg, -1.0)
        if self.stage == "grasp":  # until the fingers stop closing: a state the observation shows
            self.closed_steps += 1
            if (obs[3] < CLOSED_GRIP and abs(obs[3] - obs[21]) < SETTLED_GRIP) or self.closed_steps > MAX_GRASP_STEPS:
                self.stage = "lift"
            return self._go(hand, peg, 0.6)
        if self.stage == "lift":
            if hand[2] > CARRY_Z - 0.02:
                self.stage = "pass"
            return self._go(hand, np.array([hand[0], hand[1], CARRY_Z]), 0.6)
        if self.stage == "pass" and self.mode == 0:
            self.stage = "cross"
        if self.stage == "pass":  # to the pass x, at the peg's y
            target = np.array([x_pass, hand[1], CARRY_Z])
            if abs(hand[0] - x_pass) < 0.015:
                self.stage = "cross"
            return self._go(hand, target, 0.6)
        if self.stage == "cross":  # across the post's line, at the pass x
            target = np.array([x_pass, goal[1], CARRY_Z])
            if abs(hand[1] - goal[1]) < 0.015:
                self.stage = "align"
            return self._go(hand, target, 0.6)
        if self.stage == "align":  # Meta-World's pre-insertion point: on the hole's axis, 0.4 m out
            if np.linalg.norm(peg[1:] - np.array([goal[1], CARRY_Z])) < 0.03:
                self.stage = "insert"
            return self._go(hand, np.array([0.05, goal[1], CARRY_Z]), 0.6)
        return self._go(hand, np.array([-0.35, goal[1], CARRY_Z]), 0.6)

    @property
    def record(self) -> dict:
        return {"mode": self.mode, "pass_x": PASS_X.get(self.mode), "stage_starts": dict(self.stages)}
