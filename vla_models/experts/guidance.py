"""Real-time chunking (RTC; Black et al. 2025, "Real-Time Execution of Action Chunking Flow Policies"):
the next chunk is sampled while the robot executes the current one, as guided inpainting.

While a chunk is inferred (d control steps of delay) the robot keeps executing the previous chunk, so
the new chunk's first d actions are already decided: they are *frozen* (returned exactly as executed).
The rest is guided toward what is left of the previous chunk with a soft mask that decays to 0 over
the overlap, so the switch at row d is continuous without forcing the new chunk to copy the old plan.
Training-free: at each sampling step the expert's estimate of the clean chunk is pulled toward the
target through a vector-Jacobian product (pseudo-inverse guidance, clipped at `beta`).

The experts call `guided_velocity` (flow, Euler) and `guided_ddim` (diffusion, DDIM as an Euler step
in the equivalent flow coordinates); with zero delay no guidance is applied (a plain sample).

An expert trained with `expert.prefix_max` > 0 (training-time RTC; Black et al. 2025, "Training-Time
Action Conditioning for Efficient Real-Time Chunking") takes the frozen rows as input instead
(`given_rows`): no guidance, no backward pass, and the regression expert can chunk in real time too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

DEFAULT_BETA = 5.0  # the paper's guidance weight clip


def soft_mask(horizon: int, delay: int, overlap: int) -> torch.Tensor:
    """(H,) guidance weights: 1 for the d frozen rows, then exponentially decaying to 0 at the end of the overlap
    with the previous chunk (rows >= overlap have no target: 0). The paper's Eq. 5."""
    w = torch.zeros(horizon)
    w[:delay] = 1.0
    span = overlap - delay
    for i in range(delay, overlap):
        c = (overlap - i) / (span + 1)
        w[i] = c * (math.e ** c - 1) / (math.e - 1)
    return w


@dataclass
class ChunkGuide:
    """Inpainting target of one sampling call, in the expert's (normalised) action space.

    target (B, H, A): the previous chunk's actions for the new chunk's rows (zeros where it has none);
    weights (H,): soft_mask; delay: the frozen rows; beta: guidance clip."""

    target: torch.Tensor
    weights: torch.Tensor
    delay: int
    beta: float = DEFAULT_BETA

    @property
    def active(self) -> bool:
        return self.delay > 0

    def repeat(self, n: int) -> "ChunkGuide":
        """For n samples per observation (the expert batches them as B*n)."""
        return ChunkGuide(self.target.repeat_interleave(n, dim=0), self.weights, self.delay, self.beta)


