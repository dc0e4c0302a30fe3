"""The Qwen-VL backbone: offline tokenizer, in-memory images, LoRA through peft, variants."""

import numpy as np
import pytest
import torch
from conftest import make_policy
from vla_models.constants import BACKBONE_INPUTS

from vla_models.backbones import offline_qwen2_tokenizer
from vla_models.testing import fake_batch, fake_observation
from vla_training.data.samples import BackboneCollate


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


def test_frozen_word_embeddings_train_everything_else(tmp_path):
    """backbone.freeze_word_embeddings with a trained backbone: the table keeps its values (no gradient, so
    no optimiser state either), every other backbone weight gets a gradient; kept through a checkpoint."""
    from vla_models import load_policy

    policy = make_policy("tiny", "regression", **{"backbone.freeze": False, "backbone.freeze_word_embeddings": True})
    table = policy.backbone.model.get_input_embeddings().weight
    trainable = [n for n, p in policy.backbone.model.named_parameters() if p.requires_grad]
    assert not table.requires_grad and trainable
    policy.train()
    loss, _ = policy(fake_batch(policy.config, 2))
    loss.backward()
    assert table.grad is None
    assert [n for n, p in policy.backbone.model.named_parameters() if p.requires_grad and p.grad is None] == []
    loaded = load_policy(policy.save(tmp_path / "ckpt"))
    assert not loaded.backbone.model.get_input_embeddings().weight.requires_grad
    torch.testing.assert_close(loaded.backbone.model.get_input_embeddings().weight, table.detach())


def test_lora_adapters_are_float32_over_a_bfloat16_base():
    """A bf16 base (a pretrained model's dtype, `backbone.dtype: bfloat16`) keeps its LoRA adapters in fp32:
    AdamW steps on bf16 weights round away."""
    policy = make_policy("tiny", "regression", **{"backbone.lora.enabled": True, "backbone.dtype": "bfloat16"})
    dtypes: dict[str, set] = {}
    for name, p in policy.backbone.model.named_parameters():
        dtypes.setdefault("lora" if "lora_" in name else "base", set()).add(p.dtype)
    assert dtypes == {"lora": {torch.float32}, "base": {torch.bfloat16}}


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


@pytest.mark.parametrize("variant", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_text_inputs_equal_the_processor_without_pixels(variant):
    """The loader workers' cheap half of preprocessing (`pixels: device`): from image sizes alone, the
    same token ids, mask, grids and token types as the processor; views of different sizes, prompts of
    different lengths (padding)."""
    backbone = make_policy("tiny", "regression", **{"backbone.variant": variant}).backbone
    rng = np.random.default_rng(0)
    images = {"front": rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8),
              "wrist": rng.integers(0, 256, (2, 120, 90, 3), dtype=np.uint8)}
    instruction = ["insert", "insert the needle slowly into the phantom"]
    full = backbone.preprocess(images, instruction, ["front", "wrist"])
    text = backbone.text_inputs({"front": (48, 64), "wrist": (120, 90)}, instruction, ["front", "wrist"])
    assert set(full) - set(text) == {"pixel_values"}
    for key, value in text.items():
        assert torch.equal(value, full[key]), key


@pytest.mark.parametrize("pixels", ["processor", "device"])
def test_backbone_inputs_made_while_collating_give_the_same_loss(pixels):
    """A batch whose backbone inputs were made while collating (in a loader worker) trains like one that
    carries the frames: exactly with the processor's pixels; with pixels made on the device from the
    frames, within resampling noise."""
    policy = make_policy("tiny", "regression", seed=1)
    batch = fake_batch(policy.config, 3, seed=0, image_size=(40, 52))
    torch.manual_seed(0)
    reference, _ = policy(batch)
    samples = [{k: ({v: x[i] for v, x in value.items()} if k == "images" else value[i]) for k, value in batch.items()}
               for i in range(3)]
    made = BackboneCollate(policy.backbone, policy.config.views, pixels)(samples)
    assert BACKBONE_INPUTS in made and ("images" in made) == (pixels == "device")
    assert ("pixel_values" in made[BACKBONE_INPUTS]) == (pixels == "processor")
    torch.manual_seed(0)
    loss, _ = policy(made)
    if pixels == "processor":
        assert torch.equal(loss, reference)
    else:
        assert torch.isfinite(loss) and loss.item() != reference.item()
        assert abs(loss.item() - reference.item()) < 0.05 * reference.item()


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
