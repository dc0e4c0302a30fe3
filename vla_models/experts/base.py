"""The action-expert interface (as octo's action heads): `loss` for training, and sampling that the
expert resolves itself.

Experts work in normalised action space; the policy normalises targets and un-normalises samples.
What a sampling option means is decided here and nowhere else: `sampling(**options)` turns the
options a caller has (`sampler`, `steps`) into a `Sampling` (sampler, network evaluations, label);
`sample_from(cond, noise, spec)` runs it from given noise. The policy, the fast runner, the CLI, the
node and the report only pass options through and read the `Sampling`, so a new expert is one file
plus one registry entry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ExpertConfig
from ..fusion import Condition

OPTIONS = ("sampler", "steps")  # every sampling option any expert takes; `ddim_steps` is the older name of steps


@dataclass(frozen=True)
class Sampling:
    """An expert's resolved sampling: what a chunk costs and how reports name it."""

    label: str  # "regression", "ddim-10", "ddpm-100", "flow-10"
    sampler: str = ""  # "" = one forward pass
    steps: int = 0  # network evaluations per chunk (0 = one pass)
    stochastic: bool = False  # starts from noise: chunks depend on the seed (report pooled seeds)


def _with_steps(options: dict) -> dict:
    """`ddim_steps` (the older name) as `steps`."""
    options = dict(options)
    if "ddim_steps" in options:
        options.setdefault("steps", options.pop("ddim_steps"))
    return options


