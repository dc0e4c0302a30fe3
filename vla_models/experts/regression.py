"""Regression expert: learned positional queries into a transformer decoder over the condition.

One forward pass predicts the whole chunk. The queries are parameters, never data: no part of the
target window is ever an input (the seed fed the ground-truth chunk in as `z_chunk`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..fusion import Condition
from .base import ActionExpert, masked_mean


class RegressionExpert(ActionExpert):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queries = nn.Parameter(torch.zeros(1, self.horizon, self.hidden_dim))
        nn.init.normal_(self.queries, std=0.02)
        self.decoder = self._decoder()
        self.head = nn.Sequential(nn.LayerNorm(self.hidden_dim), nn.Linear(self.hidden_dim, self.action_dim))

    def predict(self, cond: Condition) -> torch.Tensor:
        """Condition (B, L, D) -> normalised chunk (B, H, A)."""
        queries = self.queries.expand(cond.tokens.shape[0], -1, -1)  # (B, H, D)
        x = self.decoder(queries, cond.tokens, memory_key_padding_mask=~cond.mask)  # (B, H, D)
        return self.head(x)

    def loss(self, cond, actions, pad_mask, dim_weight, sample_weight=None):
        pred = self.predict(cond)
        err = F.mse_loss(pred, actions, reduction="none") if self.config.loss == "mse" else (pred - actions).abs()
        loss = masked_mean(err, pad_mask, dim_weight, sample_weight)
        return loss, {f"{self.config.loss}_loss": loss.item()}

    def sample_from(self, cond, noise, spec, generator=None, step=None):
        return (step or self.predict)(cond)

    def network_step(self):
        return self.predict
