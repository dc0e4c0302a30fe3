"""Action chunks -> command trajectories (trajectory_msgs), and ActionChunk messages.

ee_delta: each action's first 3 values are end-effector translation deltas and, when A >= 6, the
next 3 are rotation deltas (roll, pitch, yaw); they are accumulated from the current pose into
absolute targets (MultiDOFJointTrajectory, one point per action, time_from_start = (i+1) dt).
joint_delta: the first len(joints) values are joint position deltas accumulated from the current
joint positions (JointTrajectory).
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Transform
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint, MultiDOFJointTrajectory, \
    MultiDOFJointTrajectoryPoint


def _duration(seconds: float) -> Duration:
    sec = int(np.floor(seconds))
    return Duration(sec=sec, nanosec=int(round((seconds - sec) * 1e9)))


def quat_multiply(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Hamilton product of (x, y, z, w) quaternions."""
    x1, y1, z1, w1 = q
    x2, y2, z2, w2 = r
    return np.array([w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2, w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2, w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2])


def quat_from_euler(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (np.cos(roll / 2), np.sin(roll / 2), np.cos(pitch / 2), np.sin(pitch / 2),
                              np.cos(yaw / 2), np.sin(yaw / 2))
    return np.array([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy,
                     cr * cp * cy + sr * sp * sy])


def ee_delta_targets(chunk: np.ndarray, position: np.ndarray, orientation: np.ndarray, translation_scale: float,
                     rotation_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """chunk (H, A) deltas -> absolute positions (H, 3) and orientations (H, 4) from the current pose."""
    positions = position + np.cumsum(chunk[:, :3] * translation_scale, axis=0)
    orientations = np.empty((len(chunk), 4))
    q = np.asarray(orientation, float) / np.linalg.norm(orientation)
    for i, action in enumerate(chunk):
        if chunk.shape[1] >= 6:
            q = quat_multiply(quat_from_euler(*(action[3:6] * rotation_scale)), q)
            q /= np.linalg.norm(q)
        orientations[i] = q
    return positions, orientations


def multidof_trajectory(header, positions: np.ndarray, orientations: np.ndarray, dt: float) -> MultiDOFJointTrajectory:
    msg = MultiDOFJointTrajectory(header=header, joint_names=["end_effector"])
    for i, (p, q) in enumerate(zip(positions, orientations)):
        t = Transform()
        t.translation.x, t.translation.y, t.translation.z = (float(v) for v in p)
        t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in q)
        msg.points.append(MultiDOFJointTrajectoryPoint(transforms=[t], time_from_start=_duration((i + 1) * dt)))
    return msg


def joint_trajectory(header, names: list[str], current: np.ndarray, chunk: np.ndarray, dt: float) -> JointTrajectory:
    targets = current + np.cumsum(chunk[:, :len(names)], axis=0)  # (H, J)
    msg = JointTrajectory(header=header, joint_names=list(names))
    for i, row in enumerate(targets):
        msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in row], time_from_start=_duration((i + 1) * dt)))
    return msg
