"""The action-expert interface: exactly two methods, `loss` and `sample` (as octo's action heads).

Experts work in normalised action space; the policy normalises targets and un-normalises samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from ..config import ExpertConfig
from ..fusion import Condition


class ActionExpert(nn.Module, ABC):
    def __init__(self, config: ExpertConfig, hidden_dim: int, horizon: int, action_dim: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_dim = hidden_dim
        self.horizon = horizon
        self.action_dim = action_dim

    @abstractmethod
    def loss(self, cond: Condition, actions: torch.Tensor, pad_mask: torch.Tensor,
             dim_weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss.

        cond: condition tokens (B, L, D); actions: normalised targets (B, H, A); pad_mask (B, H) bool,
        True where the chunk runs past the episode end (excluded); dim_weight (A,) float, 0 for
        constant dimensions. Returns a scalar loss and float logs.
        """

    @abstractmethod
    def sample(self, cond: Condition, num_samples: int = 1, generator: torch.Generator | None = None,
               **overrides) -> torch.Tensor:
        """Predict normalised chunks (B, num_samples, H, A) from condition tokens (B, L, D)."""

    def _decoder(self) -> nn.TransformerDecoder:
        c = self.config
        layer = nn.TransformerDecoderLayer(self.hidden_dim, c.heads, c.feedforward, c.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        return nn.TransformerDecoder(layer, c.layers)


def masked_mean(per_element: torch.Tensor, pad_mask: torch.Tensor, dim_weight: torch.Tensor) -> torch.Tensor:
    """Mean of (B, H, A) errors over valid steps and weighted dimensions."""
    weight = (~pad_mask).unsqueeze(-1).to(per_element.dtype) * dim_weight.to(per_element.dtype)  # (B, H, A)
    return (per_element * weight).sum() / weight.sum().clamp(min=1.0)
