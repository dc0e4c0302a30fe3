"""A local LeRobotDataset (v3.0, or v2.1 as many hub datasets still are) -> our episodes (`vla data import-lerobot`).

Features are mapped by name: views = `observation.images.<view>` (video or image features; `--views`
picks some), state = `observation.state` (`--state KEY`), action = `action` (`--action KEY`), the
sensor = `observation.sensor` with `observation.sensor_offset_s` (our export's window feature; its
windows are joined back into one stream). A key that is missing is a `DatasetError` that lists
the dataset's features. Videos are decoded with PyAV one frame at a time into the episode writer,
so memory stays bounded whatever the dataset's length. Stamps: `actions_t = frame_index / fps`.

Action meaning (`--action-meaning`): `delta` (our experts' convention: per-step displacements),
`absolute` (positions, as LeRobot's arms record them), or `auto` (names such as `dx`, `delta_*`
mean delta; `*.pos`, joint names mean absolute). `--to-deltas` turns absolute actions into
per-step differences (a[t+1] - a[t], the last step repeats the one before) for configs trained on deltas.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .episodes import DatasetError, EpisodeWriter, safe_name, stream_rate
from .lerobot_export import IMAGE_PREFIX, SENSOR, SENSOR_OFFSET, need_libraries

VERSIONS = ("v3.0", "v2.1")
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_DELTA_NAME = re.compile(r"(^d[a-z]|delta|_vel|velocity)", re.IGNORECASE)


def load_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{root}: missing meta/info.json; not a LeRobot dataset folder") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if info.get("codebase_version") not in VERSIONS:
        raise DatasetError(f"{path}: field 'codebase_version': {info.get('codebase_version')!r}; expected one of "
                           f"{list(VERSIONS)} (convert older datasets with LeRobot's own converters first)")
    if not isinstance(info.get("fps"), (int, float)) or info["fps"] <= 0:
        raise DatasetError(f"{path}: field 'fps': expected a positive number, got {info.get('fps')!r}")
    return info


def _need(features: dict, key: str, what: str, path: Path) -> dict:
    if key not in features:
        raise DatasetError(f"{path}: the {what} feature {key!r} is not in this dataset; its features are "
                           f"{sorted(features)} (choose with --{what} KEY)")
    return features[key]


def action_meaning(names, declared: str = "auto") -> str:
    """'delta' or 'absolute' from the user's word, or from the action's names."""
    if declared in ("delta", "absolute"):
        return declared
    if declared != "auto":
        raise DatasetError(f"--action-meaning: expected auto, delta or absolute, got {declared!r}")
    names = names or []
    return "delta" if any(_DELTA_NAME.search(str(n)) for n in names) else "absolute"


def _episodes_table(root: Path, info: dict, pq) -> list[dict]:
    if info["codebase_version"] == "v3.0":
        files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DatasetError(f"{root}: no meta/episodes/chunk-*/file-*.parquet (a v3.0 dataset lists its episodes there)")
        rows = [r for f in files for r in pq.read_table(str(f)).to_pylist()]
    else:
        path = root / "meta" / "episodes.jsonl"
        if not path.exists():
            raise DatasetError(f"{root}: missing meta/episodes.jsonl (a v2.1 dataset lists its episodes there)")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["episode_index"])


class _Frames:
    """Frames of one video file decoded in order, one at a time (PyAV), with their pts in seconds."""

    def __init__(self, av, path: Path) -> None:
        if not path.exists():
            raise DatasetError(f"{path}: missing video file")
        self.path, self.container = path, av.open(str(path))
        self.stream = self.container.streams.video[0]
        self._iter = self.container.decode(self.stream)

    def seek(self, seconds: float) -> None:
        self.container.seek(int(seconds / self.stream.time_base), stream=self.stream, backward=True, any_frame=False)
        self._iter = self.container.decode(self.stream)

    def take(self, start: float, count: int, fps: float):
        """`count` frames whose pts lie in [start, start + count / fps) - half a frame of tolerance."""
        tol, got = 0.5 / fps, 0
        self.seek(start)
        for frame in self._iter:
            t = float(frame.pts * self.stream.time_base)
            if t < start - tol:
                continue
            if got == count:
                break
            yield frame.to_ndarray(format="rgb24")
            got += 1
        if got < count:
            raise DatasetError(f"{self.path}: the video has {got} frame(s) from {start:.3f} s, but its parquet has "
                               f"{count} rows for the episode: the video is shorter than its data")

    def close(self) -> None:
        self.container.close()


def import_lerobot(path: str | Path, out: str | Path, views: list[str] | None = None, state_key: str | None = None,
                   action_key: str = "action", meaning: str = "auto", to_deltas: bool = False,
                   progress: bool = False) -> list[Path]:
    """Episodes of the LeRobot dataset at PATH -> OUT (a new folder, written whole or not at all)."""
    av, _, _ = need_libraries()
    import pyarrow.parquet as pq

    root, out = Path(path), Path(out)
    info = load_info(root)
    if out.exists():
        raise DatasetError(f"{out}: already exists; choose a new output folder (the import never overwrites)")
    features, fps, info_path = info.get("features", {}), float(info["fps"]), root / "meta" / "info.json"
    action = _need(features, action_key, "action", info_path)
    state_key = state_key if state_key is not None else ("observation.state" if "observation.state" in features else "")
    if state_key:
        _need(features, state_key, "state", info_path)
    all_views = [k[len(IMAGE_PREFIX):] for k, f in features.items()
                 if k.startswith(IMAGE_PREFIX) and f.get("dtype") in ("video", "image")]
    views = all_views if views is None else views
    for view in views:
        _need(features, IMAGE_PREFIX + view, "views", info_path)
        safe_name(view, "view name")
    kind = action_meaning(action.get("names"), meaning)
    tasks = _tasks(root, info, pq)
    episodes = _episodes_table(root, info, pq)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    written = []
    try:
        for row in _progress(episodes, progress):
            data = _episode_rows(root, info, row, pq)
            written.append(_write_episode(tmp, root, info, row, data, features, views, state_key, action_key, kind,
                                          to_deltas, tasks, fps, av))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / p.name for p in written]


def _tasks(root: Path, info: dict, pq) -> dict[int, str]:
    if info["codebase_version"] == "v3.0":
        path = root / "meta" / "tasks.parquet"
        if not path.exists():
            raise DatasetError(f"{root}: missing meta/tasks.parquet")
        table = pq.read_table(str(path)).to_pydict()
        names = table.get("__index_level_0__") or table.get("task") or []
        return {int(i): str(t) for i, t in zip(table["task_index"], names)}
    path = root / "meta" / "tasks.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {int(r["task_index"]): str(r["task"]) for r in rows}


def _episode_rows(root: Path, info: dict, row: dict, pq) -> dict:
    """The episode's frame rows (columns as numpy), checked against the episode's length."""
    e = int(row["episode_index"])
    if info["codebase_version"] == "v3.0":
        file = root / info.get("data_path", "").format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
    else:
        chunk = e // int(info.get("chunks_size", 1000))
        file = root / info.get("data_path", V21_DATA).format(episode_chunk=chunk, episode_index=e)
    if not file.exists():
        raise DatasetError(f"{file}: missing data file of episode {e}")
    # only the row groups that hold this episode (parquet statistics), not the whole file
    table = pq.read_table(str(file), filters=[("episode_index", "=", e)])
    idx = np.flatnonzero(np.asarray(table.column("episode_index")) == e)
    length = int(row["length"])
    if len(idx) != length:
        raise DatasetError(f"{file}: episode {e} has {len(idx)} rows, but meta/episodes says its length is {length} "
                           "(unequal episode lengths: the dataset is inconsistent)")
    rows = table.slice(int(idx[0]), length) if length and idx[-1] - idx[0] == length - 1 else table.take(idx)
    frame_index = np.asarray(rows.column("frame_index"))
    if not np.array_equal(frame_index, np.arange(length)):
        raise DatasetError(f"{file}: episode {e}: frame_index is not 0..{length - 1} in order")
    return {name: rows.column(name) for name in rows.column_names}


def _column(data: dict, key: str, feature: dict) -> np.ndarray:
    col = data[key]
    shape = [int(s) for s in feature.get("shape", [1])]
    values = np.asarray(col.combine_chunks().flatten().flatten() if len(shape) == 2 else
                        (col.combine_chunks().flatten() if shape != [1] else col), feature.get("dtype", "float32"))
    return values.reshape(len(col), *shape) if shape != [1] else values.reshape(len(col), 1)


def _names(feature: dict, width: int, prefix: str) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # v2.1 style {"motors": [...]}
        names = next(iter(names.values()), None)
    return [str(n) for n in names] if isinstance(names, list) and len(names) == width else \
        [f"{prefix}{i}" for i in range(width)]


def _write_episode(tmp, root, info, row, data, features, views, state_key, action_key, kind, to_deltas, tasks, fps, av):
    e, n = int(row["episode_index"]), int(row["length"])
    t = np.arange(n) / fps
    meta = json.loads(row["vla/meta"]) if row.get("vla/meta") else {}
    writer = EpisodeWriter(tmp, f"episode_{e:06d}")
    try:
        actions = _column(data, action_key, features[action_key]).astype(np.float32)
        action_names = _names(features[action_key], actions.shape[1], "a")
        if kind == "absolute" and to_deltas:
            actions = np.diff(actions, axis=0, append=actions[-1:] + (actions[-1:] - actions[-2:-1] if n > 1 else 0))
            action_names = [f"d_{name}" for name in action_names]
        writer.array("actions", actions, np.float32)
        writer.array("actions_t", t, np.float64)
        state_names = sensor_names = []
        if state_key:
            state = _column(data, state_key, features[state_key]).reshape(n, -1)
            state_names = _names(features[state_key], state.shape[1], "s")
            writer.array("state", state, np.float32)
            writer.array("state_t", t, np.float64)
        if SENSOR in features and SENSOR_OFFSET in features:
            sensor_names = _join_sensor(writer, data, features, t, fps, row)
        for view in views:
            _write_view(writer, root, info, row, data, features, view, t, fps, av)
        task = tasks.get(int(np.asarray(data["task_index"])[0]), "") if "task_index" in data else ""
        meta.update({"instruction": meta.get("instruction", task) or task, "length": n,
                     "action_names": meta.get("action_names", action_names) if not to_deltas else action_names,
                     "state_names": meta.get("state_names", state_names), "sensor_names": meta.get("sensor_names", sensor_names),
                     "rates_hz": {"control": fps, "state": fps if state_key else None,
                                  "sensor": stream_rate(writer.stamps("sensor")) if writer.count("sensor") else None,
                                  **{f"image/{v}": fps for v in views}},
                     "source": meta.get("source", "lerobot"), "action_meaning": "delta" if to_deltas else kind,
                     "lerobot": {"path": str(root), "episode_index": e, "codebase_version": info["codebase_version"]}})
    except BaseException:
        writer.abort()
        raise
    return writer.close(meta)


def _join_sensor(writer: EpisodeWriter, data: dict, features: dict, t: np.ndarray, fps: float, row: dict) -> list[str]:
    """Per-frame windows (n, W, C) with their stamp offsets (n, W) -> one stream, each sample once; a block
    of frames at a time (a 60 s, 650 Hz x 1026 episode holds 160 MB of windows); then our export's side
    array of the samples after the last frame (`vla/sensor_tail`)."""
    (w, c), info = features[SENSOR]["shape"], features[SENSOR].get("info") or {}
    tol = 0.25 / (info.get("rate_hz") or fps * w)  # overlapping windows repeat samples
    last, block = -np.inf, max(1, (16 << 20) // (4 * w * c))
    for begin in range(0, len(t), block):
        m = min(block, len(t) - begin)
        windows = np.asarray(data[SENSOR].slice(begin, m).combine_chunks().flatten().flatten(), np.float32)
        offsets = np.asarray(data[SENSOR_OFFSET].slice(begin, m).combine_chunks().flatten(), np.float64)
        windows, stamps = windows.reshape(m, w, c), t[begin:begin + m, None] + offsets.reshape(m, w)  # NaN = padding
        for j in range(m):
            keep = np.isfinite(stamps[j]) & (stamps[j] > last + tol)
            if keep.any():
                writer.append_rows("sensor", stamps[j][keep], windows[j][keep])
                last = float(stamps[j][keep].max())
    tail_t = np.asarray(row.get("vla/sensor_tail_offset_s") or [], np.float64) + t[-1]
    if len(tail_t) and np.all(tail_t > last + tol):
        writer.append_rows("sensor", tail_t, np.asarray(row["vla/sensor_tail"], np.float32).reshape(len(tail_t), c))
    return list(info.get("channel_names") or [])


def _write_view(writer, root, info, row, data, features, view, t, fps, av) -> None:
    key = IMAGE_PREFIX + view
    if features[key]["dtype"] == "image":  # PNG/JPEG bytes in the parquet rows
        for stamp, cell in zip(t, data[key].to_pylist()):
            writer.append_encoded_frame(view, float(stamp), cell["bytes"])
        return
    e = int(row["episode_index"])
    if info["codebase_version"] == "v3.0":
        path = root / info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                file_index=row[f"videos/{key}/file_index"])
        start = float(row[f"videos/{key}/from_timestamp"])
    else:
        chunk = e // int(info.get("chunks_size", 1000))
        path = root / info.get("video_path", V21_VIDEO).format(episode_chunk=chunk, video_key=key, episode_index=e)
        start = 0.0
    frames = _Frames(av, path)
    try:
        for stamp, rgb in zip(t, frames.take(start, len(t), fps)):
            writer.append_frame(view, float(stamp), rgb)
    finally:
        frames.close()


def _progress(items, progress: bool):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="import-lerobot", unit="episode")
