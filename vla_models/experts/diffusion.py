"""Diffusion expert: DDPM training of the shared denoiser (noise prediction), DDIM or DDPM sampling.

The noise schedules are diffusers' (`DDPMScheduler`, cosine `squaredcos_cap_v2`, 100 steps by
default). DDIM uses `timestep_spacing="trailing"` so that k steps start at t = T-1 and end on the
clean sample (`set_alpha_to_one`): with 10 of 100 steps it visits 99, 89, ..., 9 -> 0. The seed's
DDIM started at t = 90 and never saw the noisiest part of the schedule.

The condition tokens are computed once per chunk by the policy; only the denoiser runs per step.
Options: `sampler` ('ddim' | 'ddpm'), `steps` (DDIM steps; DDPM visits every training timestep).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from .base import Sampling, masked_mean
from .denoiser import ChunkPlan, DenoisingExpert, pooled_condition
from .guidance import guided_ddim, with_given_rows

SAMPLERS = ("ddim", "ddpm")


class DiffusionExpert(DenoisingExpert):
    options = ("sampler", "steps")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        self.train_scheduler = DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                                             clip_sample=c.clip_sample, prediction_type="epsilon")
        self._inference_schedulers: dict[tuple[str, int], DDPMScheduler | DDIMScheduler] = {}
        self._timesteps: dict[tuple[str, int], list[int]] = {}
        self._timestep_tensors: dict[tuple, torch.Tensor] = {}
        self._ddim_coefficients: dict[tuple, torch.Tensor] = {}

    # -- training ---------------------------------------------------------------------------------
    def loss(self, cond, actions, pad_mask, dim_weight, sample_weight=None):
        b = actions.shape[0]
        noise = torch.randn_like(actions)  # (B, H, A)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        given = self.training_prefix(actions)
        if given is not None:  # the executed rows, clean, as input; not scored
            noisy, pad_mask = with_given_rows(noisy, (given, actions)), pad_mask | given
        pred = self.denoise(noisy, t, cond, given)
        loss = masked_mean(F.mse_loss(pred, noise, reduction="none"), pad_mask, dim_weight, sample_weight)
        return loss, {"diffusion_loss": loss.item(), "timestep_mean": t.float().mean().item()}

    # -- sampling ---------------------------------------------------------------------------------
    def resolve(self, sampler=None, steps=None):
        sampler = sampler or self.config.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: the diffusion expert samples with one of {list(SAMPLERS)}, got {sampler!r}")
        total = self.config.num_train_timesteps
        if sampler == "ddpm":  # DDPM visits every training timestep
            return Sampling(f"ddpm-{total}", "ddpm", total, stochastic=True)
        steps = self.config.ddim_steps if steps is None else steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= total:
            raise ValueError(f"steps: expected DDIM steps in 1..{total} (num_train_timesteps), got {steps!r}")
        return Sampling(f"ddim-{steps}", "ddim", steps, stochastic=True)

    def latency_variants(self):
        ddim = sorted({5, 10, 20, self.config.ddim_steps})
        return [*(self.sampling(sampler="ddim", steps=k) for k in ddim), self.sampling(sampler="ddpm")]

    def inference_scheduler(self, sampler: str, ddim_steps: int) -> DDPMScheduler | DDIMScheduler:
        """The scheduler for a sampler, its timesteps set (cached: set_timesteps is done once)."""
        spec = self.sampling(sampler=sampler, steps=ddim_steps)
        key = (spec.sampler, spec.steps)
        if key not in self._inference_schedulers:
            if spec.sampler == "ddim":
                sched = DDIMScheduler.from_config(self.train_scheduler.config, timestep_spacing="trailing",
                                                  set_alpha_to_one=True)
            else:
                sched = DDPMScheduler.from_config(self.train_scheduler.config)
            sched.set_timesteps(spec.steps)
            self._timesteps[key] = [int(t) for t in sched.timesteps]  # python ints (constants when compiled)
            self._inference_schedulers[key] = sched
        return self._inference_schedulers[key]

    def timesteps(self, sampler: str, steps: int, device: torch.device | None = None) -> list[int] | torch.Tensor:
        """The timesteps a sampler visits, first to last: python ints, or a (T,) tensor on `device`.

        The tensors are cached per device, so that a loop captured in a CUDA graph (after warm-up
        calls) copies nothing from the host.
        """
        spec = self.sampling(sampler=sampler, steps=steps)
        key = (spec.sampler, spec.steps)
        self.inference_scheduler(spec.sampler, spec.steps)  # fills self._timesteps[key] once
        if device is None:
            return self._timesteps[key]
        if (key, device) not in self._timestep_tensors:
            self._timestep_tensors[key, device] = torch.tensor(self._timesteps[key], device=device)
        return self._timestep_tensors[key, device]

    def sample_from(self, cond, noise, spec, generator=None, step=None, guide=None, prefix=None):
        """guide: a ChunkGuide (real-time chunking), DDIM only; prefix: (mask (B, H), actions (B, H, A)) rows given
        clean (an expert trained with prefix_max), any sampler."""
        if spec.sampler == "ddim":  # deterministic: the update as tensor arithmetic, no scheduler call in the loop
            return self.ddim_loop(cond, noise, spec.steps, step, guide, prefix)
        if guide is not None and guide.active:
            raise ValueError("real-time chunking guides a deterministic sampler; the diffusion expert's is ddim, got "
                             f"sampler {spec.sampler!r}")
        return self.denoise_loop(cond, noise, spec.sampler, spec.steps, generator, step, prefix)

    def ddim_coefficients(self, steps: int, device: torch.device) -> torch.Tensor:
        """(steps, 4) float32 on `device`: per visited timestep sqrt(alpha_t), sqrt(1 - alpha_t) and the same
        of the timestep it steps to (alpha = 1 past the last), taken once per schedule from diffusers'
        DDIMScheduler (its alphas_cumprod, timestep spacing and final alpha), cached per device."""
        if (steps, device) not in self._ddim_coefficients:
            sched = self.inference_scheduler("ddim", steps)
            stride = self.config.num_train_timesteps // steps
            rows = []
            for t in self.timesteps("ddim", steps):
                alpha = float(sched.alphas_cumprod[t])
                alpha_prev = float(sched.alphas_cumprod[t - stride]) if t - stride >= 0 else float(sched.final_alpha_cumprod)
                rows.append([alpha ** 0.5, (1 - alpha) ** 0.5, alpha_prev ** 0.5, (1 - alpha_prev) ** 0.5])
            self._ddim_coefficients[steps, device] = torch.tensor(rows, dtype=torch.float32, device=device)
        return self._ddim_coefficients[steps, device]

    def ddim_update(self, x: torch.Tensor, eps: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        """DDIM (eta 0) from x_t to x_prev given the predicted noise: diffusers' `DDIMScheduler.step` for
        epsilon prediction, with x0 clipped as configured. coefficients: one row of `ddim_coefficients`."""
        a, b, a_prev, b_prev = coefficients.unbind(-1)
        x0 = (x - b * eps) / a
        if self.config.clip_sample:
            bound = self.train_scheduler.config.clip_sample_range
            x0 = x0.clamp(-bound, bound)
        return a_prev * x0 + b_prev * eps

    def ddim_loop(self, cond, x: torch.Tensor, steps: int, step=None, guide=None, prefix=None) -> torch.Tensor:
        """The whole DDIM loop with its coefficients as device tensors: no Python scheduler and no host
        copy inside, so a CUDA graph captures it whole (equal to `denoise_loop(..., 'ddim', ...)`).
        guide: a ChunkGuide (real-time chunking: x0 and the noise guided toward the previous chunk); prefix:
        (mask, actions) rows given clean at every step (training-time RTC)."""
        step = step or self.denoise_step
        coefficients = self.ddim_coefficients(steps, x.device)
        plan = ChunkPlan(self, cond, self.timesteps("ddim", steps, x.device), prefix)
        for i in range(steps):
            plan.select(i)
            x = with_given_rows(x, prefix)
            if guide is not None and guide.active:
                a, b, a_prev, b_prev = coefficients[i].unbind(-1)
                clip = self.train_scheduler.config.clip_sample_range if self.config.clip_sample else None
                x0, eps = guided_ddim(guide, x, a, b, lambda xg: step(xg, plan), clip)
                x = a_prev * x0 + b_prev * eps
            else:
                x = self.ddim_update(x, step(x, plan), coefficients[i])
        return with_given_rows(x, prefix)

    def denoise_loop(self, cond, x: torch.Tensor, sampler: str, steps: int,
                     generator: torch.Generator | None = None, step=None, prefix=None) -> torch.Tensor:
        """Run the sampler from noise x (B, H, A) to a clean chunk. Shapes are fixed throughout (CUDA-graph safe).

        step: a stand-in for `self.denoise_step` with its signature (e.g. a torch.compile'd one).
        """
        step = step or self.denoise_step
        sched = self.inference_scheduler(sampler, steps)
        plan = ChunkPlan(self, cond, self.timesteps(sampler, steps, x.device), prefix)
        for i, t in enumerate(self.timesteps(sampler, steps)):
            plan.select(i)
            x = with_given_rows(x, prefix)
            x = sched.step(step(x, plan), t, x, generator=generator).prev_sample
        return with_given_rows(x, prefix)


__all__ = ["ChunkPlan", "DiffusionExpert", "pooled_condition"]
