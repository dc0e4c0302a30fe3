"""Policy configuration: one dataclass per component, loadable from YAML/JSON, validated on creation.

Configs are data: they are parsed with `yaml.safe_load` / `json.load` and never evaluate code.
Every validation error names the field (dotted path), the allowed values and what was given.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

BACKBONE_TYPES = ("qwen_vl", "none")
# the action experts by name; vla_models.experts.EXPERTS maps each to its class (and checks it has them all)
EXPERT_TYPES = ("regression", "diffusion", "flow")
QWEN_VARIANTS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
BACKBONE_SIZES = ("tiny", "3b")
DTYPES = ("auto", "float32", "bfloat16", "float16")
FUSION_MODES = ("concat", "cross_attention", "gated", "none")
REGRESSION_LOSSES = ("mse", "l1")
SAMPLERS = ("ddim", "ddpm")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
NORMALIZATION_MODES = ("min_max", "quantile", "mean_std", "identity")


def _choice(path: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{path}: expected one of {list(allowed)}, got {value!r}")


def _positive(path: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{path}: expected a number {bound}, got {value!r}")


def _fraction(path: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{path}: expected a number in [0, 1), got {value!r}")


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the language model's attention projections (seed: r=16, alpha=32)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Set by `vla export --merge-lora`: the adapters were added into the backbone's weights, which the checkpoint
    # therefore stores in full (they no longer equal `pretrained`'s); no adapter layers are built.
    merged: bool = False

    def validate(self, path: str) -> None:
        if self.merged and self.enabled:
            raise ConfigError(f"{path}: merged and enabled are both true; expected at most one (a merged checkpoint "
                              "has no adapters left to train)")
        _positive(f"{path}.r", self.r)
        _positive(f"{path}.alpha", self.alpha)
        _fraction(f"{path}.dropout", self.dropout)
        if not self.target_modules:
            raise ConfigError(f"{path}.target_modules: expected a non-empty list of module names, got []")


@dataclass
class BackboneConfig:
    """Vision-language backbone. `none` = state/sensor-only policy."""

    type: str = "none"
    variant: str = "qwen2_5_vl"
    # Local directory or hub id of pretrained weights; null builds `size` with random weights.
    pretrained: str | None = None
    size: str = "tiny"
    freeze: bool = True
    # Keep the word-embedding table as it is while the rest trains (freeze: false): with one fixed instruction
    # its 151,936 rows are nearly all unused, yet AdamW updates every one of them each step.
    freeze_word_embeddings: bool = False
    dtype: str = "auto"  # auto = bfloat16 on GPU, float32 on CPU
    # Image resolution handed to the Qwen image processor (pixels per view, multiples of 28x28).
    min_pixels: int = 56 * 56
    max_pixels: int = 640 * 360
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Recompute the language model's activations in backward instead of keeping them (stage 2, LoRA):
    # the memory of 36 layers x ~1,350 tokens x batch 4 does not fit a 24 GB card without it.
    gradient_checkpointing: bool = False
    # The language model's and vision tower's attention kernels (transformers' attn_implementation): sdpa (torch's
    # fused kernels), eager, or flash_attention_2 (the usual training path on a GPU; needs the flash_attn package).
    attn_implementation: str = "sdpa"

    def validate(self, path: str) -> None:
        _choice(f"{path}.type", self.type, BACKBONE_TYPES)
        _choice(f"{path}.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        _choice(f"{path}.variant", self.variant, QWEN_VARIANTS)
        _choice(f"{path}.size", self.size, BACKBONE_SIZES)
        _choice(f"{path}.dtype", self.dtype, DTYPES)
        _positive(f"{path}.min_pixels", self.min_pixels)
        if self.max_pixels < self.min_pixels:
            raise ConfigError(f"{path}.max_pixels: expected >= min_pixels ({self.min_pixels}), got {self.max_pixels}")
        self.lora.validate(f"{path}.lora")


@dataclass
class SensorConfig:
    """High-rate sensor encoder (seed: 1026 channels = force + OCT A-scan, 650 samples = 1 s)."""

    channels: int = 0  # 0 = no sensor input
    window: int = 650  # any input length T is resampled to this many samples
    conv_channels: list[int] = field(default_factory=lambda: [512, 1024, 1024, 1024])
    kernel_size: int = 3
    stride: int = 2
    transformer_layers: int = 2
    heads: int = 8

    def validate(self, path: str) -> None:
        _positive(f"{path}.channels", self.channels, allow_zero=True)
        _positive(f"{path}.window", self.window)
        if not self.conv_channels or any(not isinstance(c, int) or c <= 0 for c in self.conv_channels):
            raise ConfigError(f"{path}.conv_channels: expected a non-empty list of positive ints, got {self.conv_channels!r}")
        _positive(f"{path}.kernel_size", self.kernel_size)
        _positive(f"{path}.stride", self.stride)
        _positive(f"{path}.transformer_layers", self.transformer_layers, allow_zero=True)
        _positive(f"{path}.heads", self.heads)


@dataclass
class StateConfig:
    """Robot state vector encoder."""

    dim: int = 0  # 0 = no state input
    hidden: int = 256
    # Which of the recording's state columns the policy reads, by name (the seed's CSV has 6 joints +
    # 6 pose values; a JointState on the robot is read by these names too). [] = all, in order.
    columns: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:
        _positive(f"{path}.dim", self.dim, allow_zero=True)
        _positive(f"{path}.hidden", self.hidden)
        if self.columns and len(self.columns) != self.dim:
            raise ConfigError(f"{path}.columns: expected {self.dim} names (state.dim), got {len(self.columns)}: "
                              f"{self.columns!r}")
        if len(set(self.columns)) != len(self.columns):
            raise ConfigError(f"{path}.columns: expected unique names, got {self.columns!r}")

    def column_indices(self, names: list[str] | tuple[str, ...]) -> list[int] | None:
        """`column_indices(self.columns, names)`."""
        return column_indices(self.columns, names)


def column_indices(columns: list[str] | tuple[str, ...], names: list[str] | tuple[str, ...]) -> list[int] | None:
    """Where `columns` are in a state vector whose entries are called `names` (None: no columns named,
    all entries in order). A recording, the simulator and the robot's JointState are all read through
    this; a name that is not there raises KeyError listing the missing ones."""
    if not columns:
        return None
    names = list(names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise KeyError(missing)
    return [names.index(c) for c in columns]


@dataclass
class FusionConfig:
    """How the modalities become condition tokens for the expert."""

    mode: str = "concat"
    heads: int = 8  # cross_attention only

    def validate(self, path: str) -> None:
        _choice(f"{path}.mode", self.mode, FUSION_MODES)
        _positive(f"{path}.heads", self.heads)


@dataclass
class ExpertConfig:
    """The action expert. Regression: one forward pass. Diffusion: DDPM training, DDIM/DDPM sampling.
    Flow: flow matching, K Euler steps."""

    type: str = "regression"
    layers: int = 4
    heads: int = 8
    feedforward: int = 4096
    dropout: float = 0.1
    # regression
    loss: str = "mse"
    # diffusion
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    timestep_embed_dim: int = 128
    sampler: str = "ddim"
    ddim_steps: int = 10
    clip_sample: bool = True  # actions are normalised to [-1, 1]
    # flow (shares the denoiser's layers/heads/feedforward and timestep_embed_dim)
    flow_steps: int = 10
    # training-time real-time chunking (every expert): each training chunk's first d ~ U{0..prefix_max} rows
    # are given as input (the actions that execute while the next chunk is inferred) and not scored; `rtc`
    # execution then conditions on the executed rows instead of guiding toward them. 0 = off.
    prefix_max: int = 0

    def validate(self, path: str) -> None:
        _choice(f"{path}.type", self.type, EXPERT_TYPES)
        _positive(f"{path}.layers", self.layers)
        _positive(f"{path}.heads", self.heads)
        _positive(f"{path}.feedforward", self.feedforward)
        _fraction(f"{path}.dropout", self.dropout)
        _choice(f"{path}.loss", self.loss, REGRESSION_LOSSES)
        _positive(f"{path}.num_train_timesteps", self.num_train_timesteps)
        _choice(f"{path}.beta_schedule", self.beta_schedule, ("squaredcos_cap_v2", "linear", "scaled_linear"))
        _positive(f"{path}.timestep_embed_dim", self.timestep_embed_dim)
        if self.timestep_embed_dim % 2:
            raise ConfigError(f"{path}.timestep_embed_dim: expected an even number, got {self.timestep_embed_dim}")
        _choice(f"{path}.sampler", self.sampler, SAMPLERS)
        if not isinstance(self.ddim_steps, int) or not 1 <= self.ddim_steps <= self.num_train_timesteps:
            raise ConfigError(
                f"{path}.ddim_steps: expected an int in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.ddim_steps!r}"
            )
        if not isinstance(self.flow_steps, int) or not 1 <= self.flow_steps <= 1000:
            raise ConfigError(f"{path}.flow_steps: expected an int in [1, 1000], got {self.flow_steps!r}")
        if not isinstance(self.prefix_max, int) or isinstance(self.prefix_max, bool) or self.prefix_max < 0:
            raise ConfigError(f"{path}.prefix_max: expected an int >= 0 (rows given as input in training; 0 = off), "
                              f"got {self.prefix_max!r}")


@dataclass
class NormalizationConfig:
    """Per-input normalisation. Statistics live in the policy's state_dict and travel with checkpoints."""

    # min_max | quantile | mean_std | identity. min_max: the data's range to [-1, 1], what the diffusion sampler's
    # clipping assumes; quantile: the 1st..99th percentile to [-1, 1], robust to spikes in real recordings (the
    # sampler's clipping then keeps actions within those percentiles, as in openpi).
    action: str = "min_max"
    state: str = "mean_std"
    sensor: str = "mean_std"

    def validate(self, path: str) -> None:
        for name in ("action", "state", "sensor"):
            _choice(f"{path}.{name}", getattr(self, name), NORMALIZATION_MODES)


