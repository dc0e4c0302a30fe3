"""The action-expert interface: exactly two methods, `loss` and `sample` (as octo's action heads).

Experts work in normalised action space; the policy normalises targets and un-normalises samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
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


class MemoryKV:
    """Cross-attention keys and values of fixed condition tokens, computed once for a whole chunk.

    A denoising loop attends to the same condition at every step; projecting its L tokens to keys
    and values per step dominates the step cost when L is large (hundreds of backbone tokens). With
    this cache a step projects only its own tokens (and `extra` memory tokens that change per step).
    The arithmetic is that of `nn.TransformerDecoder` (norm_first, GELU, no final norm).
    """

    def __init__(self, decoder: nn.TransformerDecoder, memory: torch.Tensor, memory_mask: torch.Tensor) -> None:
        """memory (B, L, D), memory_mask (B, L) bool (True = valid)."""
        self.decoder = decoder
        self.mask = memory_mask
        self.keys_values = [self._project(layer.multihead_attn, memory) for layer in decoder.layers]

    @staticmethod
    def _project(attn: nn.MultiheadAttention, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = attn.embed_dim
        w, b = attn.in_proj_weight, attn.in_proj_bias
        k = F.linear(tokens, w[d:2 * d], b[d:2 * d])
        v = F.linear(tokens, w[2 * d:], b[2 * d:])
        return _heads(k, attn.num_heads), _heads(v, attn.num_heads)  # (B, heads, L, hd)

    def decode(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        """x (B, H, D) through the decoder; memory = [extra (B, E, D), cached condition (B, L, D)]."""
        b, e = extra.shape[:2]
        attend = torch.cat([self.mask.new_ones(b, e), self.mask], dim=1)[:, None, None, :]  # (B, 1, 1, E+L)
        for layer, (k_cond, v_cond) in zip(self.decoder.layers, self.keys_values):
            h = layer.norm1(x)
            x = x + layer.self_attn(h, h, h, need_weights=False)[0]
            attn = layer.multihead_attn
            d, heads = attn.embed_dim, attn.num_heads
            q = _heads(F.linear(layer.norm2(x), attn.in_proj_weight[:d], attn.in_proj_bias[:d]), heads)
            k_extra, v_extra = self._project(attn, extra)
            out = F.scaled_dot_product_attention(q, torch.cat([k_extra, k_cond], 2), torch.cat([v_extra, v_cond], 2),
                                                 attn_mask=attend)  # (B, heads, H, hd)
            x = x + attn.out_proj(out.transpose(1, 2).reshape(x.shape))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return x


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    b, length, d = t.shape
    return t.view(b, length, heads, d // heads).transpose(1, 2)


def masked_mean(per_element: torch.Tensor, pad_mask: torch.Tensor, dim_weight: torch.Tensor) -> torch.Tensor:
    """Mean of (B, H, A) errors over valid steps and weighted dimensions."""
    weight = (~pad_mask).unsqueeze(-1).to(per_element.dtype) * dim_weight.to(per_element.dtype)  # (B, H, A)
    return (per_element * weight).sum() / weight.sum().clamp(min=1.0)
