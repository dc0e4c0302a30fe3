"""`vla data import-bag`: rosbag2 (sqlite3 or mcap) -> canonical episodes, through `rosbags` (no ROS).

A YAML file (config/bag_topics.yaml) maps topics to streams:

    instruction: insert the needle
    views: {front: /camera/front/image_raw, wrist: /camera/wrist/image_raw/compressed}
    sensor: /ft_sensor/wrench          # WrenchStamped, vla_policy_ros/msg/SensorPacket or Float32MultiArray
    sensor_channels: 1026              # Float32MultiArray only: values per sample
    state: /joint_states               # JointState (positions, by name) or PoseStamped (xyz + quaternion)
    actions:
      source: ee_pose_delta            # or: command
      topic: /ee_pose                  # PoseStamped (ee_pose_delta) or Float32MultiArray (command)
      translation_scale: 1000.0        # m -> mm
    split:                             # optional: several episodes in one bag
      marker: /episode_marker          #   std_msgs/String "start"/"end" or std_msgs/Bool true/false
      gap_s: 2.0                       #   or a gap this long in the anchor camera's messages

Times are header stamps, never receive times (a Float32MultiArray, which has none, takes its
receive time). Samples are anchored on the frames of the first view, or with `--rate HZ` (topic map:
`rate_hz`) on a uniform grid at that control rate; `ee_pose_delta` actions are the pose differences
between consecutive sample times (translation, and roll/pitch/yaw in degrees, wrapped; never across a
gap: see resample.py); `command` actions are the latest command at each sample time. Messages are decoded by the same functions
as the live node (`vla_training.data.messages`). The bag is streamed: each frame and sensor packet goes to
disk as it is read (compressed frames as recorded, decoded when a sample needs them), so memory
stays bounded whatever the bag's size.
"""

from __future__ import annotations

import bisect
import re
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from .episodes import DatasetError, Episode, EpisodeWriter, stream_rate
from .messages import ImageConversionError, InputError, decode_sensor, image_to_rgb
from .resample import control_grid, interpolate, max_gap, one_period, unwrap_degrees, wrap_degrees

def _msg_dir() -> Path | None:
    """msg/ of the source tree, or of the installed ROS package share directory."""
    source = Path(__file__).resolve().parents[2] / "msg"
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


def _segments(reader, spec: dict, anchor_topic: str, where: str) -> list[tuple[int, int]]:
    """[(start, end)] receive-time windows (ns) of the bag's episodes: the whole bag, the marker's
    start/end pairs, or the anchor stream cut at gaps longer than gap_s."""
    split = spec.get("split") or {}
    conns = {c.topic: c for c in reader.connections}
    if split.get("marker"):
        marker = split["marker"]
        if marker not in conns:
            raise DatasetError(f"{where}: field 'split.marker': topic {marker} is not in the bag")
        segments, start = [], None
        for conn, timestamp, raw in reader.messages(connections=[conns[marker]]):
            value = reader.deserialize(raw, conn.msgtype).data
            begins = value is True or str(value).strip().lower() == "start"
            if begins:
                start = timestamp
            elif start is not None:
                segments.append((start, timestamp))
                start = None
        if start is not None:
            segments.append((start, 2**63 - 1))
        if not segments:
            raise DatasetError(f"{where}: field 'split.marker': no start/end on {marker}")
        return segments
    if split.get("gap_s"):
        times = [t for _, t, _ in reader.messages(connections=[conns[anchor_topic]])]
        gap, segments, begin = int(float(split["gap_s"]) * 1e9), [], times[0] if times else 0
        for a, b in zip(times, times[1:]):
            if b - a > gap:
                segments.append((begin, a))
                begin = b
        return segments + [(begin, times[-1] if times else 0)]
    return [(0, 2**63 - 1)]


class _Episode:
    """What one episode of a bag collects while streaming: frames and sensor rows go to its writer,
    the small streams (state, poses or commands) stay in memory."""

    def __init__(self, out: Path, name: str) -> None:
        self.writer = EpisodeWriter(out, name)
        self.state: list[tuple[float, np.ndarray]] = []
        self.state_names: list[str] = []
        self.actions: list[tuple[float, np.ndarray]] = []
        self.sensor_channels = 0


def _state_row(msg, episode: _Episode, where: str) -> np.ndarray:
    if hasattr(msg, "pose"):
        return _pose(msg)
    names, position = list(msg.name), np.asarray(msg.position, float)
    if not episode.state_names:
        episode.state_names = names or [f"joint_{i}" for i in range(len(position))]
    if names and names != episode.state_names:  # joints by name, in the first message's order
        missing = [n for n in episode.state_names if n not in names]
        if missing:
            raise DatasetError(f"{where}: field 'state': a JointState lacks joints {missing}")
        position = position[[names.index(n) for n in episode.state_names]]
    return position


