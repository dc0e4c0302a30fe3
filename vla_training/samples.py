"""Training samples cut from canonical episodes at load time.

Sample (episode e, control step i) at time t = actions_t[i]:
- images: per view the latest frame stamped <= t;
- sensor: the last `sensor_window` samples stamped <= t (zero-padded at the front when the
  episode is younger than the window, as the seed did; `sensor_mask` False when there are none);
- state: the latest state stamped <= t;
- action chunk: actions[i : i+H] with `action_is_pad` True past the episode end (padded rows
  are zeros and excluded from the loss: no repeated last action pretending to be data).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vla_models import PolicyConfig
from vla_models.constants import (ACTION, ACTION_IS_PAD, OBS_IMAGES, OBS_INSTRUCTION, OBS_SENSOR, OBS_SENSOR_MASK,
                                  OBS_STATE)

from .episodes import DatasetError, Episode


def _latest_index(stamps: np.ndarray, t: float) -> int:
    """Index of the last stamp <= t (the first one if none is)."""
    return max(int(np.searchsorted(stamps, t + 1e-9, side="right")) - 1, 0)


class ChunkDataset(Dataset):
    def __init__(self, episodes: list[Episode], config: PolicyConfig, sensor_window: int | None = None) -> None:
        self.episodes = episodes
        self.config = config
        self.sensor_window = sensor_window or config.sensor.window
        for ep in episodes:
            self._check(ep)
        self.index = [(e, i) for e, ep in enumerate(episodes) for i in range(ep.length)]
        self._stamps = [{k: np.asarray(ep.array(k)) for k in self._stamp_keys(ep)} for ep in episodes]

    def _stamp_keys(self, ep: Episode) -> list[str]:
        keys = ["actions_t"] + [f"images/{v}_t" for v in self.config.views]
        keys += ["state_t"] if self.config.state.dim else []
        keys += ["sensor_t"] if self.config.sensor.channels else []
        return keys

    def _check(self, ep: Episode) -> None:
        cfg = self.config
        a = ep.array("actions").shape[1]
        if a != cfg.action_dim:
            raise DatasetError(f"{ep.path}: field 'actions': {a} dimensions; the policy config has action_dim "
                               f"{cfg.action_dim}")
        missing = [v for v in cfg.views if v not in ep.views]
        if missing:
            raise DatasetError(f"{ep.path}: field 'images': missing view(s) {missing}; episode has {ep.views}")
        if cfg.state.dim and ep.array("state").shape[1] != cfg.state.dim:
            raise DatasetError(f"{ep.path}: field 'state': {ep.array('state').shape[1]} dimensions; the policy "
                               f"config has state.dim {cfg.state.dim}")
        if cfg.sensor.channels and ep.array("sensor").shape[1] != cfg.sensor.channels:
            raise DatasetError(f"{ep.path}: field 'sensor': {ep.array('sensor').shape[1]} channels; the policy "
                               f"config has sensor.channels {cfg.sensor.channels}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict:
        e, i = self.index[idx]
        ep, stamps, cfg = self.episodes[e], self._stamps[e], self.config
        t = float(stamps["actions_t"][i])
        sample: dict = {}
        if cfg.views:
            sample[OBS_IMAGES] = {v: ep.frame(v, _latest_index(stamps[f"images/{v}_t"], t)) for v in cfg.views}
            sample[OBS_INSTRUCTION] = ep.instruction
        if cfg.state.dim:
            sample[OBS_STATE] = np.array(ep.array("state")[_latest_index(stamps["state_t"], t)], np.float32)
        if cfg.sensor.channels:
            end = int(np.searchsorted(stamps["sensor_t"], t + 1e-9, side="right"))
            window = np.array(ep.array("sensor")[max(0, end - self.sensor_window):end], np.float32)
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


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: arrays -> tensors (images stay uint8), instructions -> list[str]."""
    batch: dict = {}
    for key in samples[0]:
        if key == OBS_IMAGES:
            batch[key] = {v: torch.from_numpy(np.stack([s[key][v] for s in samples])) for v in samples[0][key]}
        elif key == OBS_INSTRUCTION:
            batch[key] = [s[key] for s in samples]
        else:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
    return batch


def fit_statistics(policy, episodes: list[Episode], max_rows: int = 200_000) -> None:
    """Fit the policy's normaliser on the training episodes (sensor streams subsampled to max_rows)."""
    cfg = policy.config
    keys = ["actions"] + (["state"] if cfg.state.dim else []) + (["sensor"] if cfg.sensor.channels else [])
    for key in keys:
        arrays = [np.asarray(ep.array(key)) for ep in episodes]
        rows = np.concatenate(arrays)
        if len(rows) > max_rows:
            rows = rows[np.linspace(0, len(rows) - 1, max_rows).astype(int)]
        policy.normalizer["action" if key == "actions" else key].fit(torch.from_numpy(rows.astype(np.float64)))


def split_episodes(episodes: list[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Split by episode (never by sample): a seeded choice of round(val_fraction x n) validation episodes."""
    n_val = int(round(val_fraction * len(episodes))) if len(episodes) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(episodes) > 1 else 0), len(episodes) - 1)
    chosen = set(np.random.default_rng(seed).choice(len(episodes), n_val, replace=False).tolist()) if n_val else set()
    return ([ep for i, ep in enumerate(episodes) if i not in chosen], [ep for i, ep in enumerate(episodes) if i in chosen])
