"""Small recordings in the research code's two on-disk layouts, built from the facts in
../shared/seed/ORIGIN.md, with the mess real sessions have: sessions without a sensor file, stray
files, the unused right-eye ZED folders, a view with fewer frames, pose angles crossing +-180 deg,
and (newer layout) a pre-windowed sensor file and no actions.npz."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

STATE_HEADER = ["recv_timestamp", "origin_timestamp", "send_timestamp"]
SENSOR_HZ = 650.0


def jpeg(path: Path, value: int, size=(12, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), value, np.uint8)
    image[0, 0] = (255 - value, value // 2, 7)  # not a flat colour: decoding order errors would show
    cv2.imwrite(str(path), image)


def pose_r(k: int) -> float:
    """The r angle crosses +180 -> -180 between samples 100 and 101 (3 degrees per 10 ms sample... wrapped)."""
    return float(((170.0 + 0.2 * k) + 180.0) % 360.0 - 180.0)


def states_csv(path: Path, times: np.ndarray, force_column: str = "force_placeholder") -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(STATE_HEADER + [force_column] + [f"joint_{i}" for i in range(1, 7)]
                        + ["pose_x", "pose_y", "pose_z", "pose_a", "pose_b", "pose_r"])
        for k, t in enumerate(times):
            writer.writerow([t, t, t, 0] + [0.1 * k + i for i in range(6)]
                            + [10.0 * k + 0.001 * k * k, 2.0 * k, 0, 0, 0, pose_r(k)])


def sensor_stream(t0: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(stamps (n,), samples (n, 1026)): force + a 1025-point A-scan at 650 Hz."""
    t = t0 + np.arange(n) / SENSOR_HZ
    rng = np.random.default_rng(int(t0) % 1000)
    return t, np.concatenate([np.sin(t)[:, None], rng.normal(size=(n, 1025))], axis=1).astype(np.float32)


def legacy_session(root: Path, name: str, t0: float, frames: int = 5, with_sensor: bool = True) -> Path:
    """recv_all_*: View1..4/{left,right}/zed_*_<ts>.jpg, View5/oak_<ts>.jpg, robot_state_*.csv, sensor_data_*.npz."""
    session = root / "Needle_insertion_eye_trocar" / name
    for k in range(frames):
        t = t0 + 0.5 * k
        for view in range(1, 5):
            if view == 3 and k == frames - 1:
                continue  # View3 has one frame fewer than the others
            jpeg(session / f"View{view}" / "left" / f"zed_41182735_left_{t:.3f}.jpg", 40 * k)
            jpeg(session / f"View{view}" / "right" / f"zed_41182735_right_{t:.3f}.jpg", 255 - 40 * k)
        jpeg(session / "View5" / f"oak_{t + 0.004:.3f}.jpg", 40 * k)
    (session / "View1" / "left" / "Thumbs.db").write_bytes(b"stray")
    (session / "notes.txt").write_text("stray file")
    states_csv(session / f"robot_state_{name[9:]}.csv", t0 + np.arange(0, 50 * frames) * 0.01)
    if with_sensor:
        t, samples = sensor_stream(t0, int(0.5 * frames * SENSOR_HZ))
        np.savez(session / f"sensor_data_{name[9:]}.npz", timestamps=t, forces=samples[:, 0], alines=samples[:, 1:])
    return session


def episode_session(root: Path, name: str, t0: float, frames: int = 5, window: int = 200) -> tuple[Path, tuple]:
    """episode_*: metadata.json, images/View*/<ts>.jpg, robot_states.csv (header `force`), and a PRE-WINDOWED
    sensor_data.npz: timestamps (N,) = each window's last sample, data (N, window, 1026), every 0.2 s;
    no actions.npz. Returns the session and the sensor stream the windows were cut from."""
    session = root / "Needle_insertion_eye_trocar" / name
    views = ["View1", "View2", "View5"]
    (session / "images").mkdir(parents=True)
    (session / "metadata.json").write_text(json.dumps({"robot_hz": 100, "sensor_hz": SENSOR_HZ,
                                                       "sensor_window_size": window, "camera_views": views}))
    for k in range(frames):
        for view in views:
            jpeg(session / "images" / view / f"{t0 + 0.5 * k:.6f}.jpg", 30 * k)
    states_csv(session / "robot_states.csv", t0 + np.arange(0, 50 * frames) * 0.01, force_column="force")
    stream_t, stream = sensor_stream(t0, int(0.5 * frames * SENSOR_HZ))
    ends = np.arange(window - 1, len(stream_t), int(0.2 * SENSOR_HZ))  # a window every 130 samples
    data = np.stack([stream[e - window + 1:e + 1] for e in ends])  # (N, window, 1026)
    np.savez(session / "sensor_data.npz", timestamps=stream_t[ends], data=data)
    return session, (stream_t, stream, ends, window)