def read_bag(bag: str | Path, spec: dict, out: str | Path, name: str | None = None, progress: bool = True) -> list[Path]:
    """Stream one bag into episodes under `out` (several with `split`); returns their directories."""
    from rosbags.highlevel import AnyReader

    where = str(bag)
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(bag).resolve().name).lstrip(".") or "bag"
    topics = {f"view/{v}": t for v, t in spec.get("views", {}).items()}
    for key in ("sensor", "state"):
        if spec.get(key):
            topics[key] = spec[key]
    topics["actions"] = spec["actions"]["topic"]
    try:
        reader = AnyReader([Path(bag)], default_typestore=typestore())
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        raise DatasetError(f"{where}: cannot open the bag ({type(exc).__name__}: {exc})") from exc
    episodes: list[_Episode] = []
    try:
        present = {c.topic for c in reader.connections}
        missing = [t for t in topics.values() if t not in present]
        if missing:
            raise DatasetError(f"{where}: topic(s) {missing} not in the bag; it has {sorted(present)}")
        anchor_view = spec.get("anchor_view") or next(iter(spec.get("views") or {}), None)
        anchor_topic = topics[f"view/{anchor_view}"] if anchor_view else topics["state"]
        segments = _segments(reader, spec, anchor_topic, where)
        starts = [a for a, _ in segments]
        names = [name] if len(segments) == 1 else [f"{name}_{i:03d}" for i in range(len(segments))]
        episodes = [_Episode(Path(out), n) for n in names]
        by_topic = {t: k for k, t in topics.items()}
        wanted = [c for c in reader.connections if c.topic in by_topic]
        total = sum(c.msgcount for c in wanted)
        bar = tqdm(total=total, desc=f"import {Path(bag).name}", disable=not progress, unit="msg")
        for conn, timestamp, raw in reader.messages(connections=wanted):
            bar.update(1)
            i = bisect.bisect_right(starts, timestamp) - 1
            if i < 0 or timestamp > segments[i][1]:
                continue  # between episodes
            _add(episodes[i], by_topic[conn.topic], reader.deserialize(raw, conn.msgtype), timestamp * 1e-9, spec,
                 where)
        bar.close()
    except BaseException:
        for episode in episodes:
            episode.writer.abort()
        raise
    finally:
        reader.close()
    written = []
    try:
        for k, episode in enumerate(episodes):
            written.append(_finish(episode, spec, topics, anchor_view, f"{where}" + (f" (episode {k})" if len(episodes) > 1
                                                                                        else "")))
    except BaseException:
        for episode in episodes[len(written):]:
            episode.writer.abort()
        raise
    return written


def _add(episode: _Episode, key: str, msg, receipt: float, spec: dict, where: str) -> None:
    """One message into its episode: frames and sensor rows to disk, the rest in memory."""
    if key.startswith("view/"):
        view, stamp = key[5:], _stamp(msg)
        fmt = getattr(msg, "format", "").lower()
        if fmt and any(kind in fmt for kind in ("jpeg", "jpg", "png")):
            episode.writer.append_encoded_frame(view, stamp, bytes(msg.data))  # as recorded
            return
        try:
            episode.writer.append_frame(view, stamp, image_to_rgb(msg))
        except ImageConversionError as exc:
            raise DatasetError(f"{where}: field 'images/{view}': frame stamped {stamp:.3f}: {exc}") from None
    elif key == "sensor":
        if not hasattr(msg, "header") and not spec.get("sensor_channels"):  # a bare array: how many per sample?
            raise DatasetError(f"{where}: field 'sensor': {spec['sensor']} carries {len(msg.data)} values per message "
                               "with no channel count; set sensor_channels in the topic map (e.g. 1026)")
        channels = 6 if hasattr(msg, "wrench") else int(getattr(msg, "channels", 0) or spec.get("sensor_channels"))
        try:
            stamps, rows = decode_sensor(msg, channels, receipt)
        except InputError as exc:
            raise DatasetError(f"{where}: field 'sensor': message received at {receipt:.3f}: {exc}") from None
        episode.writer.append_rows("sensor", stamps, rows)
    elif key == "state":
        episode.state.append((_stamp(msg), _state_row(msg, episode, where)))
    else:  # actions: poses, or commands (Float32MultiArray without a header: receive time)
        if hasattr(msg, "pose"):
            episode.actions.append((_stamp(msg), _pose(msg)))
        else:
            values = msg.actions[:msg.action_dim] if hasattr(msg, "actions") else msg.data
            episode.actions.append((_stamp(msg) if hasattr(msg, "header") else receipt, np.asarray(values, np.float32)))


