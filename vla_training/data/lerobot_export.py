"""Our episodes (any source: sim, research folders, bags) -> a LeRobotDataset v3 folder (`vla data export-lerobot`).

OUT/meta/info.json                  codebase_version v3.0, fps, features (dtype, shape, names)
OUT/meta/stats.json                 min/max/mean/std/count per feature (+ quantiles for state and action)
OUT/meta/tasks.parquet              one row per instruction (pandas index = task, column task_index)
OUT/meta/episodes/chunk-000/file-000.parquet   episode rows: length, data/video file, frame range, time range
OUT/data/chunk-000/file-000.parquet            frame rows of several episodes (rolls over at 100 MB)
OUT/videos/<key>/chunk-000/file-000.mp4        the view's frames of several episodes (rolls over at 200 MB)

One LeRobot frame per control step (or per 1/fps with --fps): `timestamp = frame_index / fps`; the
state and each view's frame are the latest at or before the step's stamp. The high-rate sensor
(e.g. 650 Hz x 1026) becomes a per-frame window `observation.sensor` (W, C), W = ceil(rate / fps)
samples ending at the step, with `observation.sensor_offset_s` (W,) = each sample's stamp minus
the step's (NaN where the window is padded before the recording's first sample); the importer
joins the windows back into the stream. Everything is written into a hidden folder beside OUT and
renamed at the end, so a failed export leaves nothing that loads.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .episodes import DatasetError, Episode, list_episodes

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE, DATA_FILE_MB, VIDEO_FILE_MB = 1000, 100, 200  # LeRobot 0.4.4's defaults (datasets/utils.py)
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
STATE, ACTION, SENSOR, SENSOR_OFFSET = "observation.state", "action", "observation.sensor", "observation.sensor_offset_s"
IMAGE_PREFIX = "observation.images."
ROWS_PER_GROUP, GROUP_BYTES = 256, 16 << 20  # frames per parquet row group, at most ~16 MB of sensor windows
INDEX_FEATURES = {name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in
                  (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                   ("index", "int64"), ("task_index", "int64"))}


def need_libraries():
    """pyarrow, pandas and PyAV (requirements/lerobot.txt, installed by `make setup`)."""
    try:
        import av
        import pandas
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise DatasetError(f"LeRobot datasets need pyarrow, pandas and av ({exc}); install them with "
                           "`pip install --no-deps -r requirements/lerobot.txt` (make setup does)") from None
    return av, pandas, pyarrow


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class _Stats:
    """Running min/max/sum/sum of squares over the first axis (NaN ignored); keeps rows for quantiles if asked."""

    def __init__(self, keep: bool = False) -> None:
        self.n = self.sum = self.sq = self.min = self.max = None
        self.rows = [] if keep else None

    def add(self, x: np.ndarray) -> None:  # (n, ...)
        x = np.asarray(x, np.float64)
        n, s, q = np.sum(np.isfinite(x), 0), np.nansum(x, 0), np.nansum(x * x, 0)
        lo, hi = np.nanmin(np.where(np.isfinite(x), x, np.inf), 0), np.nanmax(np.where(np.isfinite(x), x, -np.inf), 0)
        if self.n is None:
            self.n, self.sum, self.sq, self.min, self.max = n, s, q, lo, hi
        else:
            self.n, self.sum, self.sq = self.n + n, self.sum + s, self.sq + q
            self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)
        if self.rows is not None:
            self.rows.append(x)

    def result(self) -> dict:
        n = np.maximum(self.n, 1)
        mean = self.sum / n
        out = {"min": self.min, "max": self.max, "mean": mean, "std": np.sqrt(np.maximum(self.sq / n - mean ** 2, 0)),
               "count": np.array([int(np.max(self.n))])}
        if self.rows is not None:
            rows = np.concatenate(self.rows)
            out.update({f"q{q:02d}": np.quantile(rows, q / 100, axis=0) for q in (1, 10, 50, 90, 99)})
        return {k: np.where(np.isfinite(v), v, 0.0).tolist() for k, v in out.items()}


class _VideoFiles:
    """One view's mp4 files: frames of consecutive episodes appended, a new file past the size cap."""

    def __init__(self, av, root: Path, key: str, fps: int, shape: tuple, vcodec: str, video_mb: float) -> None:
        self.av, self.root, self.key, self.fps, self.shape, self.vcodec = av, root, key, fps, shape, vcodec
        self.limit, self.chunk, self.file, self.container, self.frames, self.bytes = video_mb * 2 ** 20, 0, 0, None, 0, 0

    def _open(self) -> None:
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = self.av.open(str(path), "w")
        options = {"g": "2", "crf": "30"} if self.vcodec in ("libsvtav1", "h264", "libx264", "hevc") else {}
        self.stream = self.container.add_stream(self.vcodec, rate=self.fps, options=options)
        self.stream.height, self.stream.width = self.shape[:2]
        self.stream.pix_fmt = "yuv420p"
        self.frames = self.bytes = 0

    def start_episode(self) -> tuple[int, int, float]:
        if self.container is not None and self.bytes >= self.limit:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self._open()
        return self.chunk, self.file, self.frames / self.fps

    def add(self, rgb: np.ndarray) -> None:
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        self._mux(self.stream.encode(frame))
        self.frames += 1

    def _mux(self, packets) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            self._mux(self.stream.encode())
            self.container.close()
            self.container = self.stream = None  # the encoder's memory goes with its stream


