"""The canonical on-disk episode format every source converts into (documented in docs/dataset.md).

DATASET/episode_000000/
    meta.json                   instruction, rates, views, names and units, lengths, source info
    actions.npy  actions_t.npy  (N, A) float32 at the control rate, (N,) float64 seconds
    state.npy    state_t.npy    (N_s, S) float32, (N_s,)          [optional]
    sensor.npy   sensor_t.npy   (M, C) float32 native rate, (M,)  [optional; windows cut at load]
    images/<view>_t.npy         (K,) float64 seconds, and per view either
    images/<view>.npy           (K, H, W, 3) uint8 decoded frames, or
    images/<view>.frames + images/<view>_index.npy   the frames as recorded (JPEG/PNG bytes, one after
                                the other) and (K, 2) int64 (offset, length): 10-20x smaller, decoded
                                one frame at a time by `Episode.frame` (meta `image_storage`)

Arrays are plain .npy (no pickle: loaded with allow_pickle=False) memory-mapped on read, so large
streams load lazily. An episode is written into a hidden temporary directory and renamed into
place with meta.json last: an interrupted conversion leaves no episode that later loads.
`EpisodeWriter` streams a large recording in (frames and sensor rows appended as they are read),
so an import holds one message at a time, not the session.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "vla_episode"
VERSION = 2  # 2: encoded frames (version 1 episodes, decoded frames only, still load)
VERSIONS = (1, 2)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class DatasetError(ValueError):
    """A dataset or episode is missing, malformed or inconsistent (names the episode and field)."""


def safe_name(name: str, what: str = "name") -> str:
    """Reject names that could escape a directory (slashes, '..', empty)."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise DatasetError(f"{what} {name!r}: expected letters, digits, '_', '-', '.' only (no path separators)")
    return name


@dataclass
class EpisodeData:
    """An episode in memory, ready to write. Timestamps in seconds (any common origin)."""

    instruction: str
    actions: np.ndarray  # (N, A)
    actions_t: np.ndarray  # (N,)
    action_names: list[str]
    state: np.ndarray | None = None  # (N_s, S)
    state_t: np.ndarray | None = None
    state_names: list[str] = field(default_factory=list)
    sensor: np.ndarray | None = None  # (M, C)
    sensor_t: np.ndarray | None = None
    sensor_names: list[str] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # view -> (K, H, W, 3) uint8
    images_t: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # rates, units, source, success, constant dims...


def stream_rate(t) -> float | None:
    """Messages per second of a stream's stamps (in any order), or None for fewer than two."""
    t = None if t is None else np.asarray(t)
    return None if t is None or len(t) < 2 else float((len(t) - 1) / max(t.max() - t.min(), 1e-9))


