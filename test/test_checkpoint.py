"""Checkpoint round trips and failure modes (safetensors + JSON, never pickle)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import EXPERTS, make_policy

from vla_models import CheckpointError, load_policy
from vla_models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from vla_models.testing import fake_observation

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backbone", ["tiny", "cpu"])
@pytest.mark.parametrize("expert", EXPERTS)
def test_save_load_gives_identical_outputs(tmp_path, backbone, expert):
    policy = make_policy(backbone, expert, "cross_attention")
    obs = fake_observation(policy.config, 2)
    before = policy.predict_action_chunk(obs, num_samples=2, seed=3)
    policy.save(tmp_path / "ckpt")
    expected = {CONFIG_FILE, WEIGHTS_FILE} | ({"backbone"} if backbone == "tiny" else set())
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == expected
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == policy.config
    assert torch.equal(loaded.predict_action_chunk(obs, num_samples=2, seed=3), before)


def test_saving_again_replaces_the_checkpoint_and_leaves_no_temporaries(tmp_path):
    policy = make_policy("cpu")
    policy.save(tmp_path / "ckpt")
    with torch.no_grad():
        policy.expert.head[-1].bias.add_(1.0)
    policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded = load_policy(tmp_path / "ckpt")
    assert torch.equal(loaded.expert.head[-1].bias, policy.expert.head[-1].bias)


def test_corrupt_weights_are_detected(tmp_path):
    make_policy("cpu").save(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_policy(tmp_path / "ckpt")
    weights.write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        load_policy(tmp_path / "ckpt")


def test_mismatched_config_names_the_tensors(tmp_path):
    make_policy("cpu").save(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    manifest["policy"]["expert"]["layers"] = 5
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\).*expert.decoder.layers.3"):
        load_policy(tmp_path / "ckpt")
    manifest["policy"]["expert"]["layers"] = 3
    manifest["policy"]["hidden_dim"] = 64
    (tmp_path / "ckpt" / CONFIG_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_policy(tmp_path / "ckpt")


@pytest.mark.parametrize("content, words", [
    (None, ["config.json", "missing"]), ("{not json", ["not JSON"]),
    ('{"format": "other"}', ["format", "vla_policy_checkpoint"]),
])
def test_broken_config_json(tmp_path, content, words):
    make_policy("cpu").save(tmp_path / "ckpt")
    cfg = tmp_path / "ckpt" / CONFIG_FILE
    cfg.unlink() if content is None else cfg.write_text(content)
    with pytest.raises(CheckpointError) as info:
        load_policy(tmp_path / "ckpt")
    for word in words:
        assert word in str(info.value)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_policy(tmp_path / "nothing")


def test_no_pickle_anywhere_in_the_project():
    """Checkpoints are safetensors + JSON: no torch.load / pickle in the source tree."""
    offenders = []
    for path in ROOT.glob("vla_*/**/*.py"):
        text = path.read_text()
        if "torch.load(" in text or "import pickle" in text or "yaml.load(" in text or "yaml.unsafe_load" in text:
            offenders.append(str(path))
    assert offenders == []
