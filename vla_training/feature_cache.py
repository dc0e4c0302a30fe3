"""On-disk cache of frozen-backbone features for stage-1 training.

Content-keyed: the key hashes the backbone's identity (config + a fingerprint of its weights), the
instruction and the raw bytes of every view, so a cache is reused across runs and experts and
never serves features of other weights or images. Entries are safetensors files (tokens (L, D)
without padding, pooled (D,)), written atomically; the cache is kept under `max_bytes` by deleting
the least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla_models.constants import OBS_IMAGES, OBS_INSTRUCTION
from vla_models.fusion import Features


def backbone_fingerprint(policy) -> str:
    digest = hashlib.sha256(json.dumps(policy.config.backbone.__dict__, default=str, sort_keys=True).encode())
    digest.update(json.dumps(policy.config.views).encode())
    for name, tensor in sorted(policy.backbone.model.state_dict().items()):
        if "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, directory: str | Path, policy, max_bytes: int = 20 * 2**30) -> None:
        if policy.backbone is None:
            raise ValueError("the feature cache needs a vision-language backbone (backbone.type is 'none')")
        if any(p.requires_grad for p in policy.backbone.parameters()):
            raise ValueError("the feature cache is for a frozen backbone (stage 1); this backbone has trainable "
                             "parameters (backbone.freeze false or LoRA on)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        self.max_bytes = max_bytes
        self.fingerprint = backbone_fingerprint(policy)
        self.hits = self.misses = 0

    def _key(self, images: dict, instruction: str, b: int) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(instruction.encode())
        for view in self.policy.config.views:
            digest.update(np.ascontiguousarray(np.asarray(images[view][b])).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    @torch.no_grad()
    def features(self, batch: dict) -> Features:
        """Backbone features for a batch (B, L_max, D) with mask, from the cache or computed once."""
        images, instructions = batch[OBS_IMAGES], batch[OBS_INSTRUCTION]
        keys = [self._key(images, text, b) for b, text in enumerate(instructions)]
        entries: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for key in keys:
            try:
                data = load_file(self._path(key))
                os.utime(self._path(key))  # LRU: touch on use
                entries.append((data["tokens"], data["pooled"]))
                self.hits += 1
            except (FileNotFoundError, SafetensorError):
                entries.append(None)
        missing = [b for b, e in enumerate(entries) if e is None]
        if missing:
            self.misses += len(missing)
            sub = {OBS_IMAGES: {v: images[v][missing] for v in images}, OBS_INSTRUCTION: [instructions[b] for b in missing]}
            prepared = self.policy.backbone.preprocess(sub[OBS_IMAGES], sub[OBS_INSTRUCTION], self.policy.config.views)
            out = self.policy.backbone(prepared)
            for j, b in enumerate(missing):
                tokens = out.tokens[j][out.mask[j]].cpu().contiguous()
                entries[b] = (tokens, out.pooled[j].cpu().contiguous())
                self._store(keys[b], *entries[b])
            self._enforce_cap()
        return _pad(entries, self.policy.device)

    def _store(self, key: str, tokens: torch.Tensor, pooled: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        save_file({"tokens": tokens, "pooled": pooled}, tmp)
        os.replace(tmp, path)

    def _enforce_cap(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.directory.glob("*/*.safetensors")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def _pad(entries: list[tuple[torch.Tensor, torch.Tensor]], device) -> Features:
    length = max(t.shape[0] for t, _ in entries)
    dim = entries[0][0].shape[1]
    tokens = torch.zeros(len(entries), length, dim)
    mask = torch.zeros(len(entries), length, dtype=torch.bool)
    for b, (t, _) in enumerate(entries):
        tokens[b, :len(t)], mask[b, :len(t)] = t, True
    pooled = torch.stack([p for _, p in entries])
    return Features(tokens.to(device), mask.to(device), pooled.to(device))