def given_rows(guide: ChunkGuide, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time RTC: the guide's frozen rows as the expert's input: (mask (B, H) bool, True on the first `delay`
    rows; their actions (B, H, A), normalised)."""
    mask = torch.arange(horizon, device=guide.target.device)[None] < guide.delay
    return mask.expand(guide.target.shape[0], -1), guide.target


def with_given_rows(x: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """x (B, H, A) with the given rows of `prefix` (mask (B, H), actions (B, H, A)) put in place; x without one."""
    if prefix is None:
        return x
    given, rows = prefix
    return torch.where(given[..., None], rows.to(x.dtype), x)


def _pull(guide: ChunkGuide, x: torch.Tensor, estimate: Callable[[torch.Tensor], tuple]) -> tuple:
    """Run `estimate(x) -> (network output, clean chunk estimate)` with autograd on x and return (output, estimate,
    g = (target - estimate)^T diag(W) d estimate / d x), the vector-Jacobian product of the guidance."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out, clean = estimate(xg)
        error = (guide.target.to(clean.dtype) - clean) * guide.weights.to(clean)[None, :, None]
        (g,) = torch.autograd.grad(clean, xg, grad_outputs=error)
    return out.detach(), clean.detach(), g


def _weight(tau: float, beta: float) -> float:
    """min(beta, (1 - tau) / (tau r^2)), r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2); tau: 0 = noise, 1 = data."""
    if tau <= 0:
        return beta
    r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
    return beta if r2 == 0 else min(beta, (1 - tau) / (tau * r2))


def guided_velocity(guide: ChunkGuide, x: torch.Tensor, t: float, velocity: Callable) -> torch.Tensor:
    """Flow (x_t = t noise + (1 - t) actions, v = noise - actions): the guided velocity at time t."""
    v, _, g = _pull(guide, x, lambda xg: (lambda v: (v, xg - t * v))(velocity(xg)))
    return v - _weight(1.0 - t, guide.beta) * g


def guided_ddim(guide: ChunkGuide, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, noise_of: Callable,
                clip: float | None = None):
    """DDIM (x_t = a x0 + b eps): guided (x0, eps). In the flow coordinates y = x / (a + b), t_f = b / (a + b), a DDIM
    step is an Euler step of v_y = eps - x0; the guidance is applied to v_y as in `guided_velocity`, and x0, eps
    are read back from y and the guided velocity.

    clip: the sampler's clip of x0 (actions normalised to [-clip, clip]). The clean estimate of an epsilon
    network, x0 = (x - b eps) / a, divides by a, which is ~5e-4 at the first step of DDIM-10 on the cosine
    schedule: its errors and its Jacobian are amplified ~2000x there (a trained denoiser's x0 reached |x0| ~ 400
    and the guided sample blew up). So the guidance error is taken against the *clipped* estimate (what the
    sampler uses; a saturated row gives no gradient), and the guided x0 is clipped with eps read back from it,
    eps = (x - a x0) / b, so that the step stays on DDIM's line through x (clipping x0 alone after a large
    guided move left eps carrying the opposite move)."""
    bound = float("inf") if clip is None else clip
    eps, x0, g = _pull(guide, x, lambda xg: (lambda e: (e, ((xg - b * e) / a).clamp(-bound, bound)))(noise_of(xg)))
    s = a + b
    y, t_f = x / s, b / s
    v = eps - x0 - _weight(float(1.0 - t_f), guide.beta) * s * g  # d x0 / d y = s x d x0 / d x
    x0 = (y - t_f * v).clamp(-bound, bound)
    return x0, (x - a * x0) / b


@dataclass
class Inpaint:
    """What the caller knows when it asks for the next chunk during execution (dataset units, not normalised):
    previous (B, P, A) or (P, A): the current chunk's actions for the new chunk's rows 0..P-1 (from the
    observation's step on); delay: how many of them execute while this chunk is inferred (frozen, returned
    exactly); beta: the guidance clip."""

    previous: torch.Tensor
    delay: int
    beta: float = DEFAULT_BETA

    def guide(self, normalize: Callable, batch: int, horizon: int, action_dim: int) -> ChunkGuide:
        previous = torch.as_tensor(self.previous, dtype=torch.float32)
        previous = previous.expand(batch, -1, -1) if previous.ndim == 2 else previous
        overlap = min(previous.shape[1], horizon)
        if previous.shape[0] != batch or previous.shape[2] != action_dim:
            raise ValueError(f"inpaint.previous: expected (B={batch}, P, A={action_dim}) actions, got "
                             f"{tuple(previous.shape)}")
        if not 0 <= self.delay <= overlap:
            raise ValueError(f"inpaint.delay: expected 0..{overlap} (the previous chunk's rows that cover the new "
                             f"chunk), got {self.delay}")
        target = torch.zeros(batch, horizon, action_dim)
        target[:, :overlap] = normalize(previous[:, :overlap])
        return ChunkGuide(target, soft_mask(horizon, self.delay, overlap), self.delay, self.beta)

    def freeze(self, chunks: torch.Tensor) -> torch.Tensor:
        """chunks (B, N, H, A) with their first `delay` rows set to the executed actions, exactly."""
        if self.delay:
            previous = torch.as_tensor(self.previous, dtype=chunks.dtype, device=chunks.device)
            previous = previous.expand(chunks.shape[0], -1, -1) if previous.ndim == 2 else previous
            chunks = chunks.clone()
            chunks[:, :, :self.delay] = previous[:, None, :self.delay]
        return chunks