class EpisodeWriter:
    """Writes one episode into a hidden temporary directory; `close()` renames it into place.

    Small arrays are given whole (`array`); frames and sensor rows may be appended one message at a
    time (`append_frame`, `append_encoded_frame`, `append_rows`), so memory stays bounded whatever
    the recording's length. Rows that arrive out of stamp order are put in order at `close()`.
    """

    def __init__(self, dataset_dir: str | Path, name: str) -> None:
        self.dataset_dir = Path(dataset_dir)
        self.dataset_dir.mkdir(parents=True, exist_ok=True)
        self.final = self.dataset_dir / safe_name(name, "episode name")
        if self.final.exists():
            raise DatasetError(f"{self.final}: episode already exists; choose another output directory or remove it")
        self.tmp = Path(tempfile.mkdtemp(dir=self.dataset_dir, prefix=f".tmp-{name}-"))
        (self.tmp / "images").mkdir()
        self._streams: dict[str, dict] = {}  # key -> {file, stamps, shape, dtype, kind}

    # -- whole arrays ---------------------------------------------------------------------------
    def array(self, key: str, value, dtype) -> None:
        _save(self.tmp / f"{key}.npy", np.ascontiguousarray(value, dtype=dtype))

    # -- streams ----------------------------------------------------------------------------------
    def _stream(self, key: str, kind: str, shape: tuple, dtype) -> dict:
        stream = self._streams.get(key)
        if stream is None:
            stream = {"file": open(self.tmp / f"{key}.part", "wb"), "stamps": [], "shape": shape, "dtype": dtype,
                      "kind": kind, "index": []}
            self._streams[key] = stream
        elif stream["shape"] != shape:
            raise DatasetError(f"{self.final}: field '{key}': a row of shape {shape} after rows of {stream['shape']}")
        return stream

    def append_rows(self, key: str, stamps: np.ndarray, rows: np.ndarray, dtype=np.float32) -> None:
        """Rows (n, C) stamped (n,) of a stream such as the sensor."""
        rows = np.ascontiguousarray(rows, dtype=dtype)
        stream = self._stream(key, "rows", rows.shape[1:], dtype)
        stream["file"].write(rows.tobytes())
        stream["stamps"].extend(np.asarray(stamps, np.float64).tolist())

    def append_frame(self, view: str, stamp: float, rgb: np.ndarray) -> None:
        """A decoded (H, W, 3) uint8 frame (raw camera images: kept lossless)."""
        safe_name(view, "view name")
        self.append_rows(f"images/{view}", [stamp], np.asarray(rgb)[None], np.uint8)

    def append_encoded_frame(self, view: str, stamp: float, data: bytes) -> None:
        """A JPEG/PNG frame as recorded (decoded when a sample needs it)."""
        safe_name(view, "view name")
        stream = self._stream(f"images/{view}", "encoded", (), np.uint8)
        offset = stream["file"].tell()
        stream["file"].write(bytes(data))
        stream["index"].append((offset, len(data)))
        stream["stamps"].append(float(stamp))

    def count(self, key: str) -> int:
        return len(self._streams[key]["stamps"]) if key in self._streams else 0

    def stamps(self, key: str) -> list[float]:
        """The stamps appended so far to a stream (in arrival order)."""
        return list(self._streams[key]["stamps"]) if key in self._streams else []

    def _finish_stream(self, key: str, stream: dict) -> str:
        stream["file"].close()
        part = self.tmp / f"{key}.part"
        stamps = np.asarray(stream["stamps"], np.float64)
        order = np.argsort(stamps, kind="stable")
        in_order = bool(np.all(order == np.arange(len(order))))
        _save(self.tmp / f"{key}_t.npy", stamps[order])
        if stream["kind"] == "encoded":
            _save(self.tmp / f"{key}_index.npy", np.asarray(stream["index"], np.int64).reshape(-1, 2)[order])
            os.replace(part, self.tmp / f"{key}.frames")
            return "encoded"
        dtype, row_bytes = np.dtype(stream["dtype"]), int(np.prod(stream["shape"])) * np.dtype(stream["dtype"]).itemsize
        step = max(1, (16 << 20) // max(1, row_bytes))  # 16 MB at a time: plain reads, no mapping (bounded RSS)
        with open(part, "rb") as src, open(self.tmp / f"{key}.npy", "wb") as dst:
            np.lib.format.write_array_header_2_0(dst, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                       "fortran_order": False, "shape": (len(stamps), *stream["shape"])})
            if in_order:
                shutil.copyfileobj(src, dst, 16 << 20)
            else:  # rows that arrived out of stamp order, gathered in order
                for begin in range(0, len(order), step):
                    dst.write(b"".join(os.pread(src.fileno(), row_bytes, int(i) * row_bytes)
                                       for i in order[begin:begin + step]))
            dst.flush()
            os.fsync(dst.fileno())
        part.unlink()
        return "decoded"

    def close(self, meta: dict) -> Path:
        """Finish every stream, validate, write meta.json last and rename into place."""
        try:
            storage = {key[len("images/"):]: self._finish_stream(key, stream)
                       for key, stream in self._streams.items() if key.startswith("images/")}
            for key, stream in self._streams.items():
                if not key.startswith("images/"):
                    self._finish_stream(key, stream)
            meta = {"format": FORMAT, "version": VERSION, **meta, "views": sorted(storage),
                    "image_storage": storage}
            episode = Episode(self.tmp, meta=meta)
            episode.validate(decode_frames=False)
            for view in episode.views:  # the first frame of each view decodes (all of them: `vla data info --check`)
                if episode.frame_count(view):
                    episode.frame(view, 0)
            (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            os.replace(self.tmp, self.final)
        except BaseException:
            self.abort()
            raise
        return self.final

    def abort(self) -> None:
        for stream in self._streams.values():
            stream["file"].close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _save(path: Path, value: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, value, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def episode_meta(episode: "EpisodeData", rates: dict) -> dict:
    return {"instruction": episode.instruction, "length": len(episode.actions),
            "action_names": list(episode.action_names), "state_names": list(episode.state_names),
            "sensor_names": list(episode.sensor_names), "rates_hz": rates, **episode.meta}


def write_episode(dataset_dir: str | Path, name: str, episode: EpisodeData) -> Path:
    """Write one in-memory episode atomically; returns its directory. Refuses to overwrite an existing one."""
    writer = EpisodeWriter(dataset_dir, name)
    try:
        arrays = {"actions": (episode.actions, np.float32), "actions_t": (episode.actions_t, np.float64)}
        for key in ("state", "sensor"):
            value = getattr(episode, key)
            if value is not None:
                arrays[key] = (value, np.float32)
                arrays[f"{key}_t"] = (getattr(episode, f"{key}_t"), np.float64)
        validate_arrays({k: np.asarray(v) for k, (v, _) in arrays.items()}, where=str(writer.final))
        for key, (value, dtype) in arrays.items():
            writer.array(key, value, dtype)
        for view, frames in episode.images.items():
            stamps = episode.images_t[view]
            if len(stamps) != len(frames):
                raise DatasetError(f"{writer.final}: field 'images/{view}_t': {len(stamps)} stamps for {len(frames)} "
                                   "frames")
            for stamp, frame in zip(stamps, frames):
                writer.append_frame(view, stamp, frame)
        rates = {"control": stream_rate(episode.actions_t), "state": stream_rate(episode.state_t),
                 "sensor": stream_rate(episode.sensor_t),
                 **{f"image/{v}": stream_rate(t) for v, t in episode.images_t.items()}}
    except BaseException:
        writer.abort()
        raise
    return writer.close(episode_meta(episode, rates))


def validate_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Shapes, timestamps and finiteness of an episode's arrays; errors name the episode and field."""
    actions = arrays["actions"]
    if actions.ndim != 2 or len(actions) == 0:
        raise DatasetError(f"{where}: field 'actions': expected shape (N>0, A), got {actions.shape}")
    for key, value in arrays.items():
        if key.endswith("_t"):
            base = arrays.get(key[:-2], arrays.get(key[:-2] + "_index"))
            if value.shape != (len(base),):
                raise DatasetError(f"{where}: field '{key}': expected {len(base)} timestamps, got shape {value.shape}")
            if len(value) > 1 and np.any(np.diff(value) < 0):
                raise DatasetError(f"{where}: field '{key}': timestamps go backwards")
        elif key.startswith("images/") and key.endswith("_index"):
            if value.ndim != 2 or value.shape[1] != 2:
                raise DatasetError(f"{where}: field '{key}': expected (K, 2) offsets and lengths, got {value.shape}")
        elif key.startswith("images/"):
            if value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8:
                raise DatasetError(f"{where}: field '{key}': expected (K, H, W, 3) uint8, got {value.shape} {value.dtype}")
        elif value.ndim != 2:
            raise DatasetError(f"{where}: field '{key}': expected a 2-D array (time, dim), got shape {value.shape}")
        if not key.startswith("images/") and value.size and not _all_finite(value):
            raise DatasetError(f"{where}: field '{key}': contains NaN or inf")


def _all_finite(value: np.ndarray, block_bytes: int = 16 << 20) -> bool:
    """np.isfinite over an array a block at a time; a memory-mapped one is read from its file with plain
    reads (touching it through the mapping would keep the whole file resident)."""
    if isinstance(value, np.memmap) and value.filename and value.dtype.kind == "f":
        count, itemsize = value.size, value.dtype.itemsize
        with open(value.filename, "rb") as fh:
            fh.seek(value.offset)
            for begin in range(0, count, block_bytes // itemsize):
                block = np.frombuffer(fh.read(min(block_bytes // itemsize, count - begin) * itemsize), value.dtype)
                if not np.isfinite(block).all():
                    return False
        return True
    step = max(1, block_bytes // max(1, value[0].nbytes if value.ndim > 1 else value.itemsize))
    return all(np.isfinite(value[i:i + step]).all() for i in range(0, len(value), step))


class Episode:
    """A lazily loaded episode (arrays are memory-mapped on first use)."""

    def __init__(self, path: str | Path, meta: dict | None = None) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        try:
            self.meta = meta if meta is not None else json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{self.path}: missing meta.json; not a complete episode") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_file}: not valid JSON ({exc})") from exc
        if self.meta.get("format") != FORMAT or self.meta.get("version") not in VERSIONS:
            raise DatasetError(f"{meta_file}: field 'format'/'version': expected {FORMAT!r} v{VERSION}, got "
                               f"{self.meta.get('format')!r} v{self.meta.get('version')!r}")
        self._cache: dict[str, np.ndarray] = {}
        self.views: list[str] = [safe_name(v, "view name") for v in self.meta.get("views", [])]
        self.image_storage: dict[str, str] = {v: self.meta.get("image_storage", {}).get(v, "decoded") for v in self.views}
        self.length = len(self.array("actions"))
        if self.length != self.meta.get("length"):
            raise DatasetError(f"{self.path}: field 'actions': meta.json says {self.meta.get('length')} steps, "
                               f"actions.npy has {self.length}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def instruction(self) -> str:
        return self.meta.get("instruction", "")

    def has(self, key: str) -> bool:
        return (self.path / f"{key}.npy").exists()

    def array(self, key: str) -> np.ndarray:
        if key not in self._cache:
            path = self.path / f"{key}.npy"
            try:
                self._cache[key] = np.load(path, mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise DatasetError(f"{self.path}: field '{key}': missing file {path.name}") from None
            except ValueError as exc:
                raise DatasetError(f"{path}: field '{key}': unreadable .npy ({exc})") from exc
        return self._cache[key]

    def frame_count(self, view: str) -> int:
        return len(self.array(f"images/{view}_t"))

    def frame(self, view: str, k: int) -> np.ndarray:
        """Frame k of a view as (H, W, 3) uint8 RGB (encoded frames are decoded here, one at a time)."""
        if self.image_storage[view] == "decoded":
            return np.array(self.array(f"images/{view}")[k])
        offset, length = (int(v) for v in self.array(f"images/{view}_index")[k])
        frames = self._frames(view)
        from .messages import ImageConversionError, decode_image_bytes

        try:
            return decode_image_bytes(frames[offset:offset + length])
        except ImageConversionError as exc:
            raise DatasetError(f"{self.path}: field 'images/{view}': frame {k} ({exc})") from None

    def frame_bytes(self, view: str, k: int) -> bytes:
        """Frame k of a view as stored (the encoded bytes, or the decoded array's), without decoding it."""
        if self.image_storage[view] == "decoded":
            return np.ascontiguousarray(self.array(f"images/{view}")[k]).tobytes()
        offset, length = (int(v) for v in self.array(f"images/{view}_index")[k])
        return self._frames(view)[offset:offset + length].tobytes()

    def _frames(self, view: str) -> np.ndarray:
        key = f"images/{view}.frames"
        if key not in self._cache:
            path = self.path / "images" / f"{view}.frames"
            if not path.exists():
                raise DatasetError(f"{self.path}: field 'images/{view}': missing file {path.name}")
            self._cache[key] = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        return self._cache[key]

    def frame_shape(self, view: str) -> tuple[int, ...]:
        return tuple(self.frame(view, 0).shape) if self.frame_count(view) else ()

    def validate(self, decode_frames: bool = True) -> None:
        """Full check of every array (reads all data: used by `vla data info --check` and the importers)."""
        keys = ["actions", "actions_t"] + [k for k in ("state", "state_t", "sensor", "sensor_t") if self.has(k)]
        for v in self.views:
            keys += [f"images/{v}_t", f"images/{v}" + ("_index" if self.image_storage[v] == "encoded" else "")]
        validate_arrays({k: self.array(k) for k in keys}, where=str(self.path))
        for v in self.views:
            if self.image_storage[v] != "encoded":
                continue
            index, size = np.asarray(self.array(f"images/{v}_index")), len(self._frames(v))
            if len(index) and (index.min() < 0 or (index[:, 0] + index[:, 1]).max() > size):
                raise DatasetError(f"{self.path}: field 'images/{v}_index': offsets beyond the {size}-byte frames file")
            if decode_frames:
                shapes = {self.frame(v, k).shape for k in range(len(index))}
                if len(shapes) > 1:
                    raise DatasetError(f"{self.path}: field 'images/{v}': frames differ in size {sorted(shapes)}")


def list_episodes(dataset_dir: str | Path) -> list[Episode]:
    """All episodes of a dataset in name order. Hidden directories (unfinished writes) are ignored."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: not a dataset directory (expected episode_* folders from `vla data ...`)")
    paths = sorted(p for p in dataset_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not paths:
        raise DatasetError(f"{dataset_dir}: contains no episodes")
    return [Episode(p) for p in paths]


def next_episode_name(dataset_dir: str | Path) -> str:
    dataset_dir = Path(dataset_dir)
    taken = {p.name for p in dataset_dir.iterdir()} if dataset_dir.is_dir() else set()
    i = 0
    while f"episode_{i:06d}" in taken:
        i += 1
    return f"episode_{i:06d}"
