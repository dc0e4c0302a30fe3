"""The `train:` section of a config file (TrainConfig) and how the command line's overrides reach it.

Precedence: command-line values > `-o train.FIELD=...` > the config file's `train:` section > defaults;
`-o KEY=VALUE` without the `train.` prefix changes the policy config by dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from vla_models import ConfigError, PolicyConfig, preset
from vla_models.presets import PRESETS


@dataclass
class TrainConfig:
    dataset: str = ""
    out: str = "runs/train"
    config: str = "cpu"  # preset name or YAML/JSON file (`policy:` and optional `train:` sections)
    expert: str | None = None  # overrides policy expert.type
    epochs: int = 20
    max_steps: int | None = None  # optimiser steps; overrides epochs
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-4
    # the backbone's lr = this x lr: 0.1 (the seed's) fine-tunes pretrained weights (LoRA); a backbone with
    # random weights learning from the demonstrations alone takes 1.0 (config/vision_sees.yaml)
    backbone_lr_scale: float = 0.1
    min_lr: float = 1e-6
    weight_decay: float = 0.01
    warmup_frac: float = 0.03
    hold_frac: float = 0.02
    clip_grad: float = 1.0
    diffusion_timesteps: int | None = None
    ema_decay: float = 0.999
    seed: int = 0
    val_fraction: float = 0.1
    checkpoint_every: int = 500
    # steps after which the weights as validated (EMA for diffusion/flow) are also kept in OUT/step_N/,
    # with the wall time since training started (learning curves, e.g. `vla demo --vision`)
    snapshots: list[int] = field(default_factory=list)
    stage: int = 1
    init: str | None = None  # checkpoint to start from (e.g. stage 1's best/ for stage 2)
    # --init with tensors that do not fit (another horizon, action width...): skip them with a warning
    # (they start from random weights) instead of stopping with an error that names them
    init_partial: bool = False
    feature_cache: str | None = None  # directory; stage 1 with a frozen backbone only
    feature_cache_gb: float = 20.0  # the cache's size cap (least recently used entries are deleted)
    sensor_window: int | None = None  # sensor samples per window; goes into the checkpoint (sensor.window)
    sensor_weight: float = 1.0  # loss weight of samples that have sensor data (the seed: 2.0)
    loader_workers: int = 0  # processes reading samples (decoding frames) ahead of the step; 0 = in this process
    # where the backbone's pixel values are made when it runs (no feature cache): 'processor' = the image
    # processor in the loader workers (exact), 'device' = torch on the training device (the fast runner's path)
    pixels: str = "processor"
    # image augmentation of the training batches only, per view ('*' = every view): shift (px), crop (area
    # fraction), brightness, contrast; see training/augmentation.py. Not with cached features.
    augment: dict = field(default_factory=dict)
    device: str = "auto"
    # DDP's find_unused_parameters: null = decided from the model (only if a trainable module can be skipped
    # by the forward); true/false forces it
    find_unused_parameters: bool | None = None
    # false: no checkpoint is written (benchmarks: a 3B run's best/, last/ and last_ema/ take ~22 GB)
    save_checkpoints: bool = True
    # cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction): "fits 24 GB" on a bigger card
    memory_cap_gb: float | None = None
    resume: bool = False
    wandb: bool = False
    tensorboard: bool = False
    progress: bool = True


def load_train_config(overrides: dict) -> tuple[TrainConfig, PolicyConfig]:
    """CLI values over the config file's `train:` section over defaults; the policy config with overrides."""
    spec = overrides.get("config") or TrainConfig.config
    file_train: dict = {}
    if spec in PRESETS:
        policy_cfg = preset(spec)
    else:
        policy_cfg = PolicyConfig.from_file(spec)
        data = yaml.safe_load(Path(spec).read_text()) or {}
        file_train = data.get("train", {}) if isinstance(data, dict) else {}
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(file_train) - names)
    if unknown:
        raise ConfigError(f"{spec}: train: unknown field(s) {unknown}; expected some of {sorted(names)}")
    policy_sets, train_sets = split_sets(overrides.pop("set", None) or [])
    train = TrainConfig(**{**file_train, **train_sets, **{k: v for k, v in overrides.items() if v is not None}})
    changes = dict(policy_sets)
    if train.expert:
        changes["expert.type"] = train.expert
    if train.diffusion_timesteps:
        changes["expert.num_train_timesteps"] = train.diffusion_timesteps
    if train.stage == 2:
        changes["backbone.lora.enabled"] = True
    elif train.stage != 1:
        raise ConfigError(f"stage: expected 1 or 2, got {train.stage}")
    if train.sensor_window:
        changes["sensor.window"] = train.sensor_window
    if not isinstance(train.snapshots, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                                        for s in train.snapshots):
        raise ConfigError(f"snapshots: expected a list of step numbers > 0 such as [1000, 2000], got {train.snapshots!r}")
    if isinstance(train.backbone_lr_scale, bool) or not isinstance(train.backbone_lr_scale, (int, float)) \
            or train.backbone_lr_scale < 0:
        raise ConfigError(f"backbone_lr_scale: expected a number >= 0, got {train.backbone_lr_scale!r}")
    if not isinstance(train.init_partial, bool):
        raise ConfigError(f"init_partial: expected true or false, got {train.init_partial!r}")
    if train.find_unused_parameters is not None and not isinstance(train.find_unused_parameters, bool):
        raise ConfigError(f"find_unused_parameters: expected true, false or null, got {train.find_unused_parameters!r}")
    if train.augment and train.feature_cache:
        raise ConfigError("augment: cached backbone features were computed from the frames as recorded, so they "
                          "cannot show augmented ones; train without --feature-cache (stage 2 or an end-to-end "
                          "run) or drop train.augment")
    if train.pixels not in ("processor", "device"):
        raise ConfigError(f"pixels: expected 'processor' or 'device', got {train.pixels!r}")
    return train, policy_cfg.replace(**changes) if changes else policy_cfg


def split_sets(items: list[str]) -> tuple[dict, dict]:
    """`-o key=value` items -> (policy changes by dotted key, train fields). Values are YAML scalars or
    lists (`-o views=[View1,View2]`); `train.` prefixes a TrainConfig field, `policy.` is optional."""
    policy, train = {}, {}
    names = {f.name for f in fields(TrainConfig)}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"-o {item!r}: expected KEY=VALUE, e.g. -o backbone.pretrained=/models/Qwen2.5-VL-3B")
        value = yaml.safe_load(text) if text else ""
        if key.startswith("train."):
            if key[6:] not in names:
                raise ConfigError(f"-o {key}: unknown train field; expected one of {sorted(names)}")
            train[key[6:]] = value
        else:
            policy[key.removeprefix("policy.")] = value
    return policy, train
