"""Sampling contracts of the iterative experts (diffusion, flow): schedule coverage, determinism per
seed, one backbone pass per chunk, options resolved and checked by the expert."""

import pytest
import torch
from conftest import make_policy

from vla_models.fusion import Condition
from vla_models.testing import fake_observation


def _record_timesteps(policy):
    """The timesteps whose tokens a chunk's loop computes, checked to be one denoising step each."""
    seen, steps = [], []
    expert = policy.expert
    time_tokens, denoise_step = expert.time_tokens, expert.denoise_step

    def tokens_spy(timesteps, dtype):
        seen.extend(round(float(t), 3) for t in timesteps)
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
    policy.predict_action_chunk(fake_observation(policy.config, 1), seed=0, sampler="ddim", steps=steps)
    total = policy.config.expert.num_train_timesteps
    stride = total // steps
    assert len(seen) == len(denoise_steps) == steps
    assert seen[0] == total - 1  # starts at the noisiest step (the seed started at 90 of 100)
    assert all(a - b == stride for a, b in zip(seen, seen[1:]))  # evenly spaced
    assert seen[-1] - stride < 0  # and the last step lands on the clean sample
    sched = policy.expert.inference_scheduler("ddim", steps)
    assert float(sched.final_alpha_cumprod) == 1.0


@pytest.mark.parametrize("steps", [1, 5, 10, 20])
def test_ddim_tensor_update_equals_diffusers_step_at_every_visited_timestep(steps):
    """The coefficient-tensor DDIM update (no scheduler in the loop: capturable whole in a CUDA graph) is
    diffusers' DDIMScheduler.step, x0 clipping included, at each timestep the sampler visits."""
    expert = make_policy("cpu", "diffusion").expert
    sched = expert.inference_scheduler("ddim", steps)
    coefficients = expert.ddim_coefficients(steps, torch.device("cpu"))
    generator = torch.Generator().manual_seed(steps)
    for i, t in enumerate(expert.timesteps("ddim", steps)):
        x = 2 * torch.randn(3, expert.horizon, expert.action_dim, generator=generator)  # x0 often out of [-1, 1]
        eps = torch.randn(3, expert.horizon, expert.action_dim, generator=generator)
        torch.testing.assert_close(expert.ddim_update(x, eps, coefficients[i]), sched.step(eps, t, x).prev_sample,
                                   atol=1e-5, rtol=1e-5)


def test_ddim_sampling_equals_the_diffusers_loop():
    policy = make_policy("cpu", "diffusion")
    cond = policy.encode(policy.prepare(fake_observation(policy.config, 2)))
    noise = torch.randn(2, policy.config.horizon, policy.config.action_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = policy.expert.sample_from(cond, noise, policy.expert.sampling(sampler="ddim", steps=10))
        reference = policy.expert.denoise_loop(cond, noise, "ddim", 10)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_ddpm_visits_every_step():
    policy = make_policy("cpu", "diffusion")
    seen, denoise_steps = _record_timesteps(policy)
    policy.predict_action_chunk(fake_observation(policy.config, 1), seed=0, sampler="ddpm")
    assert len(denoise_steps) == policy.config.expert.num_train_timesteps
    assert seen == list(range(policy.config.expert.num_train_timesteps - 1, -1, -1))


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_flow_takes_k_euler_steps_from_noise_to_the_chunk(steps):
    policy = make_policy("cpu", "flow")
    seen, network_calls = _record_timesteps(policy)
    policy.predict_action_chunk(fake_observation(policy.config, 1), seed=0, steps=steps)
    assert len(network_calls) == steps
    assert seen == [round(1000.0 * (1 - i / steps), 3) for i in range(steps)]  # t = 1 (noise) ... 1/K


def test_flow_euler_integration_reaches_the_target_of_a_straight_path():
    """With the exact velocity of the straight path (noise - actions), K Euler steps land on the actions."""
    expert = make_policy("cpu", "flow").expert
    target = torch.randn(2, expert.horizon, expert.action_dim)
    noise = torch.randn_like(target)
    cond = Condition(torch.zeros(2, 1, expert.hidden_dim), torch.ones(2, 1, dtype=torch.bool))
    for steps in (1, 3, 10):
        out = expert.sample_from(cond, noise, expert.sampling(steps=steps), step=lambda x, plan: noise - target)
        torch.testing.assert_close(out, target)


@pytest.mark.parametrize("expert, options", [("diffusion", {"sampler": "ddim"}), ("diffusion", {"sampler": "ddpm"}),
                                             ("flow", {"steps": 10})])
def test_same_seed_same_samples_and_samples_differ(expert, options):
    policy = make_policy("cpu", expert)
    obs = fake_observation(policy.config, 2)
    a = policy.predict_action_chunk(obs, num_samples=4, seed=7, **options)
    b = policy.predict_action_chunk(obs, num_samples=4, seed=7, **options)
    c = policy.predict_action_chunk(obs, num_samples=4, seed=8, **options)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[:, 0], a[:, 1])  # the samples of one observation are distinct draws
    single = policy.predict_action_chunk({k: v[:1] for k, v in obs.items()}, seed=7, **options)
    assert single.shape == (1, policy.config.horizon, policy.config.action_dim)


@pytest.mark.parametrize("expert, options, num_samples", [
    ("regression", {}, 1), ("diffusion", {"sampler": "ddim", "ddim_steps": 5}, 1),
    ("diffusion", {"sampler": "ddim", "steps": 20}, 4), ("diffusion", {"sampler": "ddpm"}, 3), ("flow", {"steps": 5}, 3),
])
def test_backbone_runs_once_per_chunk(expert, options, num_samples):
    policy = make_policy("tiny", expert)
    calls = []
    policy.backbone.model.register_forward_hook(lambda *args: calls.append(1))
    policy.predict_action_chunk(fake_observation(policy.config, 2), num_samples=num_samples, seed=0, **options)
    assert len(calls) == 1


@pytest.mark.parametrize("expert, options, error, words", [
    ("diffusion", {"temperature": 0.5}, TypeError, "unknown sampling option"),
    ("diffusion", {"sampler": "euler"}, ValueError, "diffusion expert samples with one of"),
    ("diffusion", {"steps": 101}, ValueError, "DDIM steps in 1..100"),
    ("flow", {"sampler": "ddim"}, ValueError, "flow expert samples with one of"),
    ("flow", {"steps": 0}, ValueError, "Euler steps"),
    ("regression", {"sampler": "ddim"}, TypeError, "regression expert takes no"),
])
def test_sampling_options_are_checked_by_the_expert(expert, options, error, words):
    policy = make_policy("cpu", expert)
    with pytest.raises(error, match=words):
        policy.predict_action_chunk(fake_observation(policy.config, 1), **options)


@pytest.mark.parametrize("expert, labels", [
    ("regression", ["regression"]), ("diffusion", ["ddim-5", "ddim-10", "ddim-20", "ddpm-100"]),
    ("flow", ["flow-5", "flow-10", "flow-20"])])
def test_each_expert_names_its_samplings(expert, labels):
    policy = make_policy("cpu", expert)
    assert [s.label for s in policy.expert.latency_variants()] == labels
    spec = policy.expert.sampling()
    assert spec.label in labels and spec.stochastic == (expert != "regression")
    assert policy.expert.options_for(sampler="", steps=7, ddim_steps=None) == ({} if expert == "regression" else
                                                                            {"steps": 7})
