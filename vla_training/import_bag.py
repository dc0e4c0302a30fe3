"""`vla data import-bag`: rosbag2 (sqlite3 or mcap) -> canonical episodes, through `rosbags` (no ROS).

A YAML file (config/bag_topics.yaml) maps topics to streams:

    instruction: insert the needle
    views: {front: /camera/front/image_raw, wrist: /camera/wrist/image_raw/compressed}
    sensor: /ft_sensor/wrench          # WrenchStamped or vla_policy_ros/msg/SensorPacket
    state: /joint_states               # JointState (positions) or PoseStamped (xyz + quaternion)
    actions:
      source: ee_pose_delta            # or: command
      topic: /ee_pose                  # PoseStamped (ee_pose_delta) or Float32MultiArray (command)
      translation_scale: 1000.0        # m -> mm

Times are header stamps, never receive times. Samples are anchored on the frames of the first view;
`ee_pose_delta` actions are the pose differences between consecutive anchors (translation, and
roll/pitch/yaw in degrees); `command` actions are the latest command at each anchor. One bag ->
one episode.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from .episodes import DatasetError, EpisodeData, write_episode

def _msg_dir() -> Path | None:
    """msg/ of the source tree, or of the installed ROS package share directory."""
    source = Path(__file__).resolve().parents[1] / "msg"
    if source.is_dir():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("vla_policy_ros")) / "msg"
    except Exception:  # noqa: BLE001 - no ROS install: standard types only
        return None


def typestore():
    """Kilted types plus this project's messages (read from msg/*.msg, as data)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    msg_dir = _msg_dir()
    for path in sorted(msg_dir.glob("*.msg")) if msg_dir else []:
        types.update(get_types_from_msg(path.read_text(), f"vla_policy_ros/msg/{path.stem}"))
    store.register(types)
    return store


def load_topic_map(path: str | Path) -> dict:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: topic map not found (see config/bag_topics.yaml)") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("views", {}), dict):
        raise DatasetError(f"{path}: expected a mapping with views: {{name: topic}}, sensor, state, actions")
    actions = spec.get("actions") or {}
    if actions.get("source") not in ("ee_pose_delta", "command") or not actions.get("topic"):
        raise DatasetError(f"{path}: field 'actions': expected source ee_pose_delta|command and a topic, got {actions}")
    if not spec.get("views") and not spec.get("state"):
        raise DatasetError(f"{path}: field 'views': a camera topic (or, without cameras, the state topic) "
                           "anchors the samples")
    return spec


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def _euler(q: np.ndarray) -> np.ndarray:
    """(x, y, z, w) -> roll, pitch, yaw (rad)."""
    x, y, z, w = q
    return np.array([np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y)),
                     np.arcsin(np.clip(2 * (w * y - z * x), -1, 1)),
                     np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))])


def _pose(msg) -> np.ndarray:
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


