"""Joint limits of the robot, read from its URDF (`robot_description`), and the joint-space bounds a
command must keep: position and velocity limits per joint, a per-step and a per-chunk motion bound.

Pure Python + NumPy (+ yourdfpy to parse the URDF), so it is tested without rclpy.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .safety import LimitResult


class RobotDescriptionError(ValueError):
    pass


@dataclass(frozen=True)
class JointLimit:
    lower: float  # rad or m; -inf for a continuous joint
    upper: float
    velocity: float  # rad/s or m/s; inf when the URDF gives none


def joint_limits_from_urdf(urdf_xml: str) -> dict[str, JointLimit]:
    """{joint name: JointLimit} of the movable joints of a URDF string (fixed joints are left out)."""
    import yourdfpy

    try:
        robot = yourdfpy.URDF.load(io.StringIO(urdf_xml), load_meshes=False, build_scene_graph=False,
                                   load_collision_meshes=False)
    except Exception as exc:  # noqa: BLE001 - lxml / yourdfpy raise many types; one clear message
        raise RobotDescriptionError(f"robot_description: not a readable URDF ({type(exc).__name__}: {exc})") from None
    limits = {}
    for joint in robot.robot.joints:
        if joint.type == "fixed":
            continue
        lim = joint.limit
        continuous = joint.type == "continuous"
        lower = -np.inf if continuous or lim is None or lim.lower is None else float(lim.lower)
        upper = np.inf if continuous or lim is None or lim.upper is None else float(lim.upper)
        velocity = np.inf if lim is None or not lim.velocity else float(lim.velocity)
        limits[joint.name] = JointLimit(lower, upper, velocity)
    return limits


@dataclass
class JointBounds:
    """Bounds on joint targets (H, J) reached every dt from the current positions (J,)."""

    lower: np.ndarray  # (J,)
    upper: np.ndarray  # (J,)
    velocity: np.ndarray  # (J,) per second
    max_chunk_motion: float = np.inf  # largest |target - current| over the chunk, per joint
    mode: str = "clip"

    @classmethod
    def for_joints(cls, names: list[str], limits: dict[str, JointLimit], max_chunk_motion: float = np.inf,
                   mode: str = "clip") -> "JointBounds":
        missing = [n for n in names if n not in limits]
        if missing:
            raise RobotDescriptionError(f"robot_description has no limits for joints {missing}; it lists "
                                        f"{sorted(limits)}")
        unbounded = [n for n in names if not 0 < limits[n].velocity < np.inf]
        if unbounded:
            raise RobotDescriptionError(f"robot_description: joints {unbounded} have no velocity limit (<limit "
                                        "velocity=...> missing or 0); commands to them cannot be bounded: add it")
        pick = lambda attr: np.array([getattr(limits[n], attr) for n in names], float)  # noqa: E731
        return cls(pick("lower"), pick("upper"), pick("velocity"), max_chunk_motion, mode)

    def apply(self, targets: np.ndarray, current: np.ndarray, dt: float) -> LimitResult:
        """Targets within position limits, velocity limits and the chunk bound; clipped or rejected."""
        targets, current = np.asarray(targets, float), np.asarray(current, float)
        if not (np.isfinite(targets).all() and np.isfinite(current).all()):
            return LimitResult(None, None, "rejected", "non-finite joint target or joint state")
        if np.any((current < self.lower) | (current > self.upper)):
            return LimitResult(None, None, "rejected", "the current joint position is outside its limits")
        max_step = self.velocity * dt
        steps = np.diff(np.vstack([current, targets]), axis=0)
        problems = []
        if np.any((targets < self.lower) | (targets > self.upper)):
            problems.append("beyond the joint position limits")
        if np.any(np.abs(steps) > max_step * (1 + 1e-9)):
            problems.append("faster than the joint velocity limits")
        if np.any(np.abs(targets - current) > self.max_chunk_motion * (1 + 1e-9)):
            problems.append(f"more than max_chunk_motion {self.max_chunk_motion} from the current position")
        if not problems:
            return LimitResult(targets, None, "ok")
        if self.mode == "reject":
            return LimitResult(None, None, "rejected", "; ".join(problems))
        out, previous = np.empty_like(targets), current
        low = np.maximum(self.lower, current - self.max_chunk_motion)
        high = np.minimum(self.upper, current + self.max_chunk_motion)
        for i, target in enumerate(targets):
            target = np.clip(previous + np.clip(target - previous, -max_step, max_step), low, high)
            out[i] = previous = target
        return LimitResult(out, None, "clipped", "; ".join(problems))
