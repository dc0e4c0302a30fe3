"""Real-time chunking (experts/guidance.py): the frozen prefix is the executed actions exactly, zero delay changes
nothing, the guidance pulls the overlap toward the previous chunk, and a one-pass expert refuses it."""

import pytest
import torch
from conftest import make_policy

from vla_models.experts.guidance import Inpaint, soft_mask
from vla_models.testing import fake_observation

ITERATIVE = [("flow", {}), ("diffusion", {"sampler": "ddim", "steps": 10})]


def test_soft_mask_is_one_on_the_frozen_rows_and_decays_to_zero_over_the_overlap():
    w = soft_mask(16, 3, 12)
    assert torch.all(w[:3] == 1) and torch.all(w[12:] == 0)
    assert torch.all(w[3:12] > 0) and torch.all(w[3:12] < 1) and torch.all(w[3:12].diff() < 0)
    assert torch.all(soft_mask(16, 0, 0) == 0)


@pytest.mark.parametrize("expert, options", ITERATIVE)
def test_frozen_prefix_equals_the_executed_actions_exactly(expert, options):
    policy = make_policy("cpu", expert)
    obs = fake_observation(policy.config, 2)
    previous = torch.randn(2, 10, policy.config.action_dim) * 0.3
    chunk = policy.predict_action_chunk(obs, seed=3, inpaint=Inpaint(previous, delay=4), **options)
    assert chunk.shape == (2, policy.config.horizon, policy.config.action_dim)
    assert torch.equal(chunk[:, :4], previous[:, :4])
    samples = policy.predict_action_chunk(obs, num_samples=3, seed=3, inpaint=Inpaint(previous, delay=4), **options)
    assert torch.equal(samples[:, :, :4], previous[:, None, :4].expand(-1, 3, -1, -1))


@pytest.mark.parametrize("expert, options", ITERATIVE)
def test_zero_delay_is_a_plain_sample(expert, options):
    policy = make_policy("cpu", expert)
    obs = fake_observation(policy.config, 1)
    previous = torch.randn(1, 10, policy.config.action_dim)
    guided = policy.predict_action_chunk(obs, seed=5, inpaint=Inpaint(previous, delay=0), **options)
    assert torch.equal(guided, policy.predict_action_chunk(obs, seed=5, **options))


def _ideal_denoiser(expert, options):
    """The exact denoiser of a standard normal action distribution (normalised space), as the expert's step: a
    stand-in for a trained network whose answer is known (E[clean | x] is linear in x)."""
    def level(plan) -> int:
        return int((plan.time_tokens[:, 0, 0] - plan.time_token[0]).abs().sum(-1).argmin())

    if expert.config.type == "flow":
        times = expert.times(options.get("steps", expert.config.flow_steps), torch.device("cpu"))

        def step(x, plan):  # x = t n + (1 - t) a, a ~ N(0, 1): E[a | x] = (1 - t) x / ((1 - t)^2 + t^2); v = (x - a)/t
            t = float(times[level(plan)])
            clean = (1 - t) * x / ((1 - t) ** 2 + t ** 2)
            return (x - clean) / t
    else:
        rows = expert.ddim_coefficients(options["steps"], torch.device("cpu"))

        def step(x, plan):  # x = a x0 + b eps, x0 ~ N(0, 1), a^2 + b^2 = 1: E[x0 | x] = a x; eps = (x - a x0) / b
            a, b = (float(v) for v in rows[level(plan), :2])
            return (x - a * (a * x)) / b
    return step


@pytest.mark.parametrize("expert, options", ITERATIVE)
def test_guidance_pulls_the_overlap_toward_the_previous_chunk(expert, options):
    """With a denoiser whose answer is known, from the same noise: the guided chunk's rows after the frozen prefix
    are much closer to the previous chunk than the unguided chunk's (a continuous switch at row d), the pull
    fades along the soft mask, and rows past the overlap are left to the expert."""
    policy = make_policy("cpu", expert)
    policy.expert.denoise_step = _ideal_denoiser(policy.expert, options)
    norm = policy.normalizer["action"]
    obs = fake_observation(policy.config, 8)
    plain = norm.normalize(policy.predict_action_chunk(obs, seed=7, **options))
    previous = torch.full_like(plain, 0.8)  # normalised: a previous plan the prior alone would not give
    guided = norm.normalize(policy.predict_action_chunk(obs, seed=7, **options, inpaint=Inpaint(
        norm.unnormalize(previous[:, :12]), delay=4)))

    def distance(chunk, rows):
        return (chunk[:, rows] - previous[:, rows]).abs().mean()

    assert distance(guided, slice(4, 6)) < 0.5 * distance(plain, slice(4, 6))
    assert distance(guided, slice(4, 6)) < distance(guided, slice(9, 12))  # the pull fades over the overlap
    assert (guided[:, 12:] - plain[:, 12:]).abs().mean() < (guided[:, 4:6] - plain[:, 4:6]).abs().mean()


def test_a_one_pass_expert_refuses_inpainting_but_not_zero_delay():
    policy = make_policy("cpu", "regression")
    obs = fake_observation(policy.config, 1)
    previous = torch.zeros(1, 8, policy.config.action_dim)
    with pytest.raises(ValueError, match="predicts a chunk in one pass"):
        policy.predict_action_chunk(obs, inpaint=Inpaint(previous, delay=2))
    assert torch.equal(policy.predict_action_chunk(obs, inpaint=Inpaint(previous, delay=0)),
                       policy.predict_action_chunk(obs))


