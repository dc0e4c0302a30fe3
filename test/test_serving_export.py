"""Serving what was trained: `vla export --merge-lora` and the backbone's attention implementation."""

import pytest
import torch
from safetensors import safe_open

from vla_models import ConfigError, build_policy, load_policy, preset
from vla_models.backbones.qwen_vl import QwenVLBackbone
from vla_models.static_runner import StaticRunner
from vla_models.testing import fake_observation, fit_fake_statistics
from vla_training.cli import main as vla


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL saved as a pretrained model directory (weights + tokenizer + image processor)."""
    path = tmp_path_factory.mktemp("pretrained") / "qwen"
    torch.manual_seed(3)
    backbone = QwenVLBackbone(preset("tiny").backbone)
    backbone.model.save_pretrained(path)
    backbone.save_files(path)
    return path


@pytest.fixture(scope="module")
def stage2_checkpoint(pretrained_dir, tmp_path_factory):
    """A stage-2 checkpoint: the frozen pretrained backbone with trained (non-zero) LoRA adapters."""
    torch.manual_seed(0)
    policy = build_policy(preset("tiny", **{"backbone.pretrained": str(pretrained_dir), "backbone.lora.enabled": True,
                                            "backbone.lora.r": 4}))
    with torch.no_grad():  # peft starts lora_B at zero, where a merge changes nothing: as after training instead
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    fit_fake_statistics(policy)
    return policy.eval().save(tmp_path_factory.mktemp("runs") / "stage2")


def test_merged_checkpoint_serves_the_same_actions_without_adapters(stage2_checkpoint, tmp_path):
    assert vla(["export", str(stage2_checkpoint), str(tmp_path / "merged"), "--merge-lora"]) == 0
    original, merged = load_policy(stage2_checkpoint), load_policy(tmp_path / "merged")
    assert merged.config.backbone.lora.merged and not merged.config.backbone.lora.enabled
    assert not [n for n, _ in merged.named_modules() if "lora_" in n]  # plain layers: the base model's cost
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as fh:  # the merged weights are stored
        keys = list(fh.keys())
    assert any(k.startswith("backbone.model.language_model.") and k.endswith("q_proj.weight") for k in keys)
    assert not any("lora_" in k for k in keys)
    obs = fake_observation(original.config, 2, image_size=(56, 56))
    reference = original.predict_action_chunk(obs, seed=1)
    torch.testing.assert_close(merged.predict_action_chunk(obs, seed=1), reference, atol=1e-4, rtol=1e-4)
    # the fast runner the node uses on a GPU serves the merged checkpoint with the same outputs
    torch.testing.assert_close(StaticRunner(merged).predict_action_chunk(obs, seed=1), reference, atol=1e-4, rtol=1e-4)
    # and the adapters mattered: the base model alone answers differently
    base = build_policy(original.config.replace(**{"backbone.lora.enabled": False}))
    base.load_state_dict({k: v for k, v in original.state_dict().items() if "lora_" not in k}, strict=False)
    assert (base.eval().predict_action_chunk(obs, seed=1) - reference).abs().max() > 1e-3


def test_merged_checkpoint_does_not_depend_on_the_base_weights_file(stage2_checkpoint, pretrained_dir, tmp_path):
    """The merged weights come from the checkpoint, not from backbone.pretrained (whose weights it no longer equals):
    a base model directory with other weights gives the same actions."""
    vla(["export", str(stage2_checkpoint), str(tmp_path / "merged"), "--merge-lora"])
    torch.manual_seed(99)
    other = tmp_path / "other_base"
    QwenVLBackbone(preset("tiny").backbone).model.save_pretrained(other)
    QwenVLBackbone(preset("tiny").backbone).save_files(other)
    merged = load_policy(tmp_path / "merged")
    moved = load_policy(tmp_path / "merged", backbone_pretrained=other)
    obs = fake_observation(merged.config, 1, image_size=(56, 56))
    torch.testing.assert_close(moved.predict_action_chunk(obs, seed=0), merged.predict_action_chunk(obs, seed=0))


def test_merge_without_adapters_is_a_named_error(tmp_path, capsys):
    policy = build_policy(preset("tiny"))
    fit_fake_statistics(policy)
    policy.eval().save(tmp_path / "plain")
    assert vla(["export", str(tmp_path / "plain"), str(tmp_path / "out"), "--merge-lora"]) == 2
    assert "no LoRA adapters to merge" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert vla(["export", str(tmp_path / "missing"), str(tmp_path / "out"), "--merge-lora"]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="merged and enabled"):
        preset("tiny", **{"backbone.lora.enabled": True, "backbone.lora.merged": True})


def test_attention_implementation_is_applied_and_checked():
    torch.manual_seed(0)
    sdpa = QwenVLBackbone(preset("tiny").backbone)
    eager = QwenVLBackbone(preset("tiny", **{"backbone.attn_implementation": "eager"}).backbone)
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert eager.model.config._attn_implementation == "eager"
    eager.model.load_state_dict(sdpa.model.state_dict())
    policy = build_policy(preset("tiny"))
    obs = fake_observation(policy.config, 1, image_size=(56, 56))
    inputs = sdpa.preprocess(obs["images"], obs["instruction"], policy.config.views)
    torch.testing.assert_close(eager(inputs).tokens, sdpa(inputs).tokens, atol=1e-4, rtol=1e-4)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="flash_attention_2 needs the flash_attn package"):
            QwenVLBackbone(preset("tiny", **{"backbone.attn_implementation": "flash_attention_2"}).backbone)
    with pytest.raises(ConfigError, match="attn_implementation.*sdpa"):
        preset("tiny", **{"backbone.attn_implementation": "flash"})
