"""Checkpoint files: a directory with `config.json` + `model.safetensors` (+ `backbone/` tokenizer files).

Writing and checking the files, for any module with `config`, `state_dict()` and `backbone`;
`checkpoint.py` turns a directory back into a VLAPolicy (this module knows no model class).

No pickle anywhere: tensors are safetensors, the config is JSON data. The directory is written
next to its destination and swapped in by rename, so a reader never sees a half-written
checkpoint; `config.json` records the SHA-256 of the weights, checked on load.

With a pretrained, frozen backbone its base weights are not copied (they are reloaded from
`backbone.pretrained`); LoRA adapters and everything else are saved. Once the adapters are merged into the
backbone (`backbone.lora.merged`, `vla export --merge-lora`) every backbone weight is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import PolicyConfig
from .errors import CheckpointError

FORMAT = "vla_policy_checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_DIR = "backbone"


def _is_reloaded_base_weight(config: PolicyConfig, key: str) -> bool:
    bb = config.backbone
    return bool(bb.pretrained) and bb.freeze and not bb.lora.merged and key.startswith("backbone.model.") \
        and "lora_" not in key


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def save_policy(policy, path: str | Path, extra: Callable[[Path], None] | None = None) -> Path:
    """Write `policy` to the checkpoint directory `path`, replacing any previous one atomically.

    extra: called with the temporary directory before it is swapped in, to add files (e.g. the
    trainer's state) that must appear together with the weights or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config: PolicyConfig = policy.config
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in policy.state_dict().items():
        if _is_reloaded_base_weight(config, key):
            continue
        value = value.detach().cpu().contiguous()
        if value.data_ptr() in seen and value.numel():  # tied weights: safetensors wants distinct storage
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[key] = value
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        if policy.backbone is not None:
            policy.backbone.save_files(tmp / BACKBONE_DIR)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "policy": config.to_dict(),
                    "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(tmp / WEIGHTS_FILE),
                                "excludes_pretrained_backbone": any(_is_reloaded_base_weight(config, k)
                                                                    for k in policy.state_dict())}}
        (tmp / CONFIG_FILE).write_text(json.dumps(manifest, indent=2))
        if extra is not None:
            extra(tmp)
        _fsync_dir_tree(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_in(new: Path, path: Path) -> None:
    """Replace directory `path` by `new`. A crash leaves either the old or the new checkpoint at a name."""
    if not path.exists():
        os.replace(new, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: str | Path) -> dict:
    """The parsed `config.json` of a checkpoint, with clear errors for every way it can be wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (expected a directory with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}, written by policy.save or vla train)")
    cfg_file = path / CONFIG_FILE
    try:
        manifest = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_file}: missing; this directory is not a complete checkpoint") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: unreadable or not JSON ({exc}); the checkpoint is corrupt") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_file}: field 'format': expected {FORMAT!r}, got "
                              f"{manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: field 'format_version': expected {FORMAT_VERSION}, "
                              f"got {manifest.get('format_version')!r}")
    return manifest


def read_weights(path: Path, manifest: dict) -> tuple[Path, dict[str, torch.Tensor]]:
    """The checkpoint's tensors (on the CPU), after checking the weights file against the manifest's hash."""
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; the checkpoint has no weights")
    expected = manifest.get("weights", {}).get("sha256")
    if expected != _sha256(weights):
        raise CheckpointError(f"{weights}: SHA-256 does not match {CONFIG_FILE}; the file is corrupt or was replaced")
    try:
        return weights, load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc


def check_state(policy, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    expected = policy.state_dict()
    missing = [k for k in expected if k not in tensors and not _is_reloaded_base_weight(policy.config, k)]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
             for k, v in tensors.items() if k in expected and expected[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:5]}")
    if problems:
        raise CheckpointError(f"{weights}: does not match the model its config.json describes: " + "; ".join(problems))