def test_bad_inpaint_is_a_named_error():
    policy = make_policy("cpu", "flow")
    obs = fake_observation(policy.config, 1)
    with pytest.raises(ValueError, match="inpaint.delay: expected 0..3"):
        policy.predict_action_chunk(obs, inpaint=Inpaint(torch.zeros(1, 3, policy.config.action_dim), delay=4))
    with pytest.raises(ValueError, match="inpaint.previous: expected"):
        policy.predict_action_chunk(obs, inpaint=Inpaint(torch.zeros(1, 3, 99), delay=1))
    with pytest.raises(ValueError, match="deterministic sampler"):
        make_policy("cpu", "diffusion").predict_action_chunk(
            fake_observation(policy.config, 1), sampler="ddpm",
            inpaint=Inpaint(torch.zeros(1, 8, policy.config.action_dim), delay=2))


def test_guidance_holds_with_an_imperfect_noise_estimate():
    """A trained epsilon network is not exact: at the first DDIM step x0 = (x - b eps) / a divides by a ~ 5e-4 on
    the cosine schedule, so an error of 10 % in eps is an error of ~200 in x0 and in the guidance's Jacobian.
    The guided chunk still pulls toward the previous chunk and saturates the clip range no more than the plain
    sample (a guidance taken against the raw estimate saturated 43 % of the values here, and blew a trained
    closed loop's samples up to |x0| ~ 1e5)."""
    options = {"sampler": "ddim", "steps": 10}
    policy = make_policy("cpu", "diffusion")
    ideal = _ideal_denoiser(policy.expert, options)
    policy.expert.denoise_step = lambda x, plan: 1.1 * ideal(x, plan) + 0.1
    norm = policy.normalizer["action"]
    obs = fake_observation(policy.config, 8)
    plain = norm.normalize(policy.predict_action_chunk(obs, seed=7, **options))
    previous = torch.full_like(plain, 0.5)
    guided = norm.normalize(policy.predict_action_chunk(obs, seed=7, **options, inpaint=Inpaint(
        norm.unnormalize(previous[:, :12]), delay=4)))
    assert (guided[:, 4:6] - previous[:, 4:6]).abs().mean() < 0.5 * (plain[:, 4:6] - previous[:, 4:6]).abs().mean()

    def saturated(chunk):
        return (chunk.abs() > 0.999 * policy.expert.train_scheduler.config.clip_sample_range).float().mean()

    assert saturated(guided) <= saturated(plain)


# -- training-time RTC (expert.prefix_max): the executed rows as the expert's input --------------------------------

EXPERTS = [("regression", {}), ("flow", {}), ("diffusion", {"sampler": "ddim", "steps": 10}),
           ("diffusion", {"sampler": "ddpm"})]


@pytest.mark.parametrize("expert, options", EXPERTS)
def test_a_prefix_trained_expert_returns_the_executed_rows_and_conditions_on_them(expert, options):
    policy = make_policy("cpu", expert, **{"expert.prefix_max": 4})
    obs = fake_observation(policy.config, 2)
    previous = torch.randn(2, 10, policy.config.action_dim) * 0.3
    chunk = policy.predict_action_chunk(obs, seed=3, inpaint=Inpaint(previous, delay=4), **options)
    assert torch.equal(chunk[:, :4], previous[:, :4])
    other = policy.predict_action_chunk(obs, seed=3, inpaint=Inpaint(-previous, delay=4), **options)
    assert not torch.allclose(chunk[:, 4:], other[:, 4:]), "the given rows did not reach the network"
    plain = policy.predict_action_chunk(obs, seed=3, **options)
    assert torch.equal(policy.predict_action_chunk(obs, seed=3, inpaint=Inpaint(previous, delay=0), **options), plain)
    with pytest.raises(ValueError, match="trained with up to expert.prefix_max=4"):
        policy.predict_action_chunk(obs, seed=3, inpaint=Inpaint(previous, delay=5), **options)


def test_prefix_max_is_checked_against_the_horizon():
    from vla_models import ConfigError, preset

    with pytest.raises(ConfigError, match="expert.prefix_max: expected fewer rows than the horizon"):
        preset("cpu", **{"expert.prefix_max": 99})
    with pytest.raises(ConfigError, match="expert.prefix_max: expected an int >= 0"):
        preset("cpu", **{"expert.prefix_max": -1})


@pytest.mark.parametrize("expert", ["regression", "flow"])
def test_training_with_given_rows_learns_to_continue_them(expert):
    """Chunks whose level is drawn per sample, unseen in the observation: only the given rows tell it. After a short
    training the rows after the given ones follow them; without them the expert can only guess the mean."""
    from vla_models.testing import fake_batch

    torch.manual_seed(0)
    policy = make_policy("cpu", expert, **{"expert.prefix_max": 2}).train()
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    horizon, dim = policy.config.horizon, policy.config.action_dim
    unnormalize = policy.normalizer["action"].unnormalize
    for step in range(150):
        batch = fake_batch(policy.config, 32, seed=step)
        level = torch.rand(32, 1, 1) * 2 - 1
        batch["action"] = unnormalize(level.expand(-1, horizon, dim))
        loss, _ = policy(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    policy.eval()
    obs = fake_observation(policy.config, 16, seed=999)
    level = unnormalize((torch.rand(16, 1, 1) * 2 - 1).expand(-1, horizon, dim))
    given = policy.predict_action_chunk(obs, seed=0, inpaint=Inpaint(level, delay=2))
    blind = policy.predict_action_chunk(obs, seed=0)
    err_given, err_blind = (given[:, 2:] - level[:, 2:]).abs().mean(), (blind[:, 2:] - level[:, 2:]).abs().mean()
    assert err_given < 0.5 * err_blind, f"given rows: error {err_given:.3f}; without: {err_blind:.3f}"
