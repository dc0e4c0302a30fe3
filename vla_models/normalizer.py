"""Normalisation of actions, state and sensor with statistics that live in the state_dict.

Each feature is mapped with `(x - shift) / scale`. For `min_max` the range goes to [-1, 1]; for
`quantile` the 1st..99th percentile goes to [-1, 1] (as LeRobot's and openpi's quantile modes: one spike in
the recordings no longer compresses the range of everything else; values beyond the percentiles map
outside [-1, 1]); for `mean_std` to zero mean and unit variance. A constant dimension (the seed's gripper, always 1)
gets scale 1 and shift = its value, so it normalises to exactly 0, never divides by zero, and
un-normalises back to the constant. `constant_mask` marks those dimensions so that losses can
ignore them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError

EPS = 1e-6
QUANTILES = (0.01, 0.99)  # the range `quantile` maps to [-1, 1]
# Smallest scale a varying dimension gets. Without a floor, a dimension that barely moves in the data
# (a quaternion component jittering by 1e-5) turns into amplified noise at deployment.
MIN_SCALE = 1e-3


class FeatureNormalizer(nn.Module):
    """Normaliser for one feature vector of size `dim` (the last axis of its tensors)."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.dim = dim
        self.mode = mode
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("constant_mask", torch.zeros(dim, dtype=torch.bool))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> None:
        """Compute statistics from `data` (N, dim) (or any (..., dim)); NaNs are an error."""
        data = torch.as_tensor(data, dtype=torch.float64).reshape(-1, self.dim)
        if data.shape[0] == 0:
            raise ValueError(f"cannot fit a normaliser on zero samples (dim={self.dim})")
        if not torch.isfinite(data).all():
            raise ValueError("cannot fit a normaliser: the data contains NaN or inf")
        lo, hi = data.min(0).values, data.max(0).values
        constant = (hi - lo) <= EPS * torch.clamp(hi.abs().maximum(lo.abs()), min=1.0)
        if self.mode == "min_max":
            shift, scale = (hi + lo) / 2, (hi - lo) / 2
        elif self.mode == "quantile":
            q_lo, q_hi = (torch.from_numpy(q) for q in np.quantile(data.numpy(), QUANTILES, axis=0))
            shift, scale = (q_hi + q_lo) / 2, (q_hi - q_lo) / 2
        elif self.mode == "mean_std":
            shift, scale = data.mean(0), data.std(0, unbiased=False)
        else:  # identity
            shift, scale = torch.zeros(self.dim, dtype=data.dtype), torch.ones(self.dim, dtype=data.dtype)
        if self.mode != "identity":
            shift = torch.where(constant, lo, shift)
            scale = torch.where(constant, torch.ones_like(scale), scale.clamp(min=MIN_SCALE))
        self.set_stats(shift, scale, constant)

    @torch.no_grad()
    def set_stats(self, shift: torch.Tensor, scale: torch.Tensor, constant_mask: torch.Tensor | None = None) -> None:
        shift, scale = torch.as_tensor(shift).float().reshape(-1), torch.as_tensor(scale).float().reshape(-1)
        if shift.numel() != self.dim or scale.numel() != self.dim:
            raise ConfigError(f"normaliser statistics: expected {self.dim} values, got shift {shift.numel()}, scale {scale.numel()}")
        if (scale <= 0).any():
            raise ConfigError("normaliser statistics: scale must be > 0 in every dimension")
        self.shift.copy_(shift)
        self.scale.copy_(scale)
        if constant_mask is not None:
            self.constant_mask.copy_(torch.as_tensor(constant_mask, dtype=torch.bool).reshape(-1))
        self.fitted.fill_(True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim)."""
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., dim); constant dimensions come back exactly."""
        out = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        return torch.where(self.constant_mask, self.shift.to(x.dtype), out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mode={self.mode}"


class Normalizer(nn.Module):
    """Normalisers for every vector input of the policy: `action`, and `state`/`sensor` when used."""

    def __init__(self, dims: dict[str, int], modes: dict[str, str]) -> None:
        super().__init__()
        self.features = nn.ModuleDict({name: FeatureNormalizer(dim, modes[name]) for name, dim in dims.items() if dim > 0})

    def __getitem__(self, name: str) -> FeatureNormalizer:
        return self.features[name]

    def __contains__(self, name: str) -> bool:
        return name in self.features

    @property
    def fitted(self) -> bool:
        return all(bool(f.fitted) for f in self.features.values())

    def require_fitted(self) -> None:
        missing = [name for name, f in self.features.items() if not bool(f.fitted)]
        if missing:
            raise CheckpointError(
                f"normaliser statistics for {missing} were never set; call policy.normalizer[name].fit(data) "
                "(vla train does this from the training split) before training or inference"
            )