def _finish(episode: _Episode, spec: dict, topics: dict, anchor_view: str | None, where: str) -> Path:
    writer = episode.writer
    if anchor_view:
        if not writer.count(f"images/{anchor_view}"):
            raise DatasetError(f"{where}: field 'images/{anchor_view}': topic {topics[f'view/{anchor_view}']} has no "
                               "messages")
        anchor_t = np.sort(np.asarray(writer.stamps(f"images/{anchor_view}")))
        anchor = anchor_view
    else:
        if not episode.state:
            raise DatasetError(f"{where}: field 'state': topic {topics.get('state')} has no messages")
        anchor_t, anchor = np.sort([t for t, _ in episode.state]), "state"
    for view in spec.get("views", {}):
        if not writer.count(f"images/{view}"):
            raise DatasetError(f"{where}: field 'images/{view}': topic {topics[f'view/{view}']} has no messages")
    state_names = list(episode.state_names)
    if episode.state:
        order = np.argsort([t for t, _ in episode.state], kind="stable")
        state_t = np.array([episode.state[i][0] for i in order])
        state = np.stack([episode.state[i][1] for i in order])
        if not state_names:  # PoseStamped
            state_names = ["x", "y", "z", "qx", "qy", "qz", "qw"]
        writer.array("state", state, np.float32)
        writer.array("state_t", state_t, np.float64)
    action_spec = spec["actions"]
    if not episode.actions:
        raise DatasetError(f"{where}: field 'actions': topic {action_spec['topic']} has no messages")
    items = sorted(episode.actions, key=lambda item: item[0])
    item_t, values = np.array([t for t, _ in items]), np.stack([v for _, v in items])
    rate = spec.get("rate_hz")
    # sample times: a uniform grid at the control rate (--rate), else the anchor's frames
    times = control_grid(anchor_t[0], anchor_t[-1], float(rate), where) if rate else anchor_t
    idx = np.clip(np.searchsorted(item_t, times, side="right") - 1, 0, len(values) - 1)  # latest <= t
    if action_spec["source"] == "ee_pose_delta":
        euler = unwrap_degrees(np.degrees(np.stack([_euler(q) for q in values[:, 3:]])))
        poses = np.concatenate([values[:, :3], euler], axis=1)  # (N, 6) m and degrees
        # the pose interpolated between the recorded poses around each sample time, never across a pose gap
        at, valid = interpolate(item_t, poses, times, max_gap(item_t))
        pairs = valid[1:] & valid[:-1]
        if not rate and len(anchor_t) > 1:  # at the frames: a delta only between frames one period apart
            pairs &= one_period(anchor_t, float(np.median(np.diff(anchor_t))))
        scale = float(action_spec.get("translation_scale", 1000.0))
        deltas = np.diff(at, axis=0)
        actions = np.concatenate([deltas[:, :3] * scale, wrap_degrees(deltas[:, 3:])], axis=1)[pairs]
        actions_t, dropped = times[:-1][pairs], int((~pairs).sum())
        names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw"]
        units = ["mm" if scale == 1000.0 else f"m x {scale}"] * 3 + ["deg"] * 3
    else:  # commands: the latest command at each sample time
        actions, actions_t, dropped = values[idx], times, 0
        names = action_spec.get("names") or [f"a{i}" for i in range(values.shape[1])]
        units = action_spec.get("units") or [""] * values.shape[1]
    if len(actions) == 0:
        raise DatasetError(f"{where}: field 'actions': no two consecutive sample times with a recorded pose around "
                           f"them ({anchor} frames{f', --rate {rate}' if rate else ''}); cannot form an action")
    writer.array("actions", actions, np.float32)
    writer.array("actions_t", actions_t, np.float64)
    rates = {"control": stream_rate(actions_t), "state": stream_rate(state_t) if episode.state else None,
             "sensor": stream_rate(writer.stamps("sensor")) if writer.count("sensor") else None,
             **{f"image/{v}": stream_rate(writer.stamps(f"images/{v}")) for v in spec.get("views", {})}}
    meta = {"instruction": str(spec.get("instruction", "")), "length": len(actions), "action_names": names,
            "state_names": state_names, "sensor_names": [], "rates_hz": rates, "source": "rosbag2",
            "source_path": where, "anchor_view": anchor, "action_units": units, "topics": topics,
            "has_sensor": writer.count("sensor") > 0, "dropped_at_gaps": dropped,
            "control_rate_hz": float(rate) if rate else None}
    return writer.close(meta)


def import_bags(bags: list[str], topic_map: str | Path, out: str | Path, progress: bool = True,
                rate: float | None = None) -> list[Path]:
    """rate: actions on a uniform grid at this many Hz (else at the anchor's frames); the topic map's `rate_hz`
    says the same."""
    spec = load_topic_map(topic_map)
    if rate:
        spec["rate_hz"] = rate
    written = []
    for bag in bags:
        written += read_bag(bag, spec, out, progress=progress)
    return written


def load_recording(bag: str | Path, spec: dict, workdir: str | Path) -> Episode:
    """A bag as one Episode (imported, streamed, into workdir): what `vla bag-eval` reads."""
    (path,) = read_bag(bag, {**spec, "split": None}, workdir, name="recording", progress=False)
    return Episode(path)
