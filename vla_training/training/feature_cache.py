"""On-disk cache of frozen-backbone features for stage-1 training.

Content-keyed: the key hashes the backbone's identity (config, the prompt template, a fingerprint of its
weights, computed once by rank 0 and broadcast), the instruction and the stored bytes of every view's
frame (JPEG as recorded: a hit decodes no image; only misses are decoded and run through the
backbone), so a cache is reused across runs and experts and never serves features of other weights,
prompts or images. Entries are safetensors files written
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
from vla_models.constants import OBS_INSTRUCTION
from vla_models.fusion import Features

from ..data.episodes import Episode
from ..data.samples import FRAME_REFS


def backbone_fingerprint(policy) -> str:
    digest = hashlib.sha256(json.dumps(policy.config.backbone.__dict__, default=str, sort_keys=True).encode())
    digest.update(json.dumps(policy.config.views).encode())
    digest.update(policy.backbone.prompt_prefix(policy.config.views).encode())
    for name, tensor in sorted(policy.backbone.model.state_dict().items()):
        if "lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shared_fingerprint(policy, distributed: bool, rank: int) -> str:
    """backbone_fingerprint computed by rank 0 alone (it reads every weight: ~7.5 GB for the 3B) and broadcast."""
    if not distributed:
        return backbone_fingerprint(policy)
    import torch.distributed as dist

    box = [backbone_fingerprint(policy) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class FeatureCache:
    def __init__(self, directory: str | Path, policy, max_bytes: int = 20 * 2**30, fingerprint: str | None = None,
                 expected_entries: int = 0) -> None:
        """fingerprint: the backbone's (shared_fingerprint), else computed here; expected_entries: the samples the
        run will ask for, to warn when their features cannot fit under max_bytes (the cache would thrash)."""
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
        self.fingerprint = fingerprint or backbone_fingerprint(policy)
        self.expected_entries, self._warned = expected_entries, False
        self._episodes: dict[str, Episode] = {}
        self.hits = self.misses = 0
        files = sorted((p.stat().st_mtime, p.stem, p.stat().st_size) for p in self.directory.glob("*/*.safetensors"))
        self._index: OrderedDict[str, int] = OrderedDict((key, size) for _, key, size in files)  # oldest use first
        self.size = sum(self._index.values())

    def _episode(self, path: str) -> Episode:
        if path not in self._episodes:
            self._episodes[path] = Episode(path)
        return self._episodes[path]

    def _key(self, refs: dict, instruction: str) -> str:
        """refs: {view: (episode path, frame index)}; the frames' stored bytes are hashed, not decoded."""
        digest = hashlib.sha256(self.fingerprint.encode())
        digest.update(instruction.encode())
        for view in self.policy.config.views:
            path, k = refs[view]
            digest.update(hashlib.sha256(self._episode(path).frame_bytes(view, k)).digest())
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
        """Backbone features for a batch (B, L_max, D) with mask, from the cache or computed once. The batch holds
        FRAME_REFS (ChunkDataset(frame_refs=True)): only the frames of misses are decoded."""
        refs, instructions = batch[FRAME_REFS], batch[OBS_INSTRUCTION]
        keys = [self._key(r, text) for r, text in zip(refs, instructions)]
        entries = [self._load(key) for key in keys]
        missing = [b for b, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(missing)
        if missing:
            self.misses += len(missing)
            views = self.policy.config.views
            images = {v: np.stack([self._episode(refs[b][v][0]).frame(v, refs[b][v][1]) for b in missing])
                      for v in views}
            prepared = self.policy.backbone.preprocess(images, [instructions[b] for b in missing], views)
            out = self.policy.backbone(prepared)
            for j, b in enumerate(missing):
                tokens = out.tokens[j][out.mask[j]].cpu().contiguous() if self.needs_tokens else None
                entries[b] = (tokens, out.pooled[j].float().cpu().contiguous())
                self._store(keys[b], *entries[b])
            self._warn_if_too_small()
            self._enforce_cap()
        return _pad(entries, self.policy.device)

    def _warn_if_too_small(self) -> None:
        """Once: the run's features, at the size of those stored so far, would not fit under the cap."""
        if self._warned or not self.expected_entries or not self._index:
            return
        need = self.size / len(self._index) * self.expected_entries
        if need > self.max_bytes:
            self._warned = True
            print(f"warning: feature cache: {self.expected_entries} samples x {self.size / len(self._index) / 2**20:.2f} "
                  f"MB each (the token sequence, fusion {self.policy.config.fusion.mode}) = {need / 2**30:.1f} GB > the "
                  f"{self.max_bytes / 2**30:.1f} GB cap: least recently used entries are evicted every epoch, so most "
                  "steps recompute the backbone; raise --feature-cache-gb, or use concat/gated fusion (pooled "
                  "features only, a few KB each)", flush=True)

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
    dataset = ChunkDataset(episodes, config, frame_refs=True)
    mine = list(range(index, len(dataset), count))
    cache = FeatureCache(train.feature_cache, policy, int(train.feature_cache_gb * 2**30), expected_entries=len(dataset))
    for begin in tqdm(range(0, len(mine), batch_size), desc=f"cache shard {index}/{count}", disable=not progress,
                      unit="batch"):
        cache.features(collate([dataset[i] for i in mine[begin:begin + batch_size]]))
    return {"samples": len(mine), **cache.counts()}
