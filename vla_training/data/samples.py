"""Training samples cut from canonical episodes at load time.

Sample (episode e, control step i) at time t = actions_t[i]:
- images: per view the latest frame stamped <= t;
- sensor: the last `sensor_window` samples stamped <= t (zero-padded at the front when the
  episode is younger than the window, as the seed did; `sensor_mask` False when there are none,
  also for a whole episode recorded without the sensor);
- state: the latest state stamped <= t, the config's `state.columns` picked by name;
- action chunk: actions[i : i+H] with `action_is_pad` True past the episode end (padded rows
  are zeros and excluded from the loss: no repeated last action pretending to be data).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vla_models import PolicyConfig
from vla_models.constants import (ACTION, ACTION_IS_PAD, BACKBONE_INPUTS, OBS_IMAGES, OBS_INSTRUCTION, OBS_SENSOR,
                                  OBS_SENSOR_MASK, OBS_STATE)

from .episodes import DatasetError, Episode


def _latest_index(stamps: np.ndarray, t: float) -> int:
    """Index of the last stamp <= t (the first one if none is)."""
    return max(int(np.searchsorted(stamps, t + 1e-9, side="right")) - 1, 0)


def state_columns(ep: Episode, config: PolicyConfig) -> list[int] | slice:
    """Indices of the config's `state.columns` in the episode's state (all columns when none are named)."""
    names = ep.meta.get("state_names") or []
    try:
        indices = config.state.column_indices(names)
    except KeyError as exc:
        raise DatasetError(f"{ep.path}: field 'state': columns {exc.args[0]} (config state.columns) are not in the "
                           f"episode's state_names {names}") from None
    return slice(None) if indices is None else indices


# A sample's frames by reference, {view: (episode path, frame index)}, in place of the decoded images: what the
# stage-1 feature cache needs (it keys on the stored bytes and decodes only the frames it has no features for).
FRAME_REFS = "frame_refs"


class ChunkDataset(Dataset):
    def __init__(self, episodes: list[Episode], config: PolicyConfig, sensor_window: int | None = None,
                 frame_refs: bool = False) -> None:
        """frame_refs: samples carry FRAME_REFS instead of decoded images (training from the feature cache)."""
        self.episodes = episodes
        self.config = config
        self.frame_refs = frame_refs
        self.sensor_window = sensor_window or config.sensor.window
        for ep in episodes:
            check_episode(ep, config)
        self._columns = [state_columns(ep, config) if config.state.dim else None for ep in episodes]
        self.index = [(e, i) for e, ep in enumerate(episodes) for i in range(ep.length)]
        self._stamps = [{k: np.asarray(ep.array(k)) for k in self._stamp_keys(ep)} for ep in episodes]

    def _stamp_keys(self, ep: Episode) -> list[str]:
        keys = ["actions_t"] + [f"images/{v}_t" for v in self.config.views]
        keys += ["state_t"] if self.config.state.dim else []
        keys += ["sensor_t"] if self.config.sensor.channels and ep.has("sensor") else []
        return keys

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        e, i = self.index[idx]
        ep, stamps, cfg = self.episodes[e], self._stamps[e], self.config
        t = float(stamps["actions_t"][i])
        sample: dict = {}
        if cfg.views:
            frames = {v: _latest_index(stamps[f"images/{v}_t"], t) for v in cfg.views}
            if self.frame_refs:
                sample[FRAME_REFS] = {v: (str(ep.path), k) for v, k in frames.items()}
            else:
                sample[OBS_IMAGES] = {v: ep.frame(v, k) for v, k in frames.items()}
            sample[OBS_INSTRUCTION] = ep.instruction
        if cfg.state.dim:
            row = np.asarray(ep.array("state")[_latest_index(stamps["state_t"], t)])
            sample[OBS_STATE] = np.array(row[self._columns[e]], np.float32)
        if cfg.sensor.channels:
            end = int(np.searchsorted(stamps["sensor_t"], t + 1e-9, side="right")) if "sensor_t" in stamps else 0
            window = np.array(ep.array("sensor")[max(0, end - self.sensor_window):end], np.float32) if end else \
                np.zeros((0, cfg.sensor.channels), np.float32)
            padded = np.zeros((self.sensor_window, cfg.sensor.channels), np.float32)
            if len(window):
                padded[-len(window):] = window
            sample[OBS_SENSOR], sample[OBS_SENSOR_MASK] = padded, np.bool_(len(window) > 0)
        h = cfg.horizon
        chunk = np.zeros((h, cfg.action_dim), np.float32)
        rows = np.asarray(ep.array("actions")[i:i + h], np.float32)
        chunk[:len(rows)] = rows
        sample[ACTION] = chunk
        sample[ACTION_IS_PAD] = np.arange(h) >= len(rows)
        return sample


def check_episode(ep: Episode, cfg: PolicyConfig) -> None:
    """The episode fits the policy config (raises DatasetError naming the episode, field and config key);
    reads only shapes and meta, so a whole dataset is checked before any model is built."""
    a = ep.array("actions").shape[1]
    if a != cfg.action_dim:
        raise DatasetError(f"{ep.path}: field 'actions': {a} dimensions; the policy config has action_dim "
                           f"{cfg.action_dim}")
    missing = [v for v in cfg.views if v not in ep.views]
    if missing:
        raise DatasetError(f"{ep.path}: field 'images': missing view(s) {missing}; episode has {ep.views} (config "
                           "views)")
    if cfg.state.dim:
        if not ep.has("state"):
            raise DatasetError(f"{ep.path}: field 'state': the episode has no state; the policy config has state.dim "
                               f"{cfg.state.dim}")
        width = ep.array("state").shape[1]
        columns = state_columns(ep, cfg)
        picked = width if isinstance(columns, slice) else len(columns)
        if picked != cfg.state.dim:
            raise DatasetError(f"{ep.path}: field 'state': {width} columns {ep.meta.get('state_names') or ''}; the "
                               f"policy config has state.dim {cfg.state.dim}: set state.columns to the {cfg.state.dim} "
                               "names it should read")
    if cfg.sensor.channels and ep.has("sensor") and ep.array("sensor").shape[1] != cfg.sensor.channels:
        raise DatasetError(f"{ep.path}: field 'sensor': {ep.array('sensor').shape[1]} channels; the policy "
                           f"config has sensor.channels {cfg.sensor.channels}")


def control_period(episodes: list[Episode]) -> float | None:
    """The recordings' seconds per action: median step of every episode's action stamps."""
    steps = np.concatenate([np.diff(np.asarray(ep.array("actions_t"))) for ep in episodes if ep.length > 1] or
                           [np.zeros(0)])
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: arrays -> tensors (images stay uint8), instructions -> list[str]."""
    batch: dict = {}
    for key in samples[0]:
        if key == OBS_IMAGES:
            batch[key] = {v: torch.from_numpy(np.stack([s[key][v] for s in samples])) for v in samples[0][key]}
        elif key in (OBS_INSTRUCTION, FRAME_REFS):
            batch[key] = [s[key] for s in samples]
        else:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    return batch