@dataclass
class PolicyConfig:
    """Everything needed to build a policy. `hidden_dim` is the width of every condition token."""

    action_dim: int = 7
    horizon: int = 8
    dt: float = 0.1  # seconds between consecutive actions of a chunk
    action_names: list[str] = field(default_factory=list)  # default: a0, a1, ...
    views: list[str] = field(default_factory=list)  # camera view names; empty with backbone none
    hidden_dim: int = 1024
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sensor: SensorConfig = field(default_factory=SensorConfig)
    state: StateConfig = field(default_factory=StateConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)

    def __post_init__(self) -> None:
        if not self.action_names:
            self.action_names = [f"a{i}" for i in range(self.action_dim)] if isinstance(self.action_dim, int) else []
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        _positive("action_dim", self.action_dim)
        _positive("horizon", self.horizon)
        _positive("dt", self.dt)
        _positive("hidden_dim", self.hidden_dim)
        if len(self.action_names) != self.action_dim:
            raise ConfigError(
                f"action_names: expected {self.action_dim} names (one per action dimension), "
                f"got {len(self.action_names)}: {self.action_names!r}"
            )
        if len(set(self.views)) != len(self.views):
            raise ConfigError(f"views: expected unique view names, got {self.views!r}")
        for name in ("backbone", "sensor", "state", "fusion", "expert", "normalization"):
            getattr(self, name).validate(name)
        if self.backbone.type == "none" and self.views:
            raise ConfigError(f"views: backbone.type is 'none', so no images are used; expected [], got {self.views!r}")
        if self.backbone.type != "none" and not self.views:
            raise ConfigError(f"views: backbone.type is {self.backbone.type!r}; expected at least one view name, got []")
        if self.backbone.type == "none" and self.sensor.channels == 0 and self.state.dim == 0:
            raise ConfigError(
                "backbone.type: the policy has no input; expected a backbone ('qwen_vl'), "
                "sensor.channels > 0 or state.dim > 0"
            )
        if self.expert.prefix_max >= self.horizon:
            raise ConfigError(f"expert.prefix_max: expected fewer rows than the horizon ({self.horizon}), "
                              f"got {self.expert.prefix_max}")
        if self.hidden_dim % self.expert.heads:
            raise ConfigError(f"expert.heads: expected a divisor of hidden_dim={self.hidden_dim}, got {self.expert.heads}")
        if self.sensor.channels and self.hidden_dim % self.sensor.heads:
            raise ConfigError(f"sensor.heads: expected a divisor of hidden_dim={self.hidden_dim}, got {self.sensor.heads}")
        if self.fusion.mode == "cross_attention" and self.hidden_dim % self.fusion.heads:
            raise ConfigError(f"fusion.heads: expected a divisor of hidden_dim={self.hidden_dim}, got {self.fusion.heads}")

    @property
    def modalities(self) -> list[str]:
        """The inputs this policy uses, in a fixed order."""
        present = {"vision_language": self.backbone.type != "none", "sensor": self.sensor.channels > 0,
                   "state": self.state.dim > 0}
        return [name for name, on in present.items() if on]

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PolicyConfig":
        return _from_dict(cls, data, path="")

    @classmethod
    def from_file(cls, path: str | Path) -> "PolicyConfig":
        """Load a YAML or JSON file (a top-level `policy:` key is accepted, so training presets load too)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config file ({exc})") from exc
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
        if isinstance(data, dict) and "policy" in data:
            data = data["policy"]
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def replace(self, **changes: Any) -> "PolicyConfig":
        """A copy with nested changes given as dotted keys: `cfg.replace(**{"expert.type": "diffusion"})`."""
        data = self.to_dict()
        for key, value in changes.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                if part not in node or not isinstance(node[part], dict):
                    raise ConfigError(f"{key}: no such config section {part!r}")
                node = node[part]
            if leaf not in node:
                raise ConfigError(f"{key}: unknown field; expected one of {sorted(node)}")
            node[leaf] = value
        return PolicyConfig.from_dict(data)


def _from_dict(cls: type, data: Any, path: str) -> Any:
    where = path or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        sub = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _from_dict(hint, value, sub)
        else:
            kwargs[name] = _check_type(sub, value, hint)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature errors
        raise ConfigError(f"{where}: {exc}") from exc


def _check_type(path: str, value: Any, hint: Any) -> Any:
    """Basic type check of JSON/YAML scalars and lists against a field annotation."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_check_type(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)] if args else list(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value
