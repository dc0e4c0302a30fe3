"""Diffusion expert: a transformer denoiser trained with DDPM, sampled with DDIM or DDPM.

The noise schedules are diffusers' (`DDPMScheduler`, cosine `squaredcos_cap_v2`, 100 steps by
default). DDIM uses `timestep_spacing="trailing"` so that k steps start at t = T-1 and end on the
clean sample (`set_alpha_to_one`): with 10 of 100 steps it visits 99, 89, ..., 9 -> 0. The seed's
DDIM started at t = 90 and never saw the noisiest part of the schedule.

The condition tokens are computed once per chunk by the policy; only this denoiser runs per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from ..fusion import Condition
from .base import ActionExpert, MemoryKV, masked_mean

SAMPLER_OPTIONS = ("sampler", "ddim_steps")


class DiffusionExpert(ActionExpert):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        c, d = self.config, self.hidden_dim
        self.train_scheduler = DDPMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                                             clip_sample=c.clip_sample, prediction_type="epsilon")
        self._inference_schedulers: dict[tuple[str, int], DDPMScheduler | DDIMScheduler] = {}
        self._timesteps: dict[tuple[str, int], list[int]] = {}
        self.action_in = nn.Linear(self.action_dim, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.horizon, d))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.time_mlp = nn.Sequential(nn.Linear(c.timestep_embed_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_in = nn.Linear(d, d)
        self.decoder = self._decoder()
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, self.action_dim))

    # -- the denoiser -----------------------------------------------------------------------------
    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Condition,
                memory: MemoryKV | None = None) -> torch.Tensor:
        """noisy actions (B, H, A), timesteps (B,) int, condition (B, L, D) -> predicted noise (B, H, A).

        memory: the condition's cross-attention keys/values, precomputed once per chunk (sampling).
        """
        t_emb = get_timestep_embedding(timesteps, self.config.timestep_embed_dim, flip_sin_to_cos=True,
                                       downscale_freq_shift=0)  # (B, 128)
        t_tok = self.time_mlp(t_emb.to(noisy.dtype)).unsqueeze(1)  # (B, 1, D)
        # The condition enters every action token directly (as FiLM conditioning does in Diffusion Policy's
        # U-Net) and through cross-attention: with a cross-attention path alone it is learnt far more slowly.
        x = self.action_in(noisy) + self.pos_embed + t_tok + self.cond_in(pooled_condition(cond))  # (B, H, D)
        if memory is not None:
            return self.head(memory.decode(x, t_tok))
        memory_tokens = torch.cat([t_tok, cond.tokens], dim=1)  # (B, 1+L, D)
        memory_mask = torch.cat([torch.ones_like(cond.mask[:, :1]), cond.mask], dim=1)  # (B, 1+L)
        x = self.decoder(x, memory_tokens, memory_key_padding_mask=~memory_mask)  # (B, H, D)
        return self.head(x)

    # -- training ---------------------------------------------------------------------------------
    def loss(self, cond, actions, pad_mask, dim_weight):
        b = actions.shape[0]
        noise = torch.randn_like(actions)  # (B, H, A)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        pred = self.denoise(noisy, t, cond)
        loss = masked_mean(F.mse_loss(pred, noise, reduction="none"), pad_mask, dim_weight)
        return loss, {"diffusion_loss": loss.item(), "timestep_mean": t.float().mean().item()}

    # -- sampling ---------------------------------------------------------------------------------
    def inference_scheduler(self, sampler: str, ddim_steps: int) -> DDPMScheduler | DDIMScheduler:
        """The scheduler for a sampler, its timesteps set (cached: set_timesteps is done once)."""
        key = (sampler, ddim_steps if sampler == "ddim" else self.config.num_train_timesteps)
        if key not in self._inference_schedulers:
            if sampler == "ddim":
                if not 1 <= ddim_steps <= self.config.num_train_timesteps:
                    raise ValueError(f"ddim_steps: expected 1..{self.config.num_train_timesteps}, got {ddim_steps}")
                sched = DDIMScheduler.from_config(self.train_scheduler.config, timestep_spacing="trailing",
                                                  set_alpha_to_one=True)
            elif sampler == "ddpm":
                sched = DDPMScheduler.from_config(self.train_scheduler.config)
            else:
                raise ValueError(f"sampler: expected one of ['ddim', 'ddpm'], got {sampler!r}")
            sched.set_timesteps(key[1])
            self._timesteps[key] = [int(t) for t in sched.timesteps]  # python ints (constants when compiled)
            self._inference_schedulers[key] = sched
        return self._inference_schedulers[key]

    def sample(self, cond, num_samples=1, generator=None, **overrides):
        unknown = set(overrides) - set(SAMPLER_OPTIONS)
        if unknown:
            raise TypeError(f"unknown sampler option(s) {sorted(unknown)}; expected some of {list(SAMPLER_OPTIONS)}")
        sampler = overrides.get("sampler") or self.config.sampler
        steps = int(overrides.get("ddim_steps") or self.config.ddim_steps)
        sched = self.inference_scheduler(sampler, steps)
        b = cond.tokens.shape[0]
        cond = cond.repeat_interleave(num_samples)  # (B*N, L, D): all samples in one batched call
        shape = (b * num_samples, self.horizon, self.action_dim)
        x = torch.randn(shape, generator=generator, device=generator.device if generator else cond.tokens.device)
        x = x.to(device=cond.tokens.device, dtype=cond.tokens.dtype)  # (B*N, H, A)
        return self.denoise_loop(cond, x, sampler, steps, generator).view(b, num_samples, self.horizon,
                                                                          self.action_dim)

    def denoise_loop(self, cond: Condition, x: torch.Tensor, sampler: str, steps: int,
                     generator: torch.Generator | None = None, denoise=None) -> torch.Tensor:
        """Run the sampler from noise x (B, H, A) to a clean chunk. Shapes are fixed throughout (CUDA-graph safe).

        denoise: a stand-in for `self.denoise` with its signature (e.g. a torch.compile'd one).
        """
        denoise = denoise or self.denoise
        sched = self.inference_scheduler(sampler, steps)
        memory = MemoryKV(self.decoder, cond.tokens, cond.mask)  # the condition is projected once, not per step
        t_batch = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        for t in self._timesteps[(sampler, steps if sampler == "ddim" else self.config.num_train_timesteps)]:
            eps = denoise(x, t_batch.fill_(t), cond, memory)
            x = sched.step(eps, t, x, generator=generator).prev_sample
        return x


def pooled_condition(cond: Condition) -> torch.Tensor:
    """Mean of the valid condition tokens (B, 1, D)."""
    weights = cond.mask.unsqueeze(-1).to(cond.tokens.dtype)
    return (cond.tokens * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
