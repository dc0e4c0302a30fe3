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
        self._timestep_tensors: dict[tuple, torch.Tensor] = {}
        self.action_in = nn.Linear(self.action_dim, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.horizon, d))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.time_mlp = nn.Sequential(nn.Linear(c.timestep_embed_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_in = nn.Linear(d, d)
        self.decoder = self._decoder()
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, self.action_dim))

    # -- the denoiser -----------------------------------------------------------------------------
    def time_tokens(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Timesteps (N,) int -> their tokens (N, D)."""
        t_emb = get_timestep_embedding(timesteps, self.config.timestep_embed_dim, flip_sin_to_cos=True,
                                       downscale_freq_shift=0)  # (N, 128)
        return self.time_mlp(t_emb.to(dtype))

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Condition) -> torch.Tensor:
        """noisy actions (B, H, A), timesteps (B,) int, condition (B, L, D) -> predicted noise (B, H, A).

        The training path; sampling runs the same arithmetic as `denoise_step` on a `ChunkPlan`.
        """
        t_tok = self.time_tokens(timesteps, noisy.dtype).unsqueeze(1)  # (B, 1, D)
        # The condition enters every action token directly (as FiLM conditioning does in Diffusion Policy's
        # U-Net) and through cross-attention: with a cross-attention path alone it is learnt far more slowly.
        x = self.action_in(noisy) + self.pos_embed + t_tok + self.cond_in(pooled_condition(cond))  # (B, H, D)
        memory_tokens = torch.cat([t_tok, cond.tokens], dim=1)  # (B, 1+L, D)
        memory_mask = torch.cat([torch.ones_like(cond.mask[:, :1]), cond.mask], dim=1)  # (B, 1+L)
        x = self.decoder(x, memory_tokens, memory_key_padding_mask=~memory_mask)  # (B, H, D)
        return self.head(x)

    def denoise_step(self, noisy: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """`denoise` at the plan's selected timestep: noisy (B, H, A) -> predicted noise (B, H, A).

        The network runs in its weights' dtype; the noise comes back in the sample's (float32 samples
        with bfloat16 weights: the scheduler's arithmetic keeps full precision).
        """
        dtype = plan.base.dtype
        x = self.action_in(noisy if noisy.dtype == dtype else noisy.to(dtype)) + plan.base + plan.time_token
        eps = self.head(plan.memory.decode(x))  # (B, H, A)
        return eps if eps.dtype == noisy.dtype else eps.to(noisy.dtype)

    # -- training ---------------------------------------------------------------------------------
    def loss(self, cond, actions, pad_mask, dim_weight, sample_weight=None):
        b = actions.shape[0]
        noise = torch.randn_like(actions)  # (B, H, A)
        t = torch.randint(0, self.config.num_train_timesteps, (b,), device=actions.device)
        noisy = self.train_scheduler.add_noise(actions, noise, t)
        pred = self.denoise(noisy, t, cond)
        loss = masked_mean(F.mse_loss(pred, noise, reduction="none"), pad_mask, dim_weight, sample_weight)
        return loss, {"diffusion_loss": loss.item(), "timestep_mean": t.float().mean().item()}

    # -- sampling ---------------------------------------------------------------------------------
    def inference_scheduler(self, sampler: str, ddim_steps: int) -> DDPMScheduler | DDIMScheduler:
        """The scheduler for a sampler, its timesteps set (cached: set_timesteps is done once)."""
        key = self._schedule_key(sampler, ddim_steps)
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

    def _schedule_key(self, sampler: str, ddim_steps: int) -> tuple[str, int]:
        """(sampler, steps it takes): DDPM always visits every training timestep."""
        return sampler, ddim_steps if sampler == "ddim" else self.config.num_train_timesteps

    def timesteps(self, sampler: str, steps: int, device: torch.device | None = None) -> list[int] | torch.Tensor:
        """The timesteps a sampler visits, first to last: python ints, or a (T,) tensor on `device`.

        The tensors are cached per device, so that a loop captured in a CUDA graph (after warm-up
        calls) copies nothing from the host.
        """
        self.inference_scheduler(sampler, steps)
        key = self._schedule_key(sampler, steps)
        if device is None:
            return self._timesteps[key]
        if (key, device) not in self._timestep_tensors:
            self._timestep_tensors[key, device] = torch.tensor(self._timesteps[key], device=device)
        return self._timestep_tensors[key, device]

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
                     generator: torch.Generator | None = None, step=None) -> torch.Tensor:
        """Run the sampler from noise x (B, H, A) to a clean chunk. Shapes are fixed throughout (CUDA-graph safe).

        step: a stand-in for `self.denoise_step` with its signature (e.g. a torch.compile'd one).
        """
        step = step or self.denoise_step
        sched = self.inference_scheduler(sampler, steps)
        plan = ChunkPlan(self, cond, self.timesteps(sampler, steps, x.device))
        for i, t in enumerate(self.timesteps(sampler, steps)):
            plan.select(i)
            x = sched.step(step(x, plan), t, x, generator=generator).prev_sample
        return x


class ChunkPlan:
    """What a denoising loop computes once per chunk, so that a step runs only the decoder over its tokens.

    Per chunk: the condition's cross-attention keys/values, the action tokens' constant part (position
    embedding + projected pooled condition) and, for every timestep the sampler visits, its token and
    that token's keys/values. `select(i)` puts timestep i's in place (two copies); `denoise_step` reads
    them. All buffers keep their addresses, so a compiled step runs the same code at every timestep.
    """

    def __init__(self, expert: DiffusionExpert, cond: Condition, timesteps: torch.Tensor) -> None:
        """cond (B, L, D); timesteps (T,) int, in the order they will be selected."""
        self.memory = MemoryKV(expert.decoder, cond.tokens, cond.mask, extra=1)
        self.base = expert.pos_embed + expert.cond_in(pooled_condition(cond))  # (B, H, D)
        self.time_tokens = expert.time_tokens(timesteps, cond.tokens.dtype)[:, None, None]  # (T, 1, 1, D)
        self.time_keys_values = self.memory.project(self.time_tokens[:, 0])  # (layers, 2, T, heads, 1, hd)
        self.time_token = torch.empty_like(self.time_tokens[0])  # (1, 1, D): the selected timestep's

    def select(self, index: int) -> None:
        self.time_token.copy_(self.time_tokens[index])
        self.memory.set_extra(self.time_keys_values[:, :, index:index + 1])


def pooled_condition(cond: Condition) -> torch.Tensor:
    """Mean of the valid condition tokens (B, 1, D)."""
    weights = cond.mask.unsqueeze(-1).to(cond.tokens.dtype)
    return (cond.tokens * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
