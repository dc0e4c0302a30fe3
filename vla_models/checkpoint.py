"""Checkpoints: `load_policy` rebuilds a VLAPolicy from a checkpoint directory; `save_policy` writes one.

The format (config.json + model.safetensors + backbone/, atomic, hashed, no pickle) is in
checkpoint_files.py; this module adds the model class on top of it, so that policy.py can save
through checkpoint_files without an import circle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint_files import (BACKBONE_DIR, CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE,
                               check_state, read_manifest, read_weights, save_policy)
from .config import PolicyConfig
from .errors import CheckpointError, ConfigError
from .policy import VLAPolicy

__all__ = ["BACKBONE_DIR", "CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "load_policy", "merge_lora",
           "read_manifest", "save_policy"]


def merge_lora(policy: VLAPolicy) -> int:
    """Merge the backbone's LoRA adapters into its weights, in place (`vla export --merge-lora`); returns the number
    of layers merged. The config then says `backbone.lora.merged`: saving stores the whole backbone, loading builds
    no adapters, and inference costs what the base model costs (the latency figures assume this)."""
    if policy.backbone is None or not policy.config.backbone.lora.enabled:
        raise ConfigError("merge_lora: the policy has no LoRA adapters to merge (backbone.lora.enabled is false); "
                          "expected a checkpoint trained with LoRA (stage 2)")
    merged = policy.backbone.merge_lora()
    policy.config = policy.config.replace(**{"backbone.lora.enabled": False, "backbone.lora.merged": True})
    policy.backbone.config = policy.config.backbone
    return merged


def load_policy(path: str | Path, device: str | torch.device = "cpu", backbone_pretrained: str | None = None):
    """Rebuild a policy from a checkpoint directory; outputs are identical to the saved policy's.

    backbone_pretrained: where the backbone's base weights are on this machine (a local directory or
    hub id), when not at the path recorded at training (the robot PC is not the training server)."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        config = PolicyConfig.from_dict(manifest.get("policy"))
        if backbone_pretrained:
            config = config.replace(**{"backbone.pretrained": str(backbone_pretrained)})
    except ConfigError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: field 'policy': {exc}") from exc
    weights, tensors = read_weights(path, manifest)
    backbone_dir = path / BACKBONE_DIR
    policy = VLAPolicy(config, backbone_files=backbone_dir if backbone_dir.is_dir() else None)
    check_state(policy, tensors, weights)
    policy.load_state_dict(tensors, strict=False)
    return policy.to(device).eval()
