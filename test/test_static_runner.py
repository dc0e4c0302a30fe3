"""Contracts of the fast inference path: cached cross-attention, static backbone layout, GPU-side
pixels and StaticRunner give the same results as the plain policy (CPU here; CUDA graphs on a GPU)."""

import numpy as np
import pytest
import torch
from conftest import EXPERTS

from vla_models import build_policy
from vla_models.config import ExpertConfig
from vla_models.experts.diffusion import ChunkPlan, DiffusionExpert
from vla_models.fusion import Condition
from vla_models.presets import preset
from vla_models.static_runner import StaticRunner
from vla_models.testing import fake_observation, fit_fake_statistics


def test_chunk_plan_steps_match_the_training_denoiser():
    """A loop's per-chunk constants (condition keys/values, time tokens) give `denoise` at every timestep."""
    torch.manual_seed(0)
    expert = DiffusionExpert(ExpertConfig(type="diffusion", layers=2, heads=4, feedforward=64, dropout=0.0),
                             32, 8, 3).eval()
    cond = Condition(torch.randn(2, 11, 32), torch.ones(2, 11, dtype=torch.bool))
    cond.mask[1, 7:] = False  # padded condition tokens must stay masked in the cached path
    x, timesteps = torch.randn(2, 8, 3), torch.tensor([70, 3, 99, 0])
    with torch.no_grad():
        plan = ChunkPlan(expert, cond, timesteps)
        for i, t in enumerate(timesteps.tolist()):
            plan.select(i)
            plain = expert.denoise(x, torch.full((2,), t), cond)
            torch.testing.assert_close(expert.denoise_step(x, plan), plain, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_policies():
    out = {}
    for expert in EXPERTS:
        policy = build_policy(preset("tiny", **{"expert.type": expert})).eval()
        fit_fake_statistics(policy)
        out[expert] = policy
    return out


@pytest.mark.parametrize("size", [(56, 56), (28, 140)])
def test_static_backbone_layout_gives_the_same_features(tiny_policies, size):
    policy = tiny_policies["regression"]
    obs = fake_observation(policy.config, 1, image_size=size)
    inputs = policy.backbone.preprocess(obs["images"], obs["instruction"], policy.config.views)
    layout = policy.backbone.static_layout(inputs)
    if size == (28, 140):  # several attention windows per image: the window mask is sparser than the full one
        assert layout.vision["cu_window_seqlens"].sum() < layout.vision["cu_seqlens"].sum()
    with torch.no_grad():
        ref = policy.backbone(inputs)
        fast = policy.backbone.forward_static(inputs["pixel_values"], layout)
    torch.testing.assert_close(fast.tokens, ref.tokens)
    torch.testing.assert_close(fast.pooled, ref.pooled)


@pytest.mark.parametrize("size", [(56, 56), (90, 120)])
def test_pixels_on_device_match_the_image_processor(tiny_policies, size):
    policy = tiny_policies["regression"]
    obs = fake_observation(policy.config, 1, image_size=size)
    ref = policy.backbone.preprocess(obs["images"], obs["instruction"], policy.config.views)["pixel_values"]
    ours = policy.backbone.pixels(obs["images"], policy.config.views, "cpu")
    assert ours.shape == ref.shape
    if size == (56, 56):  # no resize: identical
        torch.testing.assert_close(ours, ref)
    else:  # resampled: torch's bicubic vs PIL's, within a grey level on average
        assert (ours - ref).abs().mean() < 0.02


@pytest.mark.parametrize("expert", EXPERTS)
def test_static_runner_matches_the_policy(tiny_policies, expert):
    policy = tiny_policies[expert]
    runner = StaticRunner(policy)  # cuda_graphs=True asked for: on a CPU every stage runs eagerly (the fallback)
    assert runner.cuda_graphs is False
    obs = fake_observation(policy.config, 1, image_size=(56, 56))
    for num_samples in (1, 3):
        ref = policy.predict_action_chunk(obs, num_samples=num_samples, seed=4)
        fast = runner.predict_action_chunk(obs, num_samples=num_samples, seed=4)
        torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    assert {"preprocess_ms", "backbone_ms", "sensor_ms", "expert_ms", "total_ms"} <= set(runner.last_timings)
    assert len(runner._layouts) == 1  # the layout is computed once for a fixed prompt and image size


@pytest.mark.parametrize("expert", EXPERTS)
def test_static_runner_without_a_backbone(expert):
    policy = build_policy(preset("cpu", **{"expert.type": expert})).eval()
    fit_fake_statistics(policy)
    obs = fake_observation(policy.config, 1)
    torch.testing.assert_close(StaticRunner(policy).predict_action_chunk(obs, seed=2),
                               policy.predict_action_chunk(obs, seed=2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("expert, options, error", [("diffusion", {"ddim_step": 5}, TypeError),
                                                    ("flow", {"sampler": "ddpm"}, ValueError),
                                                    ("regression", {"steps": 3}, TypeError)])
def test_static_runner_lets_the_expert_check_its_options(tiny_policies, expert, options, error):
    runner = StaticRunner(tiny_policies[expert])
    obs = fake_observation(runner.policy.config, 1, image_size=(56, 56))
    with pytest.raises(error, match=next(iter(options)) if error is TypeError else "ddpm"):
        runner.predict_action_chunk(obs, **options)


def test_static_runner_rejects_missing_views(tiny_policies):
    runner = StaticRunner(tiny_policies["regression"])
    obs = fake_observation(runner.policy.config, 1, image_size=(56, 56))
    del obs["images"]["wrist"]
    with pytest.raises(Exception, match="wrist"):
        runner.predict_action_chunk(obs)


def test_batched_samples_share_one_condition(tiny_policies):
    """K samples come from one batched denoising loop; different noise gives different samples."""
    policy = tiny_policies["diffusion"]
    obs = fake_observation(policy.config, 1, image_size=(56, 56))
    chunks = StaticRunner(policy).predict_action_chunk(obs, num_samples=4, seed=0)
    assert chunks.shape == (1, 4, policy.config.horizon, policy.config.action_dim)
    assert np.isfinite(chunks.numpy()).all()
    assert (chunks[0, 0] - chunks[0, 1]).abs().max() > 0


@pytest.mark.parametrize("expert", ["diffusion", "flow"])
def test_compiled_heads_give_the_same_chunks(tiny_policies, expert):
    """torch.compile'd encoders and denoiser (inductor, here on the CPU) = the eager policy."""
    policy = tiny_policies[expert]
    obs = fake_observation(policy.config, 1, image_size=(56, 56))
    ref = policy.predict_action_chunk(obs, seed=1, steps=3)
    runner = StaticRunner(policy, compile_heads=True)
    torch.testing.assert_close(runner.predict_action_chunk(obs, seed=1, steps=3), ref, atol=1e-4, rtol=1e-4)
    # one compiled step serves every timestep of every chunk (the plan's buffers keep their addresses):
    # a recompile per timestep would exhaust dynamo's cache and fall back to eager on a GPU
    with torch._dynamo.config.patch(error_on_recompile=True):
        ref = policy.predict_action_chunk(obs, seed=2, steps=10)
        torch.testing.assert_close(runner.predict_action_chunk(obs, seed=2, steps=10), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("expert", EXPERTS)
def test_bf16_expert_runner_keeps_the_policy_and_float32_samples(tiny_policies, expert):
    """expert_dtype=bfloat16: the runner's own copy of the expert; the policy's stays float32, chunks are
    float32 and within bfloat16 rounding of the float32 policy (in normalised action units)."""
    policy = tiny_policies[expert]
    runner = StaticRunner(policy, expert_dtype=torch.bfloat16)
    assert next(runner.expert.parameters()).dtype == torch.bfloat16
    assert next(policy.expert.parameters()).dtype == torch.float32
    obs = fake_observation(policy.config, 1, image_size=(56, 56))
    fast, ref = runner.predict_action_chunk(obs, seed=5), policy.predict_action_chunk(obs, seed=5)
    assert fast.dtype == torch.float32
    normalize = policy.normalizer["action"].normalize
    error = (normalize(fast) - normalize(ref)).abs().max().item()
    assert 0 < error < 0.1, error  # rounded (not the float32 weights by mistake), but close