class BackboneCollate:
    """`collate` plus the backbone's input tensors, made where the batch is collated (the data-loader
    workers, off the training process). pixels 'processor': the transformers image processor runs
    there (exact; the frames are dropped once they are pixel values); 'device': only the text is
    tokenised there and the policy computes the pixel values on its device from the uint8 frames
    (the fast runner's path: no PIL, and the frames are ~6x smaller to hand over than pixel values)."""

    def __init__(self, backbone, views: list[str], pixels: str) -> None:
        self.backbone, self.views, self.pixels = backbone, list(views), pixels

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate(samples)
        images, instruction = batch[OBS_IMAGES], batch[OBS_INSTRUCTION]
        if self.pixels == "processor":
            batch[BACKBONE_INPUTS] = self.backbone.preprocess(images, instruction, self.views)
            del batch[OBS_IMAGES]
        else:
            sizes = {view: tuple(images[view].shape[1:3]) for view in self.views}
            batch[BACKBONE_INPUTS] = self.backbone.text_inputs(sizes, instruction, self.views)
        return batch


def fit_statistics(policy, episodes: list[Episode], max_rows: int = 200_000, seed: int = 0) -> None:
    """Fit the policy's normaliser on a bounded sample of the training episodes: per field at most `max_rows`
    rows in all, spread over the episodes in proportion to their lengths (largest remainder), each episode's
    share drawn without replacement from a generator seeded by (seed, episode position). Host memory is
    bounded by max_rows, not by the dataset; the same episodes and seed give the same rows on every call
    and every DDP rank (no collective needed; DDP broadcasts rank 0's buffers anyway)."""
    cfg = policy.config
    keys = ["actions"] + (["state"] if cfg.state.dim else []) + (["sensor"] if cfg.sensor.channels else [])
    for key in keys:
        having = [ep for ep in episodes if ep.has(key)]  # the sensor: from the episodes recorded with it
        if not having:
            raise DatasetError(f"field '{key}': none of the {len(episodes)} training episodes has it; the policy config "
                               f"expects it ({'sensor.channels' if key == 'sensor' else 'state.dim'}); set that to 0 "
                               "or add recordings with it")
        arrays = [_rows(ep, key, share, np.random.default_rng([seed, i]))
                  for i, (ep, share) in enumerate(zip(having, _shares([len(ep.array(key)) for ep in having], max_rows)))]
        if key == "state":
            arrays = [rows[:, state_columns(ep, cfg)] for ep, rows in zip(having, arrays)]
        rows = np.concatenate(arrays)
        policy.normalizer["action" if key == "actions" else key].fit(torch.from_numpy(rows.astype(np.float64)))


def _shares(lengths: list[int], max_rows: int) -> list[int]:
    """Rows to read per episode: all of them when they total <= max_rows, else max_rows split in proportion
    to the lengths (largest remainder; a share never exceeds its episode)."""
    total = sum(lengths)
    if total <= max_rows:
        return list(lengths)
    exact = np.asarray(lengths, np.float64) * max_rows / total
    shares = np.floor(exact).astype(np.int64)
    shares[np.argsort(-(exact - shares), kind="stable")[:max_rows - int(shares.sum())]] += 1
    return shares.tolist()


def _rows(ep: Episode, key: str, share: int, rng: np.random.Generator) -> np.ndarray:
    """`share` of an episode's rows, drawn without replacement (in stored order: a memmap reads only them)."""
    array = ep.array(key)
    if share >= len(array):
        return np.asarray(array)
    return np.asarray(array[np.sort(rng.choice(len(array), share, replace=False))])


def split_episodes(episodes: list[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Split by episode (never by sample): a seeded choice of round(val_fraction x n) validation episodes."""
    n_val = int(round(val_fraction * len(episodes))) if len(episodes) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(episodes) > 1 else 0), len(episodes) - 1)
    chosen = set(np.random.default_rng(seed).choice(len(episodes), n_val, replace=False).tolist()) if n_val else set()
    return ([ep for i, ep in enumerate(episodes) if i not in chosen], [ep for i, ep in enumerate(episodes) if i in chosen])
