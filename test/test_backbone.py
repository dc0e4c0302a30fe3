"""The Qwen-VL backbone: offline tokenizer, in-memory images, LoRA through peft, variants."""

import numpy as np
import pytest
import torch
from conftest import make_policy

from vla_models.backbones import offline_qwen2_tokenizer
from vla_models.testing import fake_batch, fake_observation


def test_offline_tokenizer_matches_qwen_ids():
    tok = offline_qwen2_tokenizer()
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert tok.convert_tokens_to_ids("<|vision_start|>") == 151652
    assert tok("Insert the needle")["input_ids"] == [13780, 279, 30309]


def test_lora_freezes_the_base_and_trains_the_adapters():
    policy = make_policy("tiny", "diffusion", **{"backbone.lora.enabled": True})
    model = policy.backbone.model
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(any(m in n for m in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in lora)
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.named_parameters())
    policy.train()
    loss, _ = policy(fake_batch(policy.config, 2))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    assert any(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)


def test_gradient_checkpointing_gives_the_same_lora_gradients():
    """Stage 2's memory switch recomputes activations in backward: the LoRA gradients are unchanged."""
    grads = {}
    for checkpointing in (False, True):
        policy = make_policy("tiny", "regression", seed=3, **{"backbone.lora.enabled": True,
                                                             "backbone.gradient_checkpointing": checkpointing})
        policy.train()
        assert policy.backbone.model.is_gradient_checkpointing == checkpointing
        torch.manual_seed(0)
        loss, _ = policy(fake_batch(policy.config, 2, seed=0))
        loss.backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in policy.backbone.model.named_parameters()
                                if "lora_B" in n and p.grad is not None}
    assert grads[True] and grads[True].keys() == grads[False].keys()
    assert all(torch.allclose(grads[True][n], grads[False][n], atol=1e-6) for n in grads[True])


def test_images_are_used():
    policy = make_policy("tiny", "regression")
    obs = fake_observation(policy.config, 1)
    a = policy.predict_action_chunk(obs)
    obs["images"]["front"] = np.zeros_like(obs["images"]["front"])
    assert not torch.allclose(a, policy.predict_action_chunk(obs))


def test_instruction_is_used():
    policy = make_policy("tiny", "regression")
    obs = fake_observation(policy.config, 1)
    a = policy.predict_action_chunk(obs)
    obs["instruction"] = ["retract the needle slowly"]
    assert not torch.allclose(a, policy.predict_action_chunk(obs))


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen3_vl"])
def test_other_qwen_variants_build_and_predict(variant):
    policy = make_policy("tiny", "regression", **{"backbone.variant": variant})
    out = policy.predict_action_chunk(fake_observation(policy.config, 2))
    assert out.shape == (2, policy.config.horizon, policy.config.action_dim) and torch.isfinite(out).all()
