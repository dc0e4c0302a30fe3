"""Peak memory and disk of `vla data import-bag` on a large synthetic session.

    .venv/bin/python bench/import_memory.py [--gb 2.0] [--json out.json] [--workdir DIR]

Writes an mcap bag like a needle-insertion session: 5 camera views as JPEG CompressedImage at 5 Hz
(640x360), a 1026-channel sensor (force + OCT A-scan) at 650 Hz as vla_policy_ros/SensorPacket
batches of 13 samples, 100 Hz joint states and end-effector poses, long enough for `--gb`
gigabytes. Then imports it with the CLI in a child process and reports the child's peak RSS
(getrusage), the wall time, the bag's size, the imported episode's size, the JPEG bytes and what
the same frames would take decoded.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_training.data.import_bag import typestore

VIEWS, CAMERA_HZ, SENSOR_HZ, PACKET, CHANNELS, STATE_HZ = 5, 5.0, 650.0, 13, 1026, 100.0
HEIGHT, WIDTH = 360, 640


def write_session(path: Path, target_bytes: float, seconds: float | None = None) -> dict:
    """A synthetic session of about `target_bytes`, or of `seconds` when given (bench/lerobot_bag_memory.py)."""
    store = typestore()
    T = store.types
    Header, Time = T["std_msgs/msg/Header"], T["builtin_interfaces/msg/Time"]
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (45, 80, 3), dtype=np.uint8), (WIDTH, HEIGHT), cv2.INTER_CUBIC)
    jpegs = [cv2.imencode(".jpg", np.roll(base, 7 * k, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
             for k in range(8)]
    block = rng.normal(size=(PACKET, CHANNELS)).astype(np.float32)
    per_second = VIEWS * CAMERA_HZ * np.mean([len(j) for j in jpegs]) + SENSOR_HZ * CHANNELS * 4
    seconds = seconds or max(2.0, target_bytes / per_second)

    def header(t):
        return Header(stamp=Time(sec=int(t), nanosec=int(round((t % 1) * 1e9))), frame_id="base_link")

    jpeg_bytes = frames = 0
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cams = [writer.add_connection(f"/camera/view{v}/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                      typestore=store) for v in range(1, VIEWS + 1)]
        sensor = writer.add_connection("/oct/packets", "vla_policy_ros/msg/SensorPacket", typestore=store)
        joints = writer.add_connection("/joint_states", "sensor_msgs/msg/JointState", typestore=store)
        pose = writer.add_connection("/ee_pose", "geometry_msgs/msg/PoseStamped", typestore=store)
        P, Pose, Point, Q = (T[f"geometry_msgs/msg/{n}"] for n in ("PoseStamped", "Pose", "Point", "Quaternion"))
        events = sorted([(k / CAMERA_HZ, "camera", k) for k in range(int(seconds * CAMERA_HZ))]
                        + [(k * PACKET / SENSOR_HZ, "sensor", k) for k in range(int(seconds * SENSOR_HZ / PACKET))]
                        + [(k / STATE_HZ, "state", k) for k in range(int(seconds * STATE_HZ))])
        for t, kind, k in events:
            t += 1000.0
            ns = int(t * 1e9)
            if kind == "camera":
                for v, conn in enumerate(cams):
                    data = jpegs[(k + v) % len(jpegs)]
                    msg = T["sensor_msgs/msg/CompressedImage"](header=header(t), format="jpeg",
                                                                 data=np.frombuffer(data, np.uint8))
                    writer.write(conn, ns, store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
                    jpeg_bytes, frames = jpeg_bytes + len(data), frames + 1
            elif kind == "sensor":
                msg = T["vla_policy_ros/msg/SensorPacket"](
                    header=header(t), channels=CHANNELS, num_samples=PACKET, sample_rate=SENSOR_HZ, sample_stamps=[],
                    channel_names=[],
                    data=(block + np.float32(k % 97)).ravel())
                writer.write(sensor, ns, store.serialize_cdr(msg, "vla_policy_ros/msg/SensorPacket"))
            else:
                js = T["sensor_msgs/msg/JointState"](header=header(t), name=[f"joint_{i}" for i in range(1, 7)],
                                                      position=np.full(6, 0.001 * k), velocity=np.zeros(0),
                                                      effort=np.zeros(0))
                writer.write(joints, ns, store.serialize_cdr(js, "sensor_msgs/msg/JointState"))
                msg = P(header=header(t), pose=Pose(position=Point(x=0.3 + 1e-5 * k, y=0.0, z=0.2),
                                                     orientation=Q(x=0.0, y=0.0, z=0.0, w=1.0)))
                writer.write(pose, ns, store.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped"))
    return {"seconds": round(seconds, 1), "frames": frames, "jpeg_bytes": jpeg_bytes,
            "decoded_frame_bytes": frames * HEIGHT * WIDTH * 3}


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=2.0, help="size of the synthetic bag (GB)")
    parser.add_argument("--workdir", help="where the bag and the import go (default: a temporary directory)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vla-import-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    bag, out = work / "session", work / "dataset"
    shutil.rmtree(bag, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    session = write_session(bag, args.gb * 1e9)
    write_s = time.perf_counter() - start
    topics = work / "topics.yaml"
    topics.write_text(yaml.safe_dump({
        "instruction": "insert the needle", "anchor_view": "view1", "state": "/joint_states", "sensor": "/oct/packets",
        "views": {f"view{v}": f"/camera/view{v}/image_raw/compressed" for v in range(1, VIEWS + 1)},
        "actions": {"source": "ee_pose_delta", "topic": "/ee_pose"}}))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "vla_training.cli", "data", "import-bag", str(bag), "--topics",
                          str(topics), "--out", str(out), "--no-progress"], capture_output=True, text=True)
    import_s = time.perf_counter() - start
    if run.returncode != 0:
        print(run.stdout[-2000:] + run.stderr[-2000:])
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
    (episode,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    frames_on_disk = sum(f.stat().st_size for f in (episode / "images").glob("*.frames"))
    figures = {"bag_bytes": size_of(bag), "session": session, "import_s": round(import_s, 1),
               "write_bag_s": round(write_s, 1), "import_peak_rss_mb": round(peak_mb, 1),
               "episode_bytes": size_of(episode), "frames_bytes": frames_on_disk,
               "sensor_bytes": (episode / "sensor.npy").stat().st_size,
               "frames_vs_decoded": round(frames_on_disk / session["decoded_frame_bytes"], 4)}
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
