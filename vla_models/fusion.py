"""Fusion of the modality features into condition tokens for the action expert.

Every modality (vision-language, sensor, state) arrives as `Features` already projected to
`hidden_dim`. Modes:
- `concat`: the pooled vectors are concatenated and mixed by an MLP -> 1 token.
- `gated`: a learned sigmoid gate per modality weighs the pooled vectors, summed -> 1 token.
- `cross_attention`: one query per modality (its pooled vector) attends over all tokens of all
  modalities -> one token per modality.
- `none`: no mixing; all tokens of all modalities are passed through (the expert attends to them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import FusionConfig


@dataclass
class Features:
    """One modality's encoding: tokens (B, L, D), valid-token mask (B, L) bool, pooled (B, D)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @staticmethod
    def from_tokens(tokens: torch.Tensor, pooled: torch.Tensor | None = None) -> "Features":
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Features(tokens, mask, tokens.mean(1) if pooled is None else pooled)


@dataclass
class Condition:
    """What the expert is conditioned on: tokens (B, L, D) and a valid-token mask (B, L) bool."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def repeat_interleave(self, n: int) -> "Condition":
        """(B, L, D) -> (B*n, L, D), each row repeated n times in place (for n samples per observation)."""
        if n == 1:
            return self
        return Condition(self.tokens.repeat_interleave(n, dim=0), self.mask.repeat_interleave(n, dim=0))


class Fusion(nn.Module):
    def __init__(self, config: FusionConfig, num_modalities: int, hidden_dim: int) -> None:
        super().__init__()
        self.mode = config.mode
        m, d = num_modalities, hidden_dim
        if self.mode == "concat":
            self.mlp = nn.Sequential(nn.Linear(m * d, d), nn.GELU(), nn.Linear(d, d), nn.LayerNorm(d))
        elif self.mode == "gated":
            self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(m))
            self.gate = nn.Linear(m * d, m)
            self.out = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        elif self.mode == "cross_attention":
            self.attn = nn.MultiheadAttention(d, config.heads, batch_first=True)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.modality_embed = nn.Parameter(torch.zeros(m, d))
        nn.init.normal_(self.modality_embed, std=0.02)

    def forward(self, features: list[Features]) -> Condition:
        pooled = [f.pooled + self.modality_embed[i] for i, f in enumerate(features)]  # M x (B, D)
        if self.mode == "concat":
            token = self.mlp(torch.cat(pooled, dim=-1)).unsqueeze(1)  # (B, 1, D)
            return _single(token)
        if self.mode == "gated":
            gates = torch.sigmoid(self.gate(torch.cat(pooled, dim=-1)))  # (B, M)
            mixed = sum(gates[:, i:i + 1] * norm(p) for i, (norm, p) in enumerate(zip(self.norms, pooled)))  # (B, D)
            return _single(self.out(mixed).unsqueeze(1))
        tokens = torch.cat([f.tokens + self.modality_embed[i] for i, f in enumerate(features)], dim=1)  # (B, L, D)
        mask = torch.cat([f.mask for f in features], dim=1)  # (B, L)
        if self.mode == "none":
            return Condition(tokens, mask)
        queries = torch.stack(pooled, dim=1)  # (B, M, D)
        attended, _ = self.attn(queries, tokens, tokens, key_padding_mask=~mask, need_weights=False)
        x = self.norm1(queries + attended)
        x = self.norm2(x + self.ffn(x))  # (B, M, D)
        return Condition(x, torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))


def _single(token: torch.Tensor) -> Condition:
    return Condition(token, torch.ones(token.shape[:2], dtype=torch.bool, device=token.device))
