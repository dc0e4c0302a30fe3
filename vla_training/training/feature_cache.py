"""On-disk cache of frozen-backbone features for stage-1 training.

Content-keyed: the key hashes the backbone's identity (config + a fingerprint of its weights), the
instruction and the raw bytes of every view, so a cache is reused across runs and experts and
never serves features of other weights or images. Entries are safetensors files written
atomically, holding what the fusion needs: the pooled vector (D,) fp32 always (8 KB at D = 2048:
all concat/gated read), and the token sequence (L, D) without padding in bf16 only for
cross_attention / none fusion (~1,350 x 2048 x 2 B = 5.5 MB; fp32 would be 11 MB). An entry without
tokens is a miss for a run that needs them (recomputed and rewritten). The cache is kept under
`max_bytes` by deleting the least recently used entries; its index (key -> size, in use order) is
read from the directory once and kept up to date, so a miss does not scan the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla_models import ConfigError
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
        self.needs_tokens = policy.config.fusion.mode in ("cross_attention", "none")
        self.fingerprint = backbone_fingerprint(policy)
        self.hits = self.misses = 0
        files = sorted((p.stat().st_mtime, p.stem, p.stat().st_size) for p in self.directory.glob("*/*.safetensors"))
        self._index: OrderedDict[str, int] = OrderedDict((key, size) for _, key, size in files)  # oldest use first
        self.size = sum(self._index.values())

    def _key(self, images: dict, instruction: str, b: int) -> str:
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(instruction.encode())
        for view in self.policy.config.views:
            digest.update(np.ascontiguousarray(np.asarray(images[view][b])).tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[torch.Tensor | None, torch.Tensor] | None:
        if key not in self._index:
            return None
        try:
            data = load_file(self._path(key))
        except (FileNotFoundError, SafetensorError):  # removed or corrupt meanwhile: recompute
            self.size -= self._index.pop(key, 0)
            return None
        if self.needs_tokens and "tokens" not in data:
            return None
        os.utime(self._path(key))  # LRU across runs: touch on use
        self._index.move_to_end(key)
        tokens = data["tokens"].float() if "tokens" in data else None
        return tokens, data["pooled"]

    @torch.no_grad()
    def features(self, batch: dict) -> Features:
        """Backbone features for a batch (B, L_max, D) with mask, from the cache or computed once."""
        images, instructions = batch[OBS_IMAGES], batch[OBS_INSTRUCTION]
        keys = [self._key(images, text, b) for b, text in enumerate(instructions)]
        entries = [self._load(key) for key in keys]
        missing = [b for b, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(missing)
        if missing:
            self.misses += len(missing)
            sub = {OBS_IMAGES: {v: images[v][missing] for v in images}, OBS_INSTRUCTION: [instructions[b] for b in missing]}
            prepared = self.policy.backbone.preprocess(sub[OBS_IMAGES], sub[OBS_INSTRUCTION], self.policy.config.views)
            out = self.policy.backbone(prepared)
            for j, b in enumerate(missing):
                tokens = out.tokens[j][out.mask[j]].cpu().contiguous() if self.needs_tokens else None
                entries[b] = (tokens, out.pooled[j].float().cpu().contiguous())
                self._store(keys[b], *entries[b])
            self._enforce_cap()
        return _pad(entries, self.policy.device)

    def _store(self, key: str, tokens: torch.Tensor | None, pooled: torch.Tensor) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        os.close(fd)
        save_file({"pooled": pooled, **({"tokens": tokens.to(torch.bfloat16)} if tokens is not None else {})}, tmp)
        os.replace(tmp, path)
        self.size += path.stat().st_size - self._index.pop(key, 0)
        self._index[key] = path.stat().st_size

    def _enforce_cap(self) -> None:
        while self.size > self.max_bytes and len(self._index) > 1:
            key, size = self._index.popitem(last=False)  # least recently used
            self._path(key).unlink(missing_ok=True)
            self.size -= size

    def counts(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._index), "bytes": self.size}


def _pad(entries: list[tuple[torch.Tensor | None, torch.Tensor]], device) -> Features:
    """(tokens or None, pooled) per sample -> Features; pooled-only entries give zero-length tokens."""
    pooled = torch.stack([p for _, p in entries])
    length = max((t.shape[0] for t, _ in entries if t is not None), default=0)
    tokens = torch.zeros(len(entries), length, pooled.shape[1])
    mask = torch.zeros(len(entries), length, dtype=torch.bool)
    for b, (t, _) in enumerate(entries):
        if t is not None:
            tokens[b, :len(t)], mask[b, :len(t)] = t, True
    return Features(tokens.to(device), mask.to(device), pooled.to(device))


def build_cache(train_overrides: dict, shard: tuple[int, int] = (0, 1), batch_size: int = 8,
                progress: bool = True) -> dict:
    """`vla cache build`: the features of every sample of a dataset into the cache before training (stage 1).
    Resumable (cached samples are hits, not recomputed) and shardable: shard (i, n) takes samples i, i+n,
    ... so n processes (one per GPU) fill one cache together."""
    from tqdm import tqdm

    from vla_models import build_policy

    from ..data.episodes import list_episodes
    from ..data.samples import ChunkDataset, check_episode, collate
    from .config import load_train_config

    train, config = load_train_config(train_overrides)
    if not train.feature_cache:
        raise ConfigError("vla cache build: expected --cache DIR")
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(f"--shard: expected I/N with 0 <= I < N, got {index}/{count}")
    episodes = list_episodes(train.dataset)
    for ep in episodes:
        check_episode(ep, config)
    device = "cuda" if train.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if train.device == "auto" else train.device)
    torch.manual_seed(train.seed)  # as vla train does: a randomly initialised backbone gets the same weights
    policy = build_policy(config).to(device).eval()
    cache = FeatureCache(train.feature_cache, policy, int(train.feature_cache_gb * 2**30))
    dataset = ChunkDataset(episodes, config)
    mine = list(range(index, len(dataset), count))
    for begin in tqdm(range(0, len(mine), batch_size), desc=f"cache shard {index}/{count}", disable=not progress,
                      unit="batch"):
        cache.features(collate([dataset[i] for i in mine[begin:begin + batch_size]]))
    return {"samples": len(mine), **cache.counts()}
