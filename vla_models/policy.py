"""The policy: backbone + sensor/state encoders + fusion + action expert + normaliser.

observation --prepare--> tensors --encode--> condition tokens --expert--> normalised chunk
            --unnormalise--> (B, H, A) in the dataset's action units.
The vision-language backbone runs once per chunk, whatever the sampler, steps or sample count.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .backbones import build_backbone
from .checkpoint_files import save_policy
from .config import PolicyConfig
from .constants import (ACTION, ACTION_IS_PAD, BACKBONE_INPUTS, OBS_IMAGES, OBS_INSTRUCTION, OBS_SENSOR,
                        OBS_SENSOR_MASK, OBS_STATE, SAMPLE_WEIGHT, VL_FEATURES)
from .encoders import SensorEncoder, StateEncoder
from .errors import ObservationError
from .experts import EXPERTS
from .experts.guidance import Inpaint
from .fusion import Condition, Features, Fusion
from .normalizer import Normalizer


@dataclass
class PreparedObservation:
    """Validated, normalised model inputs on the policy's device."""

    batch_size: int
    backbone_inputs: dict[str, torch.Tensor] | None  # processor output (CPU until the backbone moves it)
    sensor: torch.Tensor | None  # (B, T, C) normalised
    sensor_mask: torch.Tensor | None  # (B,) bool
    state: torch.Tensor | None  # (B, S) normalised


