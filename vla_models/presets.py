"""Named policy configurations. `preset(name, **dotted_overrides)` -> PolicyConfig.

- `tiny`: the Qwen2.5-VL architecture at toy size with random weights + small heads (tests, CPU).
- `cpu`: no vision backbone; sensor + state into small heads (fast CPU training on simulation).
- `seed`: the research seed's sizes: Qwen2.5-VL-3B-Instruct, 5 views, 650 x 1026 sensor, heads of 1024.
- `3b`: the seed's sizes with Qwen2.5-VL-3B's architecture at random weights and 2 views (latency
  benchmarks without a download: latency does not depend on weight values; LoRA off, as merged).
"""

from __future__ import annotations

from typing import Any

from .config import PolicyConfig
from .errors import ConfigError

_SMALL_SENSOR = {"window": 64, "conv_channels": [32, 64], "transformer_layers": 1, "heads": 4}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "action_dim": 4, "horizon": 8, "views": ["front", "wrist"], "hidden_dim": 64,
        "action_names": ["dx", "dy", "dz", "gripper"],
        "backbone": {"type": "qwen_vl", "variant": "qwen2_5_vl", "size": "tiny", "min_pixels": 56 * 56,
                     "max_pixels": 64 * 64, "lora": {"enabled": False, "r": 4, "alpha": 8, "dropout": 0.0}},
        "sensor": {"channels": 6, **_SMALL_SENSOR},
        "state": {"dim": 8, "hidden": 64},
        "expert": {"layers": 2, "heads": 4, "feedforward": 128, "dropout": 0.0},
    },
    "cpu": {
        "action_dim": 4, "horizon": 16, "hidden_dim": 128,
        "action_names": ["dx", "dy", "dz", "gripper"],  # Meta-World: hand translation + gripper effort
        "sensor": {"channels": 12, **_SMALL_SENSOR},
        "state": {"dim": 39, "hidden": 128},
        "expert": {"layers": 3, "heads": 4, "feedforward": 512, "dropout": 0.0},
    },
    "seed": {
        "action_dim": 7, "horizon": 8, "views": ["View1", "View2", "View3", "View4", "View5"], "hidden_dim": 1024,
        "action_names": ["dx", "dy", "dz", "da", "db", "dr", "gripper"],
        "backbone": {"type": "qwen_vl", "variant": "qwen2_5_vl", "pretrained": "Qwen/Qwen2.5-VL-3B-Instruct",
                     "size": "3b", "lora": {"enabled": True}, "gradient_checkpointing": True},
        "sensor": {"channels": 1026, "window": 650},
        "state": {"dim": 6, "columns": [f"joint_{i}" for i in range(1, 7)]},  # `vla data import-seed`'s names
        "expert": {"layers": 4, "heads": 8, "feedforward": 4096},
    },
}
PRESETS["3b"] = {**PRESETS["seed"], "views": ["View1", "View2"],
                 "backbone": {"type": "qwen_vl", "variant": "qwen2_5_vl", "pretrained": None, "size": "3b",
                              "max_pixels": 640 * 360 * 2, "lora": {"enabled": False}}}


def preset(name: str, **overrides: Any) -> PolicyConfig:
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    config = PolicyConfig.from_dict(PRESETS[name])
    return config.replace(**overrides) if overrides else config