class ActionExpert(nn.Module, ABC):
    options: tuple[str, ...] = ()  # the sampling options this expert takes (some of OPTIONS)

    def __init__(self, config: ExpertConfig, hidden_dim: int, horizon: int, action_dim: int) -> None:
        super().__init__()
        self.config = config
        self.hidden_dim = hidden_dim
        self.horizon = horizon
        self.action_dim = action_dim

    @abstractmethod
    def loss(self, cond: Condition, actions: torch.Tensor, pad_mask: torch.Tensor,
             dim_weight: torch.Tensor, sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss.

        cond: condition tokens (B, L, D); actions: normalised targets (B, H, A); pad_mask (B, H) bool,
        True where the chunk runs past the episode end (excluded); dim_weight (A,) float, 0 for
        constant dimensions; sample_weight (B,) float or None. Returns a scalar loss and float logs.
        """

    # -- sampling ----------------------------------------------------------------------------------
    def sampling(self, **options) -> Sampling:
        """Options (`sampler`, `steps`; None = the config's) -> the resolved Sampling. An option this
        expert does not take, or a value it does not accept, is an error naming what it expected."""
        options = _with_steps(options)
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown sampling option(s) {sorted(unknown)}; expected some of {list(OPTIONS)}")
        given = {k: v for k, v in options.items() if v not in (None, "")}
        foreign = set(given) - set(self.options)
        if foreign:
            raise TypeError(f"the {self.config.type} expert takes no {sorted(foreign)} option(s); it takes "
                            f"{list(self.options) or 'none'}")
        return self.resolve(**given)

    def resolve(self, sampler: str | None = None, steps: int | None = None) -> Sampling:
        """The options this expert takes (validated by `sampling`) -> its Sampling."""
        return Sampling(self.config.type)

    def options_for(self, **options) -> dict:
        """The options of `options` that this expert takes, unset ones dropped (a caller holding options
        for several experts, e.g. the node's parameters, hands each expert its own), checked by
        `sampling`: a value it does not accept raises there, naming what it expected."""
        kept = {k: v for k, v in _with_steps(options).items() if k in self.options and v not in (None, "")}
        self.sampling(**kept)
        return kept

    def latency_variants(self) -> list[Sampling]:
        """The samplings the report times (the default first)."""
        return [self.sampling()]

    @property
    def takes_prefix(self) -> bool:
        """Trained with given rows (training-time RTC): real-time chunking conditions on the executed rows."""
        return self.config.prefix_max > 0

    def training_prefix(self, actions: torch.Tensor) -> torch.Tensor | None:
        """(B, H) bool, True on each training chunk's first d ~ U{0..prefix_max} rows (given as input, not
        scored); None when the expert is not trained so."""
        if not self.takes_prefix:
            return None
        d = torch.randint(0, self.config.prefix_max + 1, (actions.shape[0],), device=actions.device)
        return torch.arange(self.horizon, device=actions.device)[None] < d[:, None]

    def sample(self, cond: Condition, num_samples: int = 1, generator: torch.Generator | None = None,
               guide=None, **options) -> torch.Tensor:
        """Normalised chunks (B, num_samples, H, A) from condition tokens (B, L, D). guide: a ChunkGuide (real-time
        chunking): an expert trained with `prefix_max` takes its frozen rows as input (`prefix`); the experts that
        sample from noise otherwise inpaint toward the previous chunk (`guide`)."""
        from .guidance import given_rows

        spec = self.sampling(**options)
        b = cond.tokens.shape[0]
        active = guide is not None and guide.active
        if active and self.takes_prefix and guide.delay > self.config.prefix_max:
            raise ValueError(f"real-time chunking with {guide.delay} frozen rows: this {self.config.type} expert was "
                             f"trained with up to expert.prefix_max={self.config.prefix_max} given rows")
        if not spec.stochastic:  # one chunk per observation: every "sample" is the same
            if active and not self.takes_prefix:
                raise ValueError(f"real-time chunking guides an iterative sampler; the {self.config.type} expert "
                                 "predicts a chunk in one pass (use chunk_execution switch or ensemble, or train it "
                                 "with expert.prefix_max)")
            extra = {"prefix": given_rows(guide, self.horizon)} if active else {}
            return self.sample_from(cond, None, spec, **extra).unsqueeze(1).expand(-1, num_samples, -1, -1)
        cond = cond.repeat_interleave(num_samples)  # (B*N, L, D): all samples in one batched call
        noise = self.initial_noise(b * num_samples, generator, cond.tokens)
        extra = {}
        if active:
            guide = guide.repeat(num_samples)
            extra = {"prefix": given_rows(guide, self.horizon)} if self.takes_prefix else {"guide": guide}
        return self.sample_from(cond, noise, spec, generator, **extra).view(b, num_samples, self.horizon,
                                                                             self.action_dim)

    def initial_noise(self, n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
        """(n, H, A) standard normal from `generator` (a CPU generator: the same draws on any device)."""
        noise = torch.randn((n, self.horizon, self.action_dim), generator=generator,
                            device=generator.device if generator is not None else like.device)
        return noise.to(device=like.device, dtype=like.dtype)

    @abstractmethod
    def sample_from(self, cond: Condition, noise: torch.Tensor | None, spec: Sampling,
                    generator: torch.Generator | None = None, step: Callable | None = None) -> torch.Tensor:
        """Chunks (B, H, A) from condition (B, L, D) and, for a stochastic spec, noise (B, H, A). Shapes stay
        fixed throughout (CUDA-graph safe). step: a stand-in for `network_step()` (e.g. a compiled one)."""

    @abstractmethod
    def network_step(self) -> Callable:
        """The network one sampling evaluation runs (what the fast runner compiles)."""

    def _decoder(self) -> nn.TransformerDecoder:
        c = self.config
        layer = nn.TransformerDecoderLayer(self.hidden_dim, c.heads, c.feedforward, c.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        return nn.TransformerDecoder(layer, c.layers)


class MemoryKV:
    """Cross-attention keys and values of a denoising loop's memory, laid out once for a whole chunk.

    The memory is [E per-step tokens, L condition tokens]. A denoising loop attends to the same
    condition at every step: its keys and values are projected once, into slots E.. of one buffer
    (layers, 2, B, heads, E+L, head_dim); a step only writes the per-step tokens' keys and values
    (projected ahead of the loop with `project`) into slots 0..E-1, one copy for every layer, and
    runs `decode`. The arithmetic is that of `nn.TransformerDecoder` (norm_first, GELU, no final norm).
    """

    def __init__(self, decoder: nn.TransformerDecoder, memory: torch.Tensor, memory_mask: torch.Tensor,
                 extra: int = 1) -> None:
        """memory (B, L, D), memory_mask (B, L) bool (True = valid), extra: E per-step tokens in front."""
        self.decoder, self.extra = decoder, extra
        attn = decoder.layers[0].multihead_attn
        b, length, d = memory.shape
        self.keys_values = memory.new_zeros(len(decoder.layers), 2, b, attn.num_heads, extra + length,
                                            d // attn.num_heads)
        self.keys_values[:, :, :, :, extra:] = self.project(memory)
        valid = torch.cat([memory_mask.new_ones(b, extra), memory_mask], dim=1)
        self.attend = valid[:, None, None, :]  # (B, 1, 1, E+L)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Every layer's cross-attention keys and values of tokens (N, T, D): (layers, 2, N, heads, T, head_dim)."""
        out = []
        for layer in self.decoder.layers:
            attn = layer.multihead_attn
            d, w, b = attn.embed_dim, attn.in_proj_weight, attn.in_proj_bias
            out.append(torch.stack([_heads(F.linear(tokens, w[d:2 * d], b[d:2 * d]), attn.num_heads),
                                    _heads(F.linear(tokens, w[2 * d:], b[2 * d:]), attn.num_heads)]))
        return torch.stack(out)

    def set_extra(self, keys_values: torch.Tensor) -> None:
        """The per-step tokens' keys and values (layers, 2, 1 or B, heads, E, head_dim), from `project`."""
        self.keys_values[:, :, :, :, :self.extra].copy_(keys_values)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, D) through the decoder, attending to the memory as it now stands."""
        for layer, (keys, values) in zip(self.decoder.layers, self.keys_values):
            h = layer.norm1(x)
            x = x + layer.self_attn(h, h, h, need_weights=False)[0]
            attn = layer.multihead_attn
            d = attn.embed_dim
            q = _heads(F.linear(layer.norm2(x), attn.in_proj_weight[:d], attn.in_proj_bias[:d]), attn.num_heads)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=self.attend)  # (B, heads, H, hd)
            x = x + attn.out_proj(out.transpose(1, 2).reshape(x.shape))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return x


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, heads, L, D / heads)."""
    b, length, d = t.shape
    return t.view(b, length, heads, d // heads).transpose(1, 2)


def masked_mean(per_element: torch.Tensor, pad_mask: torch.Tensor, dim_weight: torch.Tensor,
                sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of (B, H, A) errors over valid steps, weighted dimensions and (B,) sample weights."""
    weight = (~pad_mask).unsqueeze(-1).to(per_element.dtype) * dim_weight.to(per_element.dtype)  # (B, H, A)
    if sample_weight is not None:
        weight = weight * sample_weight.to(per_element.dtype)[:, None, None]
    return (per_element * weight).sum() / weight.sum().clamp(min=1e-6)