class VLAPolicy(nn.Module):
    def __init__(self, config: PolicyConfig, backbone_files: str | Path | None = None,
                 backbone: nn.Module | None = None) -> None:
        """backbone: an already built backbone to share (e.g. one backbone behind several experts in a benchmark)."""
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.backbone = backbone if backbone is not None else build_backbone(config.backbone, files_dir=backbone_files)
        self.vl_proj = nn.Linear(self.backbone.hidden_size, d) if self.backbone is not None else None
        self.sensor_encoder = SensorEncoder(config.sensor, d) if config.sensor.channels else None
        self.state_encoder = StateEncoder(config.state, d) if config.state.dim else None
        self.fusion = Fusion(config.fusion, len(config.modalities), d)
        self.expert = EXPERTS[config.expert.type](config.expert, d, config.horizon, config.action_dim)
        n = config.normalization
        self.normalizer = Normalizer({"action": config.action_dim, "state": config.state.dim,
                                      "sensor": config.sensor.channels},
                                     {"action": n.action, "state": n.state, "sensor": n.sensor})
        self.last_timings: dict[str, float] = {}  # ms per stage of the latest predict_action_chunk

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- observation -> tensors -------------------------------------------------------------------
    def prepare(self, observation: dict[str, Any], backbone_inputs: bool = True) -> PreparedObservation:
        """Validate an observation and turn it into normalised tensors (see constants.py for keys).

        backbone_inputs=False skips the image processor (the caller brings cached backbone features).
        """
        if not isinstance(observation, dict):
            raise ObservationError(f"observation: expected a dict, got {type(observation).__name__}")
        cfg, device = self.config, self.device
        batch = _batch_size(observation)
        processed = sensor = sensor_mask = state = None
        if self.backbone is not None and backbone_inputs:
            processed = self.prepare_images(observation, batch) if BACKBONE_INPUTS not in observation else \
                self.prepared_backbone_inputs(observation, batch)
        if self.sensor_encoder is not None:
            sensor = _float_tensor(observation, OBS_SENSOR, (batch, None, cfg.sensor.channels), "(B, T, C)", device)
            sensor = self.normalizer["sensor"].normalize(sensor)
            mask = observation.get(OBS_SENSOR_MASK)
            sensor_mask = (torch.ones(batch, dtype=torch.bool, device=device) if mask is None
                           else torch.as_tensor(np.asarray(mask), dtype=torch.bool, device=device).reshape(-1))
            if sensor_mask.shape != (batch,):
                raise ObservationError(f"{OBS_SENSOR_MASK}: expected shape ({batch},), got {tuple(sensor_mask.shape)}")
        if self.state_encoder is not None:
            state = _float_tensor(observation, OBS_STATE, (batch, cfg.state.dim), "(B, S)", device)
            state = self.normalizer["state"].normalize(state)
        return PreparedObservation(batch, processed, sensor, sensor_mask, state)

    def prepare_images(self, observation: dict[str, Any], batch: int) -> dict[str, torch.Tensor]:
        """Validated views + instruction -> the backbone's input tensors (CPU)."""
        cfg = self.config
        images = observation.get(OBS_IMAGES)
        if not isinstance(images, dict):
            raise ObservationError(f"{OBS_IMAGES}: expected a dict {{view: (B, H, W, 3) uint8}} with views "
                                   f"{cfg.views}, got {type(images).__name__}")
        self.backbone.check_images(images, cfg.views, batch)
        instruction = observation.get(OBS_INSTRUCTION)
        if isinstance(instruction, str):
            instruction = [instruction] * batch
        if not isinstance(instruction, (list, tuple)) or len(instruction) != batch:
            raise ObservationError(f"{OBS_INSTRUCTION}: expected a list of {batch} strings, got {instruction!r}")
        return self.backbone.preprocess(images, list(instruction), cfg.views)

    def prepared_backbone_inputs(self, observation: dict[str, Any], batch: int) -> dict[str, torch.Tensor]:
        """Backbone inputs made beforehand (`BACKBONE_INPUTS`); missing `pixel_values` are computed here, on
        the policy's device, from the uint8 views."""
        inputs = observation[BACKBONE_INPUTS]
        if not isinstance(inputs, dict) or "input_ids" not in inputs or len(inputs["input_ids"]) != batch:
            raise ObservationError(f"{BACKBONE_INPUTS}: expected the backbone's input tensors for {batch} "
                                   f"observations (input_ids, attention_mask, image_grid_thw[, pixel_values])")
        if "pixel_values" in inputs:
            return inputs
        images = observation.get(OBS_IMAGES)
        if not isinstance(images, dict):
            raise ObservationError(f"{BACKBONE_INPUTS} without pixel_values needs {OBS_IMAGES}: expected a dict "
                                   f"{{view: (B, H, W, 3) uint8}} with views {self.config.views}")
        self.backbone.check_images(images, self.config.views, batch)
        return {**inputs, "pixel_values": self.backbone.pixels(images, self.config.views, self.device)}

    # -- tensors -> condition ---------------------------------------------------------------------
    def encode_vision_language(self, prepared: PreparedObservation) -> Features | None:
        """The backbone pass (the expensive one): Features at the backbone's hidden size, or None."""
        return self.backbone(prepared.backbone_inputs) if self.backbone is not None else None

    def encode(self, prepared: PreparedObservation, vl_features: Features | None = None,
               timings: dict[str, float] | None = None) -> Condition:
        """Condition tokens (B, L, D). `vl_features` may be given (cached); else the backbone runs once."""
        clock = _StageClock(self.device, timings)
        features: list[Features] = []
        if self.backbone is not None:
            if vl_features is None:
                vl_features = self.encode_vision_language(prepared)
            clock.lap("backbone_ms")
            tokens = self.vl_proj(vl_features.tokens)  # (B, L, D)
            features.append(Features(tokens, vl_features.mask, self.vl_proj(vl_features.pooled)))
        if self.sensor_encoder is not None:
            features.append(Features.from_tokens(*self.sensor_encoder(prepared.sensor, prepared.sensor_mask)))
            clock.lap("sensor_ms")
        if self.state_encoder is not None:
            features.append(Features.from_tokens(self.state_encoder(prepared.state)))
        cond = self.fusion(features)
        clock.lap("fusion_ms")
        return cond

    # -- training ---------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch = observation keys + `action` (B, H, A) [+ `action_is_pad` (B, H)]."""
        self.normalizer.require_fitted()
        vl_features = batch.get(VL_FEATURES)  # cached backbone features (stage-1 training)
        prepared = self.prepare(batch, backbone_inputs=vl_features is None)
        b, cfg = prepared.batch_size, self.config
        actions = _float_tensor(batch, ACTION, (b, cfg.horizon, cfg.action_dim), "(B, H, A)", self.device)
        pad = batch.get(ACTION_IS_PAD)
        pad = (torch.zeros(b, cfg.horizon, dtype=torch.bool, device=self.device) if pad is None
               else torch.as_tensor(np.asarray(pad) if not isinstance(pad, torch.Tensor) else pad,
                                    dtype=torch.bool, device=self.device))
        if pad.shape != (b, cfg.horizon):
            raise ObservationError(f"{ACTION_IS_PAD}: expected shape ({b}, {cfg.horizon}), got {tuple(pad.shape)}")
        action_norm = self.normalizer["action"]
        dim_weight = (~action_norm.constant_mask).float()  # constant dimensions carry no signal
        cond = self.encode(prepared, vl_features=vl_features)
        weight = batch.get(SAMPLE_WEIGHT)
        if weight is not None:
            weight = torch.as_tensor(np.asarray(weight) if not isinstance(weight, torch.Tensor) else weight,
                                     dtype=torch.float32, device=self.device)
            if weight.shape != (b,):
                raise ObservationError(f"{SAMPLE_WEIGHT}: expected shape ({b},), got {tuple(weight.shape)}")
        loss, logs = self.expert.loss(cond, action_norm.normalize(actions), pad, dim_weight, weight)
        return loss, {"loss": loss.item(), **logs}

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, observation: dict[str, Any]) -> Features | None:
        """The backbone's features of an observation's images + instruction (None without a backbone).

        For asynchronous inference: computed at the cameras' pace, then reused by any number of
        `predict_action_chunk(..., vl_features=...)` calls with fresher sensor and state.
        """
        if self.backbone is None:
            return None
        with self._evaluating():
            images = observation.get(OBS_IMAGES)
            batch = len(next(iter(images.values()))) if isinstance(images, dict) and images else 1
            return self.backbone(self.prepare_images(observation, batch))

    @torch.no_grad()
    def predict_action_chunk(self, observation: dict[str, Any], num_samples: int = 1, seed: int | None = None,
                             vl_features: Features | None = None, inpaint: Inpaint | None = None,
                             **sampling_options: Any) -> torch.Tensor:
        """Action chunks in the dataset's units: (B, H, A), or (B, num_samples, H, A) when num_samples > 1.

        seed: makes diffusion/flow samples reproducible (a CPU generator, so the same on any device).
        vl_features: backbone features from `encode_images` (then images are not needed nor processed).
        sampling_options: what the expert takes (`expert.options`): `sampler` (diffusion 'ddim'|'ddpm', flow
        'euler') and `steps`; the expert resolves and checks them (`expert.sampling`).
        inpaint: real-time chunking (experts/guidance.py): the previous chunk's actions from this observation on
        and how many of them execute during this inference (returned exactly; the rest guides the sample).
        Stage latencies of this call are left in `self.last_timings` (ms).
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
        self.normalizer.require_fitted()
        with self._evaluating():
            timings: dict[str, float] = {}
            start = time.perf_counter()
            prepared = self.prepare(observation, backbone_inputs=vl_features is None)
            timings["preprocess_ms"] = (time.perf_counter() - start) * 1e3
            cond = self.encode(prepared, vl_features=vl_features, timings=timings)
            clock = _StageClock(self.device, timings)
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            guide = inpaint.guide(self.normalizer["action"].normalize, cond.tokens.shape[0], self.config.horizon,
                                  self.config.action_dim) if inpaint is not None else None
            chunks = self.expert.sample(cond, num_samples, generator=generator, guide=guide,
                                        **sampling_options)  # (B, N, H, A)
            chunks = self.normalizer["action"].unnormalize(chunks.float())
            if inpaint is not None:
                chunks = inpaint.freeze(chunks)
            clock.lap("expert_ms")
            timings["total_ms"] = (time.perf_counter() - start) * 1e3
            self.last_timings = timings
        return chunks[:, 0] if num_samples == 1 else chunks

    @contextlib.contextmanager
    def _evaluating(self):
        """Eval mode for one call, then the mode it had. A policy already in eval mode is left alone:
        eval()/train() walk every submodule, which took ~40 % of a `tiny` regression chunk's CPU time."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path, extra=None) -> Path:
        """Write a checkpoint directory (config.json + model.safetensors [+ backbone files]) atomically."""
        return save_policy(self, path, extra)