def _check_alike(episodes: list[Episode]) -> dict:
    """The layout every episode must share (a LeRobot dataset has one feature set)."""
    first = episodes[0]
    layout = {"action": first.array("actions").shape[1], "state": first.array("state").shape[1] if first.has("state") else 0,
              "sensor": first.array("sensor").shape[1] if first.has("sensor") else 0, "views": list(first.views),
              "shapes": {v: first.frame_shape(v) for v in first.views}}
    for ep in episodes[1:]:
        got = {"action": ep.array("actions").shape[1], "state": ep.array("state").shape[1] if ep.has("state") else 0,
               "sensor": ep.array("sensor").shape[1] if ep.has("sensor") else 0, "views": list(ep.views),
               "shapes": {v: ep.frame_shape(v) for v in ep.views}}
        for key, want in layout.items():
            if got[key] != want:
                raise DatasetError(f"{ep.path}: field '{key}': {got[key]}, but {first.name} has {want}; a LeRobot "
                                   "dataset has one feature set: export episodes with the same streams")
    return layout


def _latest(stamps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the latest stamp at or before each t (the first one before the stream starts)."""
    return np.clip(np.searchsorted(stamps, t + 1e-9, side="right") - 1, 0, len(stamps) - 1)


def _features(layout: dict, episodes: list[Episode], fps: int, window: int, vcodec: str) -> dict:
    meta = episodes[0].meta
    features = {}
    for view in layout["views"]:
        h, w, c = layout["shapes"][view]
        features[IMAGE_PREFIX + view] = {
            "dtype": "video", "shape": [h, w, c], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": {"libsvtav1": "av1", "libx264": "h264"}.get(
                vcodec, vcodec), "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                "video.channels": c, "has_audio": False}}
    if layout["state"]:
        features[STATE] = {"dtype": "float32", "shape": [layout["state"]],
                           "names": meta.get("state_names") or [f"s{i}" for i in range(layout["state"])]}
    features[ACTION] = {"dtype": "float32", "shape": [layout["action"]],
                        "names": meta.get("action_names") or [f"a{i}" for i in range(layout["action"])]}
    if layout["sensor"]:
        names = meta.get("sensor_names") or [f"c{i}" for i in range(layout["sensor"])]
        features[SENSOR] = {"dtype": "float32", "shape": [window, layout["sensor"]], "names": ["window", "channels"],
                            "info": {"rate_hz": meta.get("rates_hz", {}).get("sensor"), "channel_names": names}}
        features[SENSOR_OFFSET] = {"dtype": "float64", "shape": [window], "names": None}
    return {**features, **INDEX_FEATURES}


def export_lerobot(dataset: str | Path, out: str | Path, repo_id: str, fps: float | None = None,
                   vcodec: str = "libsvtav1", data_mb: float = DATA_FILE_MB, video_mb: float = VIDEO_FILE_MB,
                   progress: bool = False) -> Path:
    """Write DATASET's episodes as a LeRobotDataset v3 at OUT (must not exist); returns OUT."""
    av, pd, pa = need_libraries()
    import pyarrow.parquet as pq

    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out}: already exists; choose a new output folder (the export never overwrites)")
    episodes = list_episodes(dataset)
    layout = _check_alike(episodes)
    rate = float(np.median([_rate(np.asarray(ep.array("actions_t"))) for ep in episodes]))
    fps = fps or (round(rate) if rate > 0 else None)
    if not fps or fps <= 0 or abs(fps - round(fps)) > 1e-6:
        raise DatasetError(f"{dataset}: control rate {rate:.3f} Hz; LeRobot needs a whole number of frames per "
                           "second: pass --fps")
    fps = int(round(fps))
    sensor_rate = episodes[0].meta.get("rates_hz", {}).get("sensor") or 0
    window = int(math.ceil(sensor_rate / fps - 1e-6)) if layout["sensor"] else 0
    features = _features(layout, episodes, fps, window, vcodec)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _write(tmp, episodes, features, layout, fps, window, vcodec, data_mb, video_mb, repo_id, av, pd, pa, pq, progress)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(root, episodes, features, layout, fps, window, vcodec, data_mb, video_mb, repo_id, av, pd, pa, pq, progress):
    tasks: dict[str, int] = {}
    videos = {v: _VideoFiles(av, root, IMAGE_PREFIX + v, fps, layout["shapes"][v], vcodec, video_mb)
              for v in layout["views"]}
    numeric = [k for k, f in features.items() if f["dtype"] not in ("video", "image")]
    stats = {k: _Stats(keep=k in (STATE, ACTION)) for k in numeric}
    image_stats = {v: _Stats() for v in layout["views"]}
    schema = pa.schema([(k, _arrow_type(pa, features[k])) for k in numeric])
    data_chunk, data_file, data_bytes, writer, index = 0, 0, 0, None, 0
    rows, steps_of = [], {}
    for e, ep in enumerate(_progress(episodes, progress)):
        actions_t = np.asarray(ep.array("actions_t"), np.float64)
        grid = actions_t[0] + np.arange(int(round((actions_t[-1] - actions_t[0]) * fps)) + 1) / fps
        steps = np.arange(len(actions_t)) if abs(_rate(actions_t) - fps) < 1e-3 * fps else _latest(actions_t, grid)
        t, n = actions_t[steps], len(steps)
        task = tasks.setdefault(ep.instruction, len(tasks))
        if writer is not None and data_bytes >= data_mb * 2 ** 20:
            writer.close()
            writer, (data_chunk, data_file), data_bytes = None, _next_file(data_chunk, data_file), 0
        if writer is None:
            path = root / DATA_PATH.format(chunk_index=data_chunk, file_index=data_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(str(path), schema)
        group = max(1, min(ROWS_PER_GROUP, GROUP_BYTES // max(1, 4 * window * layout["sensor"])))
        for begin in range(0, n, group):  # row groups of a bounded size (a sensor window row is large)
            part = slice(begin, min(n, begin + group))
            m, tp = part.stop - begin, t[part]
            cols = {ACTION: np.asarray(ep.array("actions")[steps[part]], np.float32),
                    "timestamp": (np.arange(begin, part.stop) / fps).astype(np.float32),
                    "frame_index": np.arange(begin, part.stop), "episode_index": np.full(m, e),
                    "index": index + np.arange(begin, part.stop), "task_index": np.full(m, task)}
            if layout["state"]:
                cols[STATE] = np.asarray(ep.array("state")[_latest(np.asarray(ep.array("state_t")), tp)], np.float32)
            if layout["sensor"]:
                cols[SENSOR], cols[SENSOR_OFFSET] = _sensor_windows(ep, tp, window)
            table = pa.table({k: _arrow_column(pa, cols[k], features[k]) for k in numeric}, schema=schema)
            writer.write_table(table)
            data_bytes += table.nbytes
            for k in numeric:
                stats[k].add(cols[k].reshape(-1, layout["sensor"]) if k == SENSOR else cols[k])
            del table, cols
        row = {"episode_index": e, "tasks": [ep.instruction], "length": n, "data/chunk_index": data_chunk,
               "data/file_index": data_file, "dataset_from_index": index, "dataset_to_index": index + n}
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                    "vla/meta": json.dumps({k: v for k, v in ep.meta.items() if k not in ("views", "image_storage")})})
        if layout["sensor"]:  # samples after the last step ride on no frame: a side array, so the stream comes back whole
            stamps = np.asarray(ep.array("sensor_t"), np.float64)
            lo = int(np.searchsorted(stamps, t[-1] + 1e-9, side="right"))
            row.update({"vla/sensor_tail": _read_rows(ep.array("sensor"), lo, len(stamps)).ravel().tolist(),
                        "vla/sensor_tail_offset_s": (stamps[lo:] - t[-1]).tolist()})
        rows.append(row)
        steps_of[e] = t
        index += n
    if writer is not None:
        writer.close()
    for view, files in videos.items():  # one view at a time: one encoder in memory (an AV1 encoder holds ~100 MB)
        for e, ep in enumerate(episodes):
            t, ep = steps_of[e], Episode(ep.path)  # a fresh mapping of the frames, released after this view
            chunk, file, start = files.start_episode()
            for j, k in enumerate(_latest(np.asarray(ep.array(f"images/{view}_t")), t)):
                frame = ep.frame(view, int(k))
                files.add(frame)
                if j % max(1, len(t) // 10) == 0:  # a sample of frames for the per-channel statistics
                    image_stats[view].add(frame.reshape(-1, 3) / 255.0)
            key = f"videos/{IMAGE_PREFIX}{view}"
            rows[e].update({f"{key}/chunk_index": chunk, f"{key}/file_index": file, f"{key}/from_timestamp": start,
                            f"{key}/to_timestamp": start + len(t) / fps})
        files.close()
    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name=None)).to_parquet(
        root / "meta" / "tasks.parquet")
    all_stats = {k: s.result() for k, s in stats.items()}
    for view, s in image_stats.items():
        all_stats[IMAGE_PREFIX + view] = {k: [[[x]] for x in v] if k != "count" else v for k, v in s.result().items()}
    (root / "meta" / "stats.json").write_text(json.dumps(all_stats, indent=4))
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": None, "total_episodes": len(episodes),
            "total_frames": index, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": data_mb, "video_files_size_in_mb": video_mb, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if videos else None, "features": features, "vla": {"repo_id": repo_id}}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))


