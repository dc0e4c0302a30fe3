"""Regression expert: learned positional queries into a transformer decoder over the condition.

One forward pass predicts the whole chunk. The queries are parameters, never data: no part of the
target window is ever an input (the seed fed the ground-truth chunk in as `z_chunk`), except, when
trained with `expert.prefix_max` (training-time RTC), the rows that execute while the chunk is inferred:
a random 0..prefix_max of them in training (not scored), the executed ones at real-time chunking.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..fusion import Condition
from .base import ActionExpert, masked_mean
from .guidance import with_given_rows


class RegressionExpert(ActionExpert):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queries = nn.Parameter(torch.zeros(1, self.horizon, self.hidden_dim))
        nn.init.normal_(self.queries, std=0.02)
        self.decoder = self._decoder()
        self.head = nn.Sequential(nn.LayerNorm(self.hidden_dim), nn.Linear(self.hidden_dim, self.action_dim))
        if self.takes_prefix:  # training-time RTC: the given rows' actions enter their queries
            self.action_in = nn.Linear(self.action_dim, self.hidden_dim)
            self.prefix_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
            nn.init.normal_(self.prefix_embed, std=0.02)

    def predict(self, cond: Condition, prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Condition (B, L, D) -> normalised chunk (B, H, A). prefix: (mask (B, H) bool, actions (B, H, A)), rows
        given as input (training-time RTC); their predictions are returned as given."""
        queries = self.queries.expand(cond.tokens.shape[0], -1, -1)  # (B, H, D)
        if prefix is not None:
            given, rows = prefix
            marks = given[..., None].to(queries.dtype)
            queries = queries + marks * (self.action_in(rows.to(queries.dtype)) + self.prefix_embed)
        x = self.decoder(queries, cond.tokens, memory_key_padding_mask=~cond.mask)  # (B, H, D)
        return with_given_rows(self.head(x), prefix)

    def loss(self, cond, actions, pad_mask, dim_weight, sample_weight=None):
        given = self.training_prefix(actions)
        pred = self.predict(cond, None if given is None else (given, actions))
        if given is not None:  # the given rows are not scored
            pad_mask = pad_mask | given
        err = F.mse_loss(pred, actions, reduction="none") if self.config.loss == "mse" else (pred - actions).abs()
        loss = masked_mean(err, pad_mask, dim_weight, sample_weight)
        return loss, {f"{self.config.loss}_loss": loss.item()}

    def sample_from(self, cond, noise, spec, generator=None, step=None, prefix=None):
        return (step or self.predict)(cond) if prefix is None else self.predict(cond, prefix)

    def network_step(self):
        return self.predict