def build_policy(config: PolicyConfig | dict | str | Path) -> VLAPolicy:
    """A policy with fresh weights from a PolicyConfig, a dict or a YAML/JSON file."""
    if isinstance(config, dict):
        config = PolicyConfig.from_dict(config)
    elif isinstance(config, (str, Path)):
        config = PolicyConfig.from_file(config)
    return VLAPolicy(config)


class _StageClock:
    """Records the wall time since the previous lap into `timings` (synchronising CUDA first)."""

    def __init__(self, device: torch.device, timings: dict[str, float] | None) -> None:
        self.device, self.timings = device, timings
        self.last = time.perf_counter() if timings is not None else 0.0  # no clock read when untimed (compiled)

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - self.last) * 1e3
        self.last = now


def _batch_size(observation: dict[str, Any]) -> int:
    for key in (OBS_STATE, OBS_SENSOR):
        if observation.get(key) is not None:
            return int(np.shape(observation[key])[0])
    images = observation.get(OBS_IMAGES)
    if isinstance(images, dict) and images:
        return int(np.shape(next(iter(images.values())))[0])
    instruction = observation.get(OBS_INSTRUCTION)
    if isinstance(instruction, (list, tuple)):
        return len(instruction)
    raise ObservationError(f"observation: cannot tell the batch size; expected some of "
                           f"{[OBS_IMAGES, OBS_SENSOR, OBS_STATE]}, got keys {sorted(observation)}")


def _float_tensor(data: dict[str, Any], key: str, shape: tuple, described: str, device: torch.device) -> torch.Tensor:
    """data[key] as a float32 tensor on `device`, checked against `shape` (None = any size)."""
    value = data.get(key)
    if value is None:
        raise ObservationError(f"{key}: missing; expected a float array of shape {described} = {_fmt(shape)}")
    tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float32))
    if tensor.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        raise ObservationError(f"{key}: expected shape {described} = {_fmt(shape)}, got {tuple(tensor.shape)}")
    if any(s == 0 for s in tensor.shape):
        raise ObservationError(f"{key}: expected shape {described} = {_fmt(shape)} with no empty axis, "
                               f"got {tuple(tensor.shape)}")
    tensor = tensor.to(device=device, dtype=torch.float32)
    if not torch.isfinite(tensor).all():
        raise ObservationError(f"{key}: contains NaN or inf; expected finite values")
    return tensor


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
