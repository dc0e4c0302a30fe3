"""`vla data import-seed`: the seed's recordings (ORIGIN.md) -> canonical episodes.

Two layouts, detected per directory:
- legacy session `recv_all_YYYYMMDD_HHMMSS/`: `View1..View4/left/*.jpg` (timestamp in the name,
  e.g. `zed_41182735_left_1761551500.174.jpg`; the right stereo images are not used), `View5/*.jpg`,
  `robot_state_*.csv`, `sensor_data_*.npz` (timestamps, forces (N,), alines (N, 1025));
- episode `episode_YYYYMMDD_HHMMSS/`: `metadata.json`, `images/View1..View5/<ts>.jpg`,
  `robot_states.csv`, `sensor_data.npz` PRE-WINDOWED: `timestamps (N,)` (each window's last
  sample) and `data (N, W, 1026)`, the latest W samples every ~200 ms; `actions.npz` is usually
  absent (its collector never wrote it): actions come from the poses in both layouts.

Samples are anchored on the frames of the first view, each matched to the latest robot state
stamped at or before it, at most 10 ms old (frames without a match are dropped and counted; no
sample looks at a state or frame stamped after it: at the episode start an anchor frame moves to the
first stamp of a stream that began up to 10 ms after it, an older one is dropped). Actions are
end-effector pose deltas between consecutive anchors one frame period apart: across a gap (frames
without a state, dropped frames) the sample before the gap is dropped and counted (`dropped_at_gaps`),
never labelled with a delta of several periods. 7-D `[dx, dy, dz, da, db, dr, gripper]` in mm and degrees
(angle differences wrapped into (-180, 180]: a crossing of +-180 is a small turn, not 360) with
the seed's constant gripper = 1 kept and flagged constant (the normaliser masks it). The robot
state (joints + pose, 100 Hz) and the sensor stream (force + A-scan, 1026 channels, 650 Hz; the
overlapping windows of the newer layout are merged back into that stream, read one window at a
time) are stored whole at their native rates; a session without a sensor file is imported
without one (trained with a masked sensor window). JPEG frames are stored as recorded (decoded
when a sample needs them): no decode at import, a fraction of the disk. The instruction comes from
the folder above the session (e.g. `Needle_insertion_eye_trocar` -> "needle insertion eye trocar").
"""

from __future__ import annotations

import csv
import json
import re
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .episodes import DatasetError, EpisodeWriter, stream_rate, validate_arrays
from .resample import control_grid, interpolate, max_gap, unwrap_degrees, wrap_degrees

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