def read_bag(bag: str | Path, spec: dict) -> EpisodeData:
    from rosbags.highlevel import AnyReader
    from rosbags.image import message_to_cvimage

    where = str(bag)
    topics = {f"view/{v}": t for v, t in spec.get("views", {}).items()}
    for key in ("sensor", "state"):
        if spec.get(key):
            topics[key] = spec[key]
    topics["actions"] = spec["actions"]["topic"]
    streams: dict[str, list] = {k: [] for k in topics}
    try:
        reader = AnyReader([Path(bag)], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        raise DatasetError(f"{where}: cannot open the bag ({type(exc).__name__}: {exc})") from exc
    try:
        present = {c.topic for c in reader.connections}
        missing = [t for t in topics.values() if t not in present]
        if missing:
            raise DatasetError(f"{where}: topic(s) {missing} not in the bag; it has {sorted(present)}")
        by_topic = {t: k for k, t in topics.items()}
        wanted = [c for c in reader.connections if c.topic in by_topic]
        log_times = []  # receive times of the action messages (for commands without a header)
        for conn, timestamp, raw in reader.messages(connections=wanted):
            key = by_topic[conn.topic]
            msg = reader.deserialize(raw, conn.msgtype)
            streams[key].append((conn.msgtype, msg))
            if key == "actions":
                log_times.append(timestamp * 1e-9)
    finally:
        reader.close()
    for key, items in streams.items():  # header stamps, not arrival order
        items.sort(key=lambda item: _stamp(item[1]) if hasattr(item[1], "header") else 0.0)

    views = {}
    for key, items in streams.items():
        if key.startswith("view/"):
            if not items:
                raise DatasetError(f"{where}: field 'images/{key[5:]}': topic {topics[key]} has no messages")
            views[key[5:]] = ([_stamp(m) for _, m in items], np.stack([message_to_cvimage(m, "rgb8") for _, m in items]))

    state = state_t = None
    if "state" in streams and streams["state"]:
        rows = [_pose(m) if "PoseStamped" in t else np.asarray(m.position, float) for t, m in streams["state"]]
        state, state_t = np.stack(rows), np.array([_stamp(m) for _, m in streams["state"]])
    if views:
        anchor = spec.get("anchor_view") or next(iter(spec["views"]))
        anchor_t = np.asarray(views[anchor][0])
    else:  # no cameras: the state messages anchor the samples
        if state_t is None:
            raise DatasetError(f"{where}: field 'state': topic {topics.get('state')} has no messages")
        anchor, anchor_t = "state", state_t
    sensor = sensor_t = None
    if "sensor" in streams and streams["sensor"]:
        blocks, stamps = [], []
        for t, m in streams["sensor"]:
            if "WrenchStamped" in t:
                f, q = m.wrench.force, m.wrench.torque
                blocks.append(np.array([[f.x, f.y, f.z, q.x, q.y, q.z]]))
                stamps.append(np.array([_stamp(m)]))
            else:  # SensorPacket
                data = np.asarray(m.data, np.float32)
                if data.size != m.num_samples * m.channels:
                    raise DatasetError(f"{where}: field 'sensor': packet with {data.size} values, expected "
                                       f"{m.num_samples} x {m.channels}")
                blocks.append(data.reshape(m.num_samples, m.channels))
                stamps.append(np.array([s.sec + s.nanosec * 1e-9 for s in m.sample_stamps]) if len(m.sample_stamps)
                              else _stamp(m) + np.arange(m.num_samples) / m.sample_rate)
        sensor, sensor_t = np.concatenate(blocks), np.concatenate(stamps)

    action_spec = spec["actions"]
    items = streams["actions"]
    if not items:
        raise DatasetError(f"{where}: field 'actions': topic {action_spec['topic']} has no messages")
    if action_spec["source"] == "ee_pose_delta":
        pose_t = np.array([_stamp(m) for _, m in items])
        poses = np.stack([_pose(m) for _, m in items])
        idx = np.clip(np.searchsorted(pose_t, anchor_t, side="right") - 1, 0, len(poses) - 1)
        at = poses[idx]
        scale = float(action_spec.get("translation_scale", 1000.0))
        trans = np.diff(at[:, :3], axis=0) * scale
        euler = np.stack([_euler(q) for q in at[:, 3:]])
        rot = np.degrees(np.angle(np.exp(1j * np.diff(euler, axis=0))))  # wrapped to (-180, 180]
        actions, actions_t = np.concatenate([trans, rot], axis=1), anchor_t[:-1]
        names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw"]
        units = ["mm" if scale == 1000.0 else f"m x {scale}"] * 3 + ["deg"] * 3
    else:
        cmd_t = np.array([_stamp(m) if hasattr(m, "header") else log_t for (_, m), log_t in zip(items, log_times)])
        # Float32MultiArray commands, or ActionChunk (its first action: e.g. sim_robot_node's executed actions)
        values = np.stack([np.asarray(m.actions[:m.action_dim] if hasattr(m, "actions") else m.data, np.float32)
                           for _, m in items])
        idx = np.clip(np.searchsorted(cmd_t, anchor_t, side="right") - 1, 0, len(values) - 1)
        actions, actions_t = values[idx], anchor_t
        names = action_spec.get("names") or [f"a{i}" for i in range(values.shape[1])]
        units = action_spec.get("units") or [""] * values.shape[1]
    if len(actions) == 0:
        raise DatasetError(f"{where}: field 'actions': fewer than 2 {anchor} frames; cannot form an action")
    return EpisodeData(
        instruction=str(spec.get("instruction", "")), actions=actions, actions_t=actions_t, action_names=names,
        state=state, state_t=state_t, sensor=sensor, sensor_t=sensor_t,
        images={v: frames for v, (_, frames) in views.items()},
        images_t={v: np.asarray(ts) for v, (ts, _) in views.items()},
        meta={"source": "rosbag2", "source_path": str(bag), "anchor_view": anchor, "action_units": units,
              "topics": topics},
    )


def import_bags(bags: list[str], topic_map: str | Path, out: str | Path, progress: bool = True) -> list[Path]:
    spec = load_topic_map(topic_map)
    written = []
    for bag in tqdm(bags, desc="import bags", disable=not progress, unit="bag"):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(bag).resolve().name).lstrip(".") or "bag"
        written.append(write_episode(out, name, read_bag(bag, spec)))
    return written
