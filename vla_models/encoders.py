"""Encoders for the non-visual inputs: the high-rate sensor stream and the robot state vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import SensorConfig, StateConfig


class SensorEncoder(nn.Module):
    """(B, T, C) sensor window -> tokens (B, L, D) and a pooled vector (B, D).

    Any T is resampled (linear interpolation over time) to `config.window` samples; the seed's
    shape is 650 x 1026 (force + 1025-point OCT A-scan). A Conv1d stack (k3, s2, BatchNorm, GELU)
    shortens time (650 -> 41 with four layers), a small transformer mixes the steps, and rows whose
    `sensor_mask` is False (no sensor data) are replaced by a learned "no sensor" embedding so the
    expert can tell missing data from a quiet sensor.
    """

    def __init__(self, config: SensorConfig, hidden_dim: int) -> None:
        super().__init__()
        self.window = config.window
        layers: list[nn.Module] = []
        in_ch = config.channels
        length = config.window
        for out_ch in config.conv_channels:
            pad = config.kernel_size // 2
            layers += [nn.Conv1d(in_ch, out_ch, config.kernel_size, config.stride, pad), nn.BatchNorm1d(out_ch), nn.GELU()]
            length = (length + 2 * pad - config.kernel_size) // config.stride + 1
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        self.num_tokens = length
        self.proj = nn.Linear(in_ch, hidden_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, length, hidden_dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        if config.transformer_layers:
            layer = nn.TransformerEncoderLayer(hidden_dim, config.heads, 4 * hidden_dim, dropout=0.1,
                                               batch_first=True, norm_first=True, activation="gelu")
            self.transformer = nn.TransformerEncoder(layer, config.transformer_layers, enable_nested_tensor=False)
        else:
            self.transformer = nn.Identity()
        self.norm = nn.LayerNorm(hidden_dim)
        self.missing = nn.Parameter(torch.zeros(1, 1, hidden_dim))

    def forward(self, sensor: torch.Tensor, sensor_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """sensor (B, T, C) normalised, sensor_mask (B,) bool -> tokens (B, L, D), pooled (B, D)."""
        x = sensor.transpose(1, 2)  # (B, C, T)
        if x.shape[-1] != self.window:
            x = F.interpolate(x, size=self.window, mode="linear", align_corners=True)  # (B, C, window)
        x = self.conv(x).transpose(1, 2)  # (B, L, conv_out)
        x = self.proj(x) + self.pos_embed  # (B, L, D)
        x = self.norm(self.transformer(x))  # (B, L, D)
        if sensor_mask is not None:
            x = torch.where(sensor_mask.view(-1, 1, 1), x, self.missing.expand_as(x))
        return x, x.mean(dim=1)


class StateEncoder(nn.Module):
    """(B, S) normalised robot state -> one token (B, 1, D)."""

    def __init__(self, config: StateConfig, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(config.dim, config.hidden), nn.GELU(), nn.Linear(config.hidden, hidden_dim),
                                 nn.LayerNorm(hidden_dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.mlp(state).unsqueeze(1)  # (B, 1, D)