def _sensor_blocks(path: Path, where: str, sensor_hz: float):
    """(stamps (n,), samples (n, 1 + A-scan)) blocks of either layout's sensor_data*.npz, read a block at a
    time (a session's sensor does not have to fit in memory)."""
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DatasetError(f"{where}: field 'sensor': missing {path.name}") from None
    except zipfile.BadZipFile:
        raise DatasetError(f"{where}: field 'sensor': {path.name} is not a readable .npz archive") from None
    with archive:
        keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
        if {"timestamps", "data"} <= keys:
            yield from _windows(archive, path, where, sensor_hz)
            return
        if not {"timestamps", "forces", "alines"} <= keys:
            raise DatasetError(f"{where}: field 'sensor': {path.name} has keys {sorted(keys)}; expected timestamps + "
                               "forces + alines (legacy stream) or timestamps + data (pre-windowed episodes)")
        t, forces = (_npz_array(archive, k, path, where) for k in ("timestamps", "forces"))
        with archive.open("alines.npy") as fh:
            shape, dtype = _npy_header(fh, path, where, "alines")
            n = len(t)
            if forces.shape != (n,) or len(shape) != 2 or shape[0] != n:
                raise DatasetError(f"{where}: field 'sensor': {path.name}: expected timestamps (N,), forces (N,), "
                                   f"alines (N, 1025); got {t.shape}, {forces.shape}, {tuple(shape)}")
            step = max(1, (16 << 20) // (shape[1] * dtype.itemsize))
            for begin in range(0, n, step):
                count = min(step, n - begin)
                alines = np.frombuffer(fh.read(count * shape[1] * dtype.itemsize), dtype).reshape(count, shape[1])
                yield t[begin:begin + count], np.concatenate([forces[begin:begin + count, None], alines], axis=1)


def _npy_header(fh, path: Path, where: str, key: str):
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    if fortran:
        raise DatasetError(f"{where}: field 'sensor': {path.name} key {key!r} is in Fortran order; expected C order")
    return shape, dtype


def _npz_array(archive: zipfile.ZipFile, key: str, path: Path, where: str) -> np.ndarray:
    with archive.open(f"{key}.npy") as fh:
        try:
            return np.lib.format.read_array(fh, allow_pickle=False)
        except ValueError as exc:
            raise DatasetError(f"{where}: field 'sensor': {path.name} key {key!r} is unreadable ({exc})") from None


def _windows(archive: zipfile.ZipFile, path: Path, where: str, sensor_hz: float):
    """Pre-windowed `data (N, W, C)` whose window i ends at timestamps[i] -> the sensor stream at
    `sensor_hz`: from each window only the samples newer than the previous window's end (windows
    overlap), one window at a time."""
    t = _npz_array(archive, "timestamps", path, where).astype(np.float64)
    with archive.open("data.npy") as fh:
        shape, dtype = _npy_header(fh, path, where, "data")
        if len(shape) != 3 or shape[0] != len(t):
            raise DatasetError(f"{where}: field 'sensor': {path.name}: expected data (N, W, C) with N = {len(t)} "
                               f"timestamps; got {tuple(shape)}")
        if not len(t):
            raise DatasetError(f"{where}: field 'sensor': {path.name} holds no windows")
        _, window, channels = shape
        previous = -np.inf
        for i in range(len(t)):
            block = np.frombuffer(fh.read(window * channels * dtype.itemsize), dtype).reshape(window, channels)
            times = t[i] - (window - 1 - np.arange(window)) / sensor_hz  # oldest -> newest
            new = times > previous + 0.5 / sensor_hz
            if new.any():
                yield times[new], block[new]
            previous = max(previous, t[i])


def _instruction(session: Path) -> str:
    parent = session.parent.name if session.name.startswith(("recv_all_", "episode_")) else session.name
    return re.sub(r"\s+", " ", parent.replace("_", " ")).strip().lower() or "insert the needle"


def _sample_times(anchor_t: np.ndarray, first_stamps: list[float], state_t: np.ndarray):
    """The anchor frames -> (sample times, the robot-state row of each, which anchor frames are kept).

    A sample at t observes every stream's latest sample stamped <= t (as training reads it), so no
    stream may begin after t: an anchor frame before the last stream's first stamp is moved to it when
    that is within MATCH_TOLERANCE_S (a view started a few ms late), else dropped. The pose is the robot
    state the sample observes, the latest one <= t, and it must be at most MATCH_TOLERANCE_S old."""
    start = max([*first_stamps, float(state_t[0])])
    t = np.maximum(anchor_t, start)
    rows = np.searchsorted(state_t, t + 1e-9, side="right") - 1  # the latest state <= t (samples.py's rule)
    matched = (t - anchor_t <= MATCH_TOLERANCE_S) & (rows >= 0) & \
        (t - state_t[np.maximum(rows, 0)] <= MATCH_TOLERANCE_S)
    return t[matched], rows[matched], matched


def _one_period(anchor_t: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each pair of consecutive kept samples: are they one anchor-frame period apart? Across a gap
    (frames without a robot state, or frames the camera dropped) the pose changed over several periods:
    the sample before the gap is dropped rather than labelled with a multi-period delta."""
    period = float(np.median(np.diff(anchor_t)))
    return np.rint(np.diff(t) / period) == 1


def _session_files(session: Path):
    where, layout = str(session), _layout(session)
    if layout == "legacy":
        view_dirs = {f"View{i}": session / f"View{i}" / "left" for i in range(1, 5)} | {"View5": session / "View5"}
        states = sorted(session.glob("robot_state_*.csv"))
        sensors = sorted(session.glob("sensor_data_*.npz"))
        return layout, view_dirs, states[0] if states else session / "robot_state_.csv", \
            sensors[0] if sensors else None, 650.0
    try:
        meta = json.loads((session / "metadata.json").read_text()) if (session / "metadata.json").exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: field 'metadata': metadata.json is not valid JSON ({exc})") from None
    views = meta.get("camera_views") or sorted(p.name for p in (session / "images").glob("View*"))
    sensor = session / "sensor_data.npz"
    return layout, {v: session / "images" / v for v in views}, session / "robot_states.csv", \
        sensor if sensor.exists() else None, float(meta.get("sensor_hz") or 650.0)


def write_session(session: Path, out: str | Path, progress: bool = True, rate: float | None = None) -> Path:
    """One recording -> one episode, streamed: frames are copied file by file (as recorded), the sensor a
    block at a time; only the small streams (robot state, actions) are held in memory. rate: actions on a
    uniform grid at this many Hz (resample.py) instead of at the anchor view's frames."""
    where = str(session)
    layout, view_dirs, state_file, sensor_file, sensor_hz = _session_files(session)
    view_dirs = {v: d for v, d in view_dirs.items() if d.is_dir()}
    if not view_dirs:
        raise DatasetError(f"{where}: field 'images': no view folders found")
    state_t, state = _read_states(state_file, where)
    frames = {v: _frames(d, where) for v, d in view_dirs.items()}
    anchor_view = sorted(frames)[0]
    t, rows, matched = _sample_times(frames[anchor_view][0], [ts[0] for ts, _ in frames.values()], state_t)
    if matched.sum() < 2:
        raise DatasetError(f"{where}: field 'robot_state': only {int(matched.sum())} {anchor_view} frame(s) have a "
                           f"robot state stamped at most {MATCH_TOLERANCE_S * 1e3:.0f} ms before them; need at least 2")
    if rate:  # a uniform grid at the control rate; the pose interpolated between the recorded states around it
        grid = control_grid(t[0], t[-1], rate, where)
        pose = np.concatenate([state[:, 6:9], unwrap_degrees(state[:, 9:12])], axis=1)
        at, valid = interpolate(state_t, pose, grid, max_gap(state_t))
        one_period, deltas = valid[1:] & valid[:-1], np.diff(at, axis=0)
        t = grid
    else:
        one_period = _one_period(frames[anchor_view][0], t)
        deltas = state[rows[1:], 6:12] - state[rows[:-1], 6:12]  # (N-1, 6) mm and degrees
    if not one_period.any():
        raise DatasetError(f"{where}: field 'robot_state': no two consecutive {anchor_view} frames (one period "
                           "apart) both have a robot state; no action can be labelled")
    deltas[:, 3:] = wrap_degrees(deltas[:, 3:])
    deltas = deltas[one_period]  # a pose change across a gap is not one action
    actions = np.concatenate([deltas, np.ones((len(deltas), 1))], axis=1)
    t = t[:-1][one_period]
    writer = EpisodeWriter(out, _episode_name(session))
    try:
        validate_arrays({"actions": actions, "actions_t": t, "state": state, "state_t": state_t}, where)
        writer.array("actions", actions, np.float32)
        writer.array("actions_t", t, np.float64)
        writer.array("state", state, np.float32)
        writer.array("state_t", state_t, np.float64)
        total = sum(len(files) for _, files in frames.values())
        with tqdm(total=total, desc=session.name, disable=not progress, unit="frame", leave=False) as bar:
            for view, (stamps, files) in frames.items():
                for stamp, f in zip(stamps, files):
                    writer.append_encoded_frame(view, float(stamp), f.read_bytes())
                    bar.update(1)
        channels = 0
        for stamps, rows in _sensor_blocks(sensor_file, where, sensor_hz) if sensor_file else ():
            if not np.isfinite(rows).all():
                raise DatasetError(f"{where}: field 'sensor': {sensor_file.name} contains NaN or inf")
            writer.append_rows("sensor", stamps, rows)
            channels = rows.shape[1]
        if sensor_file and not writer.count("sensor"):
            raise DatasetError(f"{where}: field 'sensor': {sensor_file.name} holds no samples")
        rates = {"control": stream_rate(t), "state": stream_rate(state_t),
                 "sensor": stream_rate(writer.stamps("sensor")) if channels else None,
                 **{f"image/{v}": stream_rate(ts) for v, (ts, _) in frames.items()}}
        meta = {"instruction": _instruction(session), "length": len(actions), "action_names": ACTION_NAMES,
                "state_names": STATE_COLUMNS, "rates_hz": rates,
                "sensor_names": (["force"] + [f"aline_{i}" for i in range(channels - 1)]) if channels else [],
                "source": f"seed/{layout}", "source_path": str(session), "anchor_view": anchor_view,
                "unmatched_frames": int((~matched).sum()), "dropped_at_gaps": int((~one_period).sum()),
                "control_rate_hz": float(rate) if rate else None,
                "action_units": ACTION_UNITS, "mm_per_action_unit": 1.0,
                "has_sensor": bool(channels),
                "constant_action_dims": [n for n, c in zip(ACTION_NAMES, np.ptp(actions, axis=0) < 1e-9) if c]}
    except BaseException:
        writer.abort()
        raise
    return writer.close(meta)


def _episode_name(session: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{session.parent.name}__{session.name}").lstrip(".") or "episode"


def import_seed(src: str | Path, out: str | Path, progress: bool = True, rate: float | None = None) -> list[Path]:
    return [write_session(session, out, progress, rate) for session in
            tqdm(find_sessions(src), desc="import seed", disable=not progress, unit="session")]
