"""The canonical on-disk episode format every source converts into (documented in docs/dataset.md).

DATASET/episode_000000/
    meta.json                   instruction, rates, views, names and units, lengths, source info
    actions.npy  actions_t.npy  (N, A) float32 at the control rate, (N,) float64 seconds
    state.npy    state_t.npy    (N_s, S) float32, (N_s,)          [optional]
    sensor.npy   sensor_t.npy   (M, C) float32 native rate, (M,)  [optional; windows cut at load]
    images/<view>.npy, images/<view>_t.npy   (K, H, W, 3) uint8, (K,)

Arrays are plain .npy (no pickle: loaded with allow_pickle=False) memory-mapped on read, so large
streams load lazily. An episode is written into a hidden temporary directory and renamed into
place with meta.json last: an interrupted conversion leaves no episode that later loads.
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
VERSION = 1
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


def _rate(t: np.ndarray | None) -> float | None:
    if t is None or len(t) < 2:
        return None
    return float((len(t) - 1) / max(t[-1] - t[0], 1e-9))


def write_episode(dataset_dir: str | Path, name: str, episode: EpisodeData) -> Path:
    """Write one episode atomically; returns its directory. Refuses to overwrite an existing one."""
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    final = dataset_dir / safe_name(name, "episode name")
    if final.exists():
        raise DatasetError(f"{final}: episode already exists; choose another output directory or remove it")
    arrays = {"actions": (episode.actions, np.float32), "actions_t": (episode.actions_t, np.float64)}
    for key in ("state", "sensor"):
        value = getattr(episode, key)
        if value is not None:
            arrays[key] = (value, np.float32)
            arrays[f"{key}_t"] = (getattr(episode, f"{key}_t"), np.float64)
    for view, frames in episode.images.items():
        safe_name(view, "view name")
        arrays[f"images/{view}"] = (frames, np.uint8)
        arrays[f"images/{view}_t"] = (episode.images_t[view], np.float64)
    validate_arrays({k: np.asarray(v) for k, (v, _) in arrays.items()}, where=str(final))
    tmp = Path(tempfile.mkdtemp(dir=dataset_dir, prefix=f".tmp-{name}-"))
    try:
        (tmp / "images").mkdir()
        for key, (value, dtype) in arrays.items():
            path = tmp / f"{key}.npy"
            with open(path, "wb") as fh:
                np.save(fh, np.ascontiguousarray(value, dtype=dtype), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
        n = len(episode.actions)
        meta = {
            "format": FORMAT, "version": VERSION, "instruction": episode.instruction,
            "length": n, "action_names": list(episode.action_names), "state_names": list(episode.state_names),
            "sensor_names": list(episode.sensor_names), "views": sorted(episode.images),
            "rates_hz": {"control": _rate(episode.actions_t), "state": _rate(episode.state_t),
                         "sensor": _rate(episode.sensor_t),
                         **{f"image/{v}": _rate(t) for v, t in episode.images_t.items()}},
            **episode.meta,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def validate_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Shapes, timestamps and finiteness of an episode's arrays; errors name the episode and field."""
    actions = arrays["actions"]
    if actions.ndim != 2 or len(actions) == 0:
        raise DatasetError(f"{where}: field 'actions': expected shape (N>0, A), got {actions.shape}")
    for key, value in arrays.items():
        if key.endswith("_t"):
            base = arrays[key[:-2]]
            if value.shape != (len(base),):
                raise DatasetError(f"{where}: field '{key}': expected {len(base)} timestamps, got shape {value.shape}")
            if len(value) > 1 and np.any(np.diff(value) < 0):
                raise DatasetError(f"{where}: field '{key}': timestamps go backwards")
        elif key.startswith("images/"):
            if value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8:
                raise DatasetError(f"{where}: field '{key}': expected (K, H, W, 3) uint8, got {value.shape} {value.dtype}")
        elif value.ndim != 2:
            raise DatasetError(f"{where}: field '{key}': expected a 2-D array (time, dim), got shape {value.shape}")
        if not key.startswith("images/") and value.size and not np.isfinite(np.asarray(value, np.float64)).all():
            raise DatasetError(f"{where}: field '{key}': contains NaN or inf")


class Episode:
    """A lazily loaded episode (arrays are memory-mapped on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        try:
            self.meta = json.loads(meta_file.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{self.path}: missing meta.json; not a complete episode") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{meta_file}: not valid JSON ({exc})") from exc
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise DatasetError(f"{meta_file}: field 'format'/'version': expected {FORMAT!r} v{VERSION}, got "
                               f"{self.meta.get('format')!r} v{self.meta.get('version')!r}")
        self._cache: dict[str, np.ndarray] = {}
        self.views: list[str] = [safe_name(v, "view name") for v in self.meta.get("views", [])]
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

    def validate(self) -> None:
        """Full check of every array (reads all data: used by `vla data info --check` and importers' tests)."""
        keys = ["actions", "actions_t"] + [k for k in ("state", "state_t", "sensor", "sensor_t") if self.has(k)]
        keys += [f"images/{v}{s}" for v in self.views for s in ("", "_t")]
        validate_arrays({k: np.asarray(self.array(k)) for k in keys}, where=str(self.path))


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
