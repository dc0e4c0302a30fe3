"""The network the iterative experts share (diffusion, flow): a transformer over the chunk's action
tokens that, given a noisy chunk, a noise level and the condition, predicts what the expert's
objective asks for (the noise for DDPM, the velocity for flow matching).

The condition enters every action token directly (as FiLM conditioning does in Diffusion Policy's
U-Net) and through cross-attention to [time token, condition tokens]: with a cross-attention path
alone it is learnt far more slowly. A sampling loop computes the per-chunk constants once (`ChunkPlan`).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from ..fusion import Condition
from .base import ActionExpert, MemoryKV


class DenoisingExpert(ActionExpert):
    """Network and per-chunk plan of an iterative expert; subclasses bring the objective and the loop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        c, d = self.config, self.hidden_dim
        self.action_in = nn.Linear(self.action_dim, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.horizon, d))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.time_mlp = nn.Sequential(nn.Linear(c.timestep_embed_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_in = nn.Linear(d, d)
        self.decoder = self._decoder()
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, self.action_dim))
        if self.takes_prefix:  # training-time RTC: marks the rows given clean (the executed prefix)
            self.prefix_embed = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.normal_(self.prefix_embed, std=0.02)

    def prefix_tokens(self, given: torch.Tensor | None) -> torch.Tensor | float:
        """(B, H, D) marks of the given rows (mask (B, H) bool), or 0."""
        return 0.0 if given is None else given[..., None].to(self.prefix_embed.dtype) * self.prefix_embed

    def time_tokens(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Noise levels (N,) (integer DDPM timesteps, or flow time x 1000) -> their tokens (N, D)."""
        t_emb = get_timestep_embedding(timesteps, self.config.timestep_embed_dim, flip_sin_to_cos=True,
                                       downscale_freq_shift=0)  # (N, 128)
        return self.time_mlp(t_emb.to(dtype))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Condition,
                given: torch.Tensor | None = None) -> torch.Tensor:
        """noisy actions (B, H, A), noise levels (B,), condition (B, L, D) -> the network's output (B, H, A).
        given: (B, H) bool, rows that hold clean actions (training-time RTC), marked by `prefix_embed`.

        The training path; sampling runs the same arithmetic as `denoise_step` on a `ChunkPlan`.
        """
        t_tok = self.time_tokens(timesteps, noisy.dtype).unsqueeze(1)  # (B, 1, D)
        x = self.action_in(noisy) + self.pos_embed + t_tok + self.cond_in(pooled_condition(cond))  # (B, H, D)
        x = x + self.prefix_tokens(given)
        memory_tokens = torch.cat([t_tok, cond.tokens], dim=1)  # (B, 1+L, D)
        memory_mask = torch.cat([torch.ones_like(cond.mask[:, :1]), cond.mask], dim=1)  # (B, 1+L)
        x = self.decoder(x, memory_tokens, memory_key_padding_mask=~memory_mask)  # (B, H, D)
        return self.head(x)

    def denoise_step(self, noisy: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """`denoise` at the plan's selected noise level: noisy (B, H, A) -> output (B, H, A).

        The network runs in its weights' dtype; the output comes back in the sample's (float32 samples
        with bfloat16 weights: the sampler's arithmetic keeps full precision).
        """
        dtype = plan.base.dtype
        x = self.action_in(noisy if noisy.dtype == dtype else noisy.to(dtype)) + plan.base + plan.time_token
        out = self.head(plan.memory.decode(x))  # (B, H, A)
        return out if out.dtype == noisy.dtype else out.to(noisy.dtype)

    def network_step(self):
        return self.denoise_step


class ChunkPlan:
    """What a sampling loop computes once per chunk, so that a step runs only the decoder over its tokens.

    Per chunk: the condition's cross-attention keys/values, the action tokens' constant part (position
    embedding + projected pooled condition) and, for every noise level the sampler visits, its token and
    that token's keys/values. `select(i)` puts level i's in place (two copies); `denoise_step` reads
    them. All buffers keep their addresses, so a compiled step runs the same code at every level.
    """

    def __init__(self, expert: DenoisingExpert, cond: Condition, timesteps: torch.Tensor,
                 prefix: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """cond (B, L, D); timesteps (T,), in the order they will be selected; prefix: (mask (B, H), actions) rows
        given clean (training-time RTC), marked in the action tokens."""
        self.memory = MemoryKV(expert.decoder, cond.tokens, cond.mask, extra=1)
        self.base = expert.pos_embed + expert.cond_in(pooled_condition(cond))  # (B, H, D)
        if prefix is not None:
            self.base = self.base + expert.prefix_tokens(prefix[0])
        self.time_tokens = expert.time_tokens(timesteps, cond.tokens.dtype)[:, None, None]  # (T, 1, 1, D)
        self.time_keys_values = self.memory.project(self.time_tokens[:, 0])  # (layers, 2, T, heads, 1, hd)
        self.time_token = torch.empty_like(self.time_tokens[0])  # (1, 1, D): the selected level's

    def select(self, index: int) -> None:
        self.time_token.copy_(self.time_tokens[index])
        self.memory.set_extra(self.time_keys_values[:, :, index:index + 1])


def pooled_condition(cond: Condition) -> torch.Tensor:
    """Mean of the valid condition tokens (B, 1, D)."""
    weights = cond.mask.unsqueeze(-1).to(cond.tokens.dtype)
    return (cond.tokens * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
