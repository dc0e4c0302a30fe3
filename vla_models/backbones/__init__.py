"""Vision-language backbones. `build_backbone` returns None for `type: none` (state/sensor-only)."""

from __future__ import annotations

from pathlib import Path

from ..config import BackboneConfig
from .qwen_vl import QwenVLBackbone, offline_qwen2_tokenizer


def build_backbone(config: BackboneConfig, files_dir: str | Path | None = None) -> QwenVLBackbone | None:
    if config.type == "none":
        return None
    return QwenVLBackbone(config, files_dir=files_dir)


__all__ = ["QwenVLBackbone", "build_backbone", "offline_qwen2_tokenizer"]
