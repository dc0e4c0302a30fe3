"""The trainer's process-level plumbing: rank and device setup, per-rank seeds and RNG states, the
cross-rank mean of a logged value, and whether DDP must look for unused parameters."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one rank's training noise: distinct for every (seed, rank) pair."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def setup_process(device_name: str) -> tuple[bool, int, int, torch.device]:
    """(distributed, rank, world, device) of this process. On CUDA the device is made current *before* the
    process group (NCCL) or anything else touches CUDA, so that no rank opens a context on GPU 0."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if device_name == "auto":
        device_name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    return distributed, rank, world, device


def rng_devices(device: torch.device) -> list:
    """The CUDA devices `torch.random.fork_rng` must fork: this process's only ([] on CPU); its default
    forks (and opens a context on) every visible GPU."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def gather_rng_states(distributed: bool, world: int, device: torch.device) \
        -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Every rank's torch CPU RNG state and, on CUDA, its device's RNG state (None on CPU); a tensor
    collective (NCCL takes device tensors; no pickle)."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    if not distributed:
        return [states[0]], states[1:] or None
    sizes = [len(s) for s in states]
    mine = torch.cat(states).to(device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    parts = [list(torch.split(s.cpu(), sizes)) for s in every]
    return [p[0].clone() for p in parts], [p[1].clone() for p in parts] if device.type == "cuda" else None


def mean_across_ranks(value: float, distributed: bool, world: int, device: torch.device) -> float:
    """`value` averaged over the ranks (an all-reduce of one float64 tensor on the training device)."""
    if not distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item()) / world


def find_unused_parameters(policy, setting: bool | None, cached_features: bool) -> bool:
    """Whether DDP must search the graph for trainable parameters the forward skips (costly: a graph walk
    every step). `setting` (train field find_unused_parameters) decides when given; otherwise only a
    backbone with trainable parameters whose features come from the cache would be skipped: every other
    trainable parameter (modules of absent inputs are not built) takes part in every forward, of every
    expert and fusion (test_training_scale_2 checks that)."""
    if setting is not None:
        return bool(setting)
    backbone = getattr(policy, "backbone", None)
    return cached_features and backbone is not None and any(p.requires_grad for p in backbone.parameters())