def _rate(t: np.ndarray) -> float:
    return (len(t) - 1) / max(float(t[-1] - t[0]), 1e-9) if len(t) > 1 else 0.0


def _sensor_windows(ep: Episode, t: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, W, C) the last W sensor rows stamped <= each t, (n, W) their stamps minus t (NaN = padding)."""
    sensor, stamps = ep.array("sensor"), np.asarray(ep.array("sensor_t"), np.float64)
    end = np.searchsorted(stamps, t + 1e-9, side="right")  # (n,)
    idx = end[:, None] - window + np.arange(window)[None]  # (n, W)
    valid = idx >= 0
    lo, hi = int(np.clip(idx, 0, None).min()), int(end.max())
    rows = _read_rows(sensor, lo, max(hi, lo + 1))  # (hi - lo, C)
    values = np.asarray(rows[np.clip(idx, 0, None).ravel() - lo], np.float32).reshape(len(t), window, -1)
    values[~valid] = 0.0
    offsets = np.where(valid, stamps[np.clip(idx, 0, None)] - t[:, None], np.nan)
    return values, offsets


def _read_rows(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi of a memory-mapped .npy with a plain read (reading through the mapping would keep the
    whole file resident: a 60 s, 650 Hz x 1026 sensor is 160 MB)."""
    if hi <= lo:
        return np.zeros((0, *array.shape[1:]), array.dtype)
    if not (isinstance(array, np.memmap) and array.filename):
        return np.asarray(array[lo:hi])
    row = int(np.prod(array.shape[1:])) * array.dtype.itemsize
    with open(array.filename, "rb") as fh:
        fh.seek(array.offset + lo * row)
        data = fh.read((min(hi, len(array)) - lo) * row)
    return np.frombuffer(data, array.dtype).reshape(-1, *array.shape[1:])


def _arrow_type(pa, feature: dict):
    base = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = feature["shape"]
    if shape == [1]:
        return base
    for size in reversed(shape):
        base = pa.list_(base, size)
    return base


def _arrow_column(pa, values: np.ndarray, feature: dict):
    values = np.ascontiguousarray(values, dtype=feature["dtype"])
    if feature["shape"] == [1]:
        return pa.array(values.reshape(-1))
    arr = pa.array(values.reshape(-1))
    for size in reversed(feature["shape"]):
        arr = pa.FixedSizeListArray.from_arrays(arr, size)
    return arr


def _progress(items, progress: bool):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="export-lerobot", unit="episode")
