"""The trainer's resumable state without pickle: tensors in safetensors, the rest in JSON.

Optimizer and scheduler state_dicts are split into their tensors (`optimizer.<param>.<name>`) and
JSON-able values; torch's RNG state is a uint8 tensor, one per rank (`rng.torch` = rank 0's,
`rng.torch.rank<N>` = rank N's: every rank draws its own noise), and on CUDA each rank's GPU RNG state
beside it (`rng.cuda`, `rng.cuda.rank<N>`). `load_train_state` reverses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vla_models import CheckpointError

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        raise TypeError("tensors belong in the safetensors file")
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _rng_key(rank: int, kind: str = "torch") -> str:
    return f"rng.{kind}" if rank == 0 else f"rng.{kind}.rank{rank}"


def save_train_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler, progress: dict,
                     ema=None, rng_states: list[torch.Tensor] | None = None,
                     cuda_rng_states: list[torch.Tensor] | None = None) -> None:
    """rng_states: every rank's torch RNG state (default: this process's, as rank 0's); cuda_rng_states:
    every rank's torch.cuda RNG state of its device (training on CUDA)."""
    tensors: dict[str, torch.Tensor] = {_rng_key(rank): state.contiguous() for rank, state in
                                        enumerate(rng_states or [torch.get_rng_state()])}
    tensors.update({_rng_key(rank, "cuda"): state.cpu().contiguous() for rank, state in
                    enumerate(cuda_rng_states or [])})
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, state in opt["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    if ema is not None:
        for key, value in ema.state_dict().items():
            tensors[f"ema.{key}"] = value.detach().cpu().contiguous().clone()
    save_file(tensors, directory / STATE_TENSORS)
    meta = {"progress": progress, "optimizer_param_groups": _jsonable(opt["param_groups"]),
            "optimizer_scalars": _jsonable(scalars), "scheduler": _jsonable(scheduler.state_dict())}
    (directory / STATE_JSON).write_text(json.dumps(meta, indent=2))


def load_train_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler,
                     ema=None, rank: int = 0, device: torch.device | None = None) -> dict:
    """Restore optimizer, scheduler, EMA and this rank's RNG (on a CUDA `device` also its GPU RNG); returns the
    saved progress dict. A rank the checkpoint has no RNG state for (it was written by fewer ranks, or on
    CPU) keeps the RNG it has (seeded per rank)."""
    try:
        tensors = load_file(directory / STATE_TENSORS)
        meta = json.loads((directory / STATE_JSON).read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{directory}: no trainer state ({exc.filename}); --resume needs a checkpoint written "
                              "by vla train (last/ or checkpoints/step_*)") from None
    except (SafetensorError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"{directory}: trainer state is corrupt ({exc})") from exc
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in _from_json(meta["optimizer_scalars"]).items():
        state.setdefault(int(pid), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": _from_json(meta["optimizer_param_groups"])})
    scheduler.load_state_dict(_from_json(meta["scheduler"]))
    if ema is not None:
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    if _rng_key(rank) in tensors:
        torch.set_rng_state(tensors[_rng_key(rank)])
    else:
        print(f"resume: {directory} holds no RNG state for rank {rank} (written by fewer ranks); this rank's "
              "noise continues from its own seed", flush=True)
    if device is not None and device.type == "cuda" and _rng_key(rank, "cuda") in tensors:
        torch.cuda.set_rng_state(tensors[_rng_key(rank, "cuda")], device)
    return meta["progress"]
