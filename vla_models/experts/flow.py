"""Flow-matching expert (as pi0's action expert): the shared denoiser learns a velocity field along the
straight path between noise and actions, and sampling integrates it with K Euler steps.

Time t runs from 1 (pure noise) to 0 (the action chunk): x_t = t * noise + (1 - t) * actions, whose
velocity dx_t/dt = noise - actions is the regression target. Training draws t from
0.999 * Beta(1.5, 1) + 0.001, which favours the noisy end as pi0 does (the early, coarse steps
decide the mode; the last ones only refine). Sampling starts from noise at t = 1 and takes K equal
steps x <- x - v(x, t) / K down to t = 0. The network sees t x 1000 through the same sinusoidal
embedding as the diffusion timesteps. Options: `sampler` ('euler'), `steps` (K, default
`flow_steps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Sampling, masked_mean
from .denoiser import ChunkPlan, DenoisingExpert
from .guidance import guided_velocity, with_given_rows

SAMPLERS = ("euler",)
TIME_SCALE = 1000.0  # t in [0, 1] -> the embedding's range (the diffusion timesteps' order of magnitude)


class FlowExpert(DenoisingExpert):
    options = ("sampler", "steps")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._times: dict[tuple, torch.Tensor] = {}
        self.time_distribution = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))

    # -- training ---------------------------------------------------------------------------------
    def loss(self, cond, actions, pad_mask, dim_weight, sample_weight=None):
        b = actions.shape[0]
        noise = torch.randn_like(actions)  # (B, H, A)
        t = (0.999 * self.time_distribution.sample((b,)) + 0.001).to(actions.device, actions.dtype)  # (B,)
        noisy = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        given = self.training_prefix(actions)
        if given is not None:  # the executed rows, clean, as input; not scored
            noisy, pad_mask = with_given_rows(noisy, (given, actions)), pad_mask | given
        pred = self.denoise(noisy, t * TIME_SCALE, cond, given)
        loss = masked_mean(F.mse_loss(pred, noise - actions, reduction="none"), pad_mask, dim_weight, sample_weight)
        return loss, {"flow_loss": loss.item(), "time_mean": t.mean().item()}

    # -- sampling ---------------------------------------------------------------------------------
    def resolve(self, sampler=None, steps=None):
        if sampler not in (None, *SAMPLERS):
            raise ValueError(f"sampler: the flow expert samples with one of {list(SAMPLERS)}, got {sampler!r}")
        steps = self.config.flow_steps if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 1000:
            raise ValueError(f"steps: expected Euler steps in 1..1000, got {steps!r}")
        return Sampling(f"flow-{steps}", "euler", steps, stochastic=True)

    def latency_variants(self):
        return [self.sampling(steps=k) for k in sorted({5, 10, 20, self.config.flow_steps})]

    def times(self, steps: int, device: torch.device) -> torch.Tensor:
        """The K times an Euler loop evaluates the velocity at, 1 -> 1/K (cached per device)."""
        if (steps, device) not in self._times:
            self._times[steps, device] = torch.linspace(1.0, 0.0, steps + 1, device=device)[:-1]
        return self._times[steps, device]

    def sample_from(self, cond, noise, spec, generator=None, step=None, guide=None, prefix=None):
        """guide: a ChunkGuide (real-time chunking: the velocity guided toward the previous chunk); prefix:
        (mask (B, H), actions (B, H, A)) rows given clean (an expert trained with prefix_max)."""
        step = step or self.denoise_step
        plan = ChunkPlan(self, cond, self.times(spec.steps, noise.device) * TIME_SCALE, prefix)
        x, dt = noise, 1.0 / spec.steps
        for i in range(spec.steps):
            plan.select(i)
            x = with_given_rows(x, prefix)
            if guide is not None and guide.active:
                x = x - dt * guided_velocity(guide, x, 1.0 - i * dt, lambda xg: step(xg, plan))
            else:
                x = x - dt * step(x, plan)
        return with_given_rows(x, prefix)
