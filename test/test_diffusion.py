"""The diffusion expert's sampling contracts: schedule coverage, determinism, one backbone pass."""

import pytest
import torch
from conftest import make_policy

from vla_models.testing import fake_observation


def _record_timesteps(policy):
    """The timesteps whose tokens a chunk's loop computes, checked to be one denoising step each."""
    seen, steps = [], []
    expert = policy.expert
    time_tokens, denoise_step = expert.time_tokens, expert.denoise_step

    def tokens_spy(timesteps, dtype):
        seen.extend(int(t) for t in timesteps)
        return time_tokens(timesteps, dtype)

    def step_spy(noisy, plan):
        steps.append(1)
        return denoise_step(noisy, plan)

    expert.time_tokens, expert.denoise_step = tokens_spy, step_spy
    return seen, steps


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_ddim_covers_the_whole_schedule(steps):
    policy = make_policy("cpu", "diffusion")
    seen, denoise_steps = _record_timesteps(policy)
    policy.predict_action_chunk(fake_observation(policy.config, 1), seed=0, sampler="ddim", ddim_steps=steps)
    total = policy.config.expert.num_train_timesteps
    stride = total // steps
    assert len(seen) == len(denoise_steps) == steps
    assert seen[0] == total - 1  # starts at the noisiest step (the seed started at 90 of 100)
    assert all(a - b == stride for a, b in zip(seen, seen[1:]))  # evenly spaced
    assert seen[-1] - stride < 0  # and the last step lands on the clean sample
    sched = policy.expert.inference_scheduler("ddim", steps)
    assert float(sched.final_alpha_cumprod) == 1.0


def test_ddpm_visits_every_step():
    policy = make_policy("cpu", "diffusion")
    seen, denoise_steps = _record_timesteps(policy)
    policy.predict_action_chunk(fake_observation(policy.config, 1), seed=0, sampler="ddpm")
    assert len(denoise_steps) == policy.config.expert.num_train_timesteps
    assert seen == list(range(policy.config.expert.num_train_timesteps - 1, -1, -1))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_same_seed_same_samples_and_samples_differ(sampler):
    policy = make_policy("cpu", "diffusion")
    obs = fake_observation(policy.config, 2)
    a = policy.predict_action_chunk(obs, num_samples=4, seed=7, sampler=sampler)
    b = policy.predict_action_chunk(obs, num_samples=4, seed=7, sampler=sampler)
    c = policy.predict_action_chunk(obs, num_samples=4, seed=8, sampler=sampler)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[:, 0], a[:, 1])  # the samples of one observation are distinct draws


@pytest.mark.parametrize("expert, overrides, num_samples", [
    ("regression", {}, 1), ("diffusion", {"sampler": "ddim", "ddim_steps": 5}, 1),
    ("diffusion", {"sampler": "ddim", "ddim_steps": 20}, 4), ("diffusion", {"sampler": "ddpm"}, 3),
])
def test_backbone_runs_once_per_chunk(expert, overrides, num_samples):
    policy = make_policy("tiny", expert)
    calls = []
    policy.backbone.model.register_forward_hook(lambda *args: calls.append(1))
    policy.predict_action_chunk(fake_observation(policy.config, 2), num_samples=num_samples, seed=0, **overrides)
    assert len(calls) == 1


def test_unknown_sampler_options_are_rejected():
    policy = make_policy("cpu", "diffusion")
    obs = fake_observation(policy.config, 1)
    with pytest.raises(TypeError, match="unknown sampler option"):
        policy.predict_action_chunk(obs, temperature=0.5)
    with pytest.raises(ValueError, match="sampler: expected one of"):
        policy.predict_action_chunk(obs, sampler="euler")
    with pytest.raises(TypeError, match="regression expert takes no sampler options"):
        make_policy("cpu", "regression").predict_action_chunk(obs, sampler="ddim")
