"""Helpers to build observations and batches of the right shapes (tests, benchmarks, examples)."""

from __future__ import annotations

import numpy as np
import torch

from .config import PolicyConfig
from .constants import ACTION, ACTION_IS_PAD, OBS_IMAGES, OBS_INSTRUCTION, OBS_SENSOR, OBS_SENSOR_MASK, OBS_STATE


def fake_observation(config: PolicyConfig, batch_size: int, seed: int = 0, image_size: tuple[int, int] = (64, 64),
                     sensor_length: int | None = None) -> dict:
    """A random observation for `config`: images (B, H, W, 3) uint8 per view, B instructions,
    sensor (B, T, C) float32 (T = config.sensor.window unless given), sensor_mask (B,), state (B, S)."""
    rng = np.random.default_rng(seed)
    obs: dict = {}
    if config.views:
        obs[OBS_IMAGES] = {v: rng.integers(0, 256, (batch_size, *image_size, 3), dtype=np.uint8) for v in config.views}
        obs[OBS_INSTRUCTION] = [f"insert the needle {i}" for i in range(batch_size)]
    if config.sensor.channels:
        t = sensor_length or config.sensor.window
        obs[OBS_SENSOR] = rng.normal(size=(batch_size, t, config.sensor.channels)).astype(np.float32)
        obs[OBS_SENSOR_MASK] = np.ones(batch_size, dtype=bool)
    if config.state.dim:
        obs[OBS_STATE] = rng.normal(size=(batch_size, config.state.dim)).astype(np.float32)
    return obs


def fake_batch(config: PolicyConfig, batch_size: int, seed: int = 0, **kwargs) -> dict:
    """fake_observation + action chunks (B, H, A) + pad mask (B, H) (the last row's tail padded)."""
    batch = fake_observation(config, batch_size, seed, **kwargs)
    rng = np.random.default_rng(seed + 1)
    batch[ACTION] = rng.normal(size=(batch_size, config.horizon, config.action_dim)).astype(np.float32)
    pad = np.zeros((batch_size, config.horizon), dtype=bool)
    pad[-1, config.horizon // 2:] = True
    batch[ACTION_IS_PAD] = pad
    return batch


def fit_fake_statistics(policy, batch_size: int = 32, seed: int = 0) -> None:
    """Fit the policy's normaliser on random data (stand-in for a dataset's statistics)."""
    batch = fake_batch(policy.config, batch_size, seed, image_size=(8, 8))
    policy.normalizer["action"].fit(torch.as_tensor(batch[ACTION]))
    if OBS_STATE in batch:
        policy.normalizer["state"].fit(torch.as_tensor(batch[OBS_STATE]))
    if OBS_SENSOR in batch:
        policy.normalizer["sensor"].fit(torch.as_tensor(batch[OBS_SENSOR]))
