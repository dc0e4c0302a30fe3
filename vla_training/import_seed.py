"""`vla data import-seed`: the seed's recordings (ORIGIN.md) -> canonical episodes.

Two layouts, detected per directory:
- legacy session `recv_all_YYYYMMDD_HHMMSS/`: `View1..View4/left/*.jpg` (timestamp in the name,
  e.g. `zed_41182735_left_1761551500.174.jpg`; the right stereo images are not used), `View5/*.jpg`,
  `robot_state_*.csv`, `sensor_data_*.npz` (timestamps, forces (N,), alines (N, 1025));
- episode `episode_YYYYMMDD_HHMMSS/`: `metadata.json`, `images/View1..View5/<ts>.jpg`,
  `robot_states.csv`, `sensor_data.npz` (same keys).

Samples are anchored on the frames of the first view, each matched to the nearest robot state
within 10 ms (frames without a match are dropped and counted). Actions are end-effector pose
deltas between consecutive anchors, 7-D `[dx, dy, dz, da, db, dr, gripper]` in mm and degrees with
the seed's constant gripper = 1 kept and flagged constant (the normaliser masks it). The robot
state (joints + pose, 100 Hz) and the sensor stream (force + A-scan, 1026 channels, 650 Hz) are
stored whole at their native rates. The instruction comes from the folder above the session
(e.g. `Needle_insertion_eye_trocar` -> "needle insertion eye trocar").
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .episodes import DatasetError, EpisodeData, write_episode

STATE_COLUMNS = [f"joint_{i}" for i in range(1, 7)] + ["pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"]
ACTION_NAMES = ["dx", "dy", "dz", "da", "db", "dr", "gripper"]
ACTION_UNITS = ["mm", "mm", "mm", "deg", "deg", "deg", "constant"]
MATCH_TOLERANCE_S = 0.010
_TIMESTAMP = re.compile(r"(\d+(?:\.\d+)?)\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def _layout(path: Path) -> str | None:
    if path.name.startswith("recv_all_") or list(path.glob("robot_state_*.csv")):
        return "legacy"
    if (path / "metadata.json").exists() or (path / "robot_states.csv").exists():
        return "episode"
    return None


def find_sessions(src: str | Path) -> list[Path]:
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: not a directory; expected a recv_all_*/episode_* folder or a folder of them")
    if _layout(src):
        return [src]
    sessions = sorted(p for p in src.rglob("*") if p.is_dir() and _layout(p))
    if not sessions:
        raise DatasetError(f"{src}: no seed recordings found (expected recv_all_* or episode_* directories)")
    return sessions


def _frames(folder: Path, where: str) -> tuple[np.ndarray, list[Path]]:
    files = []
    for f in folder.iterdir() if folder.is_dir() else []:
        m = _TIMESTAMP.search(f.name.split("_")[-1]) if f.is_file() else None
        if m:
            files.append((float(m.group(1)), f))
    if not files:
        raise DatasetError(f"{where}: field 'images/{folder.name}': no timestamped images in {folder}")
    files.sort()
    return np.array([t for t, _ in files]), [f for _, f in files]


def _read_states(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DatasetError(f"{where}: field 'robot_state': missing {path.name}") from None
    if not rows:
        raise DatasetError(f"{where}: field 'robot_state': {path.name} has no rows")
    missing = [c for c in ["recv_timestamp"] + STATE_COLUMNS if c not in rows[0]]
    if missing:
        raise DatasetError(f"{where}: field 'robot_state': {path.name} lacks column(s) {missing}")
    try:
        t = np.array([float(r["recv_timestamp"]) for r in rows])
        values = np.array([[float(r[c]) for c in STATE_COLUMNS] for r in rows])
    except ValueError as exc:
        raise DatasetError(f"{where}: field 'robot_state': {path.name} has a non-numeric value ({exc})") from None
    order = np.argsort(t, kind="stable")
    return t[order], values[order]


def _read_sensor(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            t, forces, alines = data["timestamps"], data["forces"], data["alines"]
    except FileNotFoundError:
        raise DatasetError(f"{where}: field 'sensor': missing {path.name}") from None
    except KeyError as exc:
        raise DatasetError(f"{where}: field 'sensor': {path.name} lacks key {exc}; expected timestamps, forces, "
                           "alines") from None
    n = len(t)
    if forces.shape != (n,) or alines.ndim != 2 or len(alines) != n:
        raise DatasetError(f"{where}: field 'sensor': expected timestamps (N,), forces (N,), alines (N, 1025); got "
                           f"{t.shape}, {forces.shape}, {alines.shape}")
    order = np.argsort(t, kind="stable")
    return t[order], np.concatenate([forces[:, None], alines], axis=1)[order].astype(np.float32)


def _instruction(session: Path) -> str:
    parent = session.parent.name if session.name.startswith(("recv_all_", "episode_")) else session.name
    return re.sub(r"\s+", " ", parent.replace("_", " ")).strip().lower() or "insert the needle"


def _decode(files: list[Path], where: str, view: str) -> np.ndarray:
    frames = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{where}: field 'images/{view}': cannot decode {f.name}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if len({fr.shape for fr in frames}) != 1:
        raise DatasetError(f"{where}: field 'images/{view}': frames differ in size {sorted({fr.shape for fr in frames})}")
    return np.stack(frames)


def read_session(session: Path) -> EpisodeData:
    where = str(session)
    layout = _layout(session)
    if layout == "legacy":
        view_dirs = {f"View{i}": session / f"View{i}" / "left" for i in range(1, 5)} | {"View5": session / "View5"}
        states = sorted(session.glob("robot_state_*.csv"))
        sensors = sorted(session.glob("sensor_data_*.npz"))
        state_file = states[0] if states else session / "robot_state_.csv"
        sensor_file = sensors[0] if sensors else None
    else:
        meta = json.loads((session / "metadata.json").read_text()) if (session / "metadata.json").exists() else {}
        views = meta.get("camera_views") or sorted(p.name for p in (session / "images").glob("View*"))
        view_dirs = {v: session / "images" / v for v in views}
        state_file = session / "robot_states.csv"
        sensor_file = session / "sensor_data.npz" if (session / "sensor_data.npz").exists() else None
    view_dirs = {v: d for v, d in view_dirs.items() if d.is_dir()}
    if not view_dirs:
        raise DatasetError(f"{where}: field 'images': no view folders found")
    state_t, state = _read_states(state_file, where)
    frames = {v: _frames(d, where) for v, d in view_dirs.items()}
    anchor_view = sorted(frames)[0]
    anchor_t = frames[anchor_view][0]
    nearest = np.clip(np.searchsorted(state_t, anchor_t), 1, len(state_t) - 1)
    nearest = np.where(np.abs(state_t[nearest - 1] - anchor_t) < np.abs(state_t[nearest] - anchor_t), nearest - 1,
                       nearest)
    matched = np.abs(state_t[nearest] - anchor_t) <= MATCH_TOLERANCE_S
    if matched.sum() < 2:
        raise DatasetError(f"{where}: field 'robot_state': only {int(matched.sum())} {anchor_view} frame(s) have a "
                           f"robot state within {MATCH_TOLERANCE_S * 1e3:.0f} ms; need at least 2")
    t, poses = anchor_t[matched], state[nearest[matched], 6:12]
    deltas = np.diff(poses, axis=0)  # (N-1, 6) mm and degrees
    actions = np.concatenate([deltas, np.ones((len(deltas), 1))], axis=1)
    sensor_t, sensor = _read_sensor(sensor_file, where) if sensor_file else (None, None)
    data = EpisodeData(
        instruction=_instruction(session), actions=actions, actions_t=t[:-1], action_names=ACTION_NAMES,
        state=state, state_t=state_t, state_names=STATE_COLUMNS, sensor=sensor, sensor_t=sensor_t,
        sensor_names=(["force"] + [f"aline_{i}" for i in range(sensor.shape[1] - 1)]) if sensor is not None else [],
        images={v: _decode(files, where, v) for v, (_, files) in frames.items()},
        images_t={v: ts for v, (ts, _) in frames.items()},
        meta={"source": f"seed/{layout}", "source_path": str(session), "anchor_view": anchor_view,
              "unmatched_frames": int((~matched).sum()), "action_units": ACTION_UNITS,
              "mm_per_action_unit": 1.0,
              "constant_action_dims": [n for n, c in zip(ACTION_NAMES, np.ptp(actions, axis=0) < 1e-9) if c]},
    )
    return data


def _episode_name(session: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{session.parent.name}__{session.name}").lstrip(".") or "episode"


def import_seed(src: str | Path, out: str | Path, progress: bool = True) -> list[Path]:
    written = []
    for session in tqdm(find_sessions(src), desc="import seed", disable=not progress, unit="session"):
        written.append(write_episode(out, _episode_name(session), read_session(session)))
    return written
