"""`vla train`, `vla cache build` and `vla data info` (which reads the training config) (called by vla_training.cli)."""

from __future__ import annotations

import argparse
import json
import os


from vla_models import ConfigError


def train_overrides(args: argparse.Namespace) -> dict:
    """`vla train`'s arguments -> the overrides `load_train_config` reads."""
    overrides = {k: v for k, v in vars(args).items() if k not in ("func", "command", "data_command", "no_progress")}
    overrides["progress"] = not args.no_progress
    overrides["resume"] = args.resume or None
    overrides["wandb"] = args.wandb or None
    overrides["tensorboard"] = args.tensorboard or None
    pretrained = overrides.pop("pretrained", None)
    if pretrained:
        overrides["set"] = [*overrides.get("set", []), f"backbone.pretrained={pretrained}"]
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    progress = train(train_overrides(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {progress['step']} steps; checkpoints in {args.out}/last and {args.out}/best")
    return 0


def cmd_cache_build(args: argparse.Namespace) -> int:
    from .feature_cache import build_cache

    index, _, count = args.shard.partition("/")
    try:
        shard = (int(index), int(count or 1))
    except ValueError:
        raise ConfigError(f"--shard: expected I/N such as 0/4, got {args.shard!r}") from None
    result = build_cache({"config": args.config, "dataset": args.dataset, "feature_cache": args.cache,
                          "feature_cache_gb": args.cache_gb, "set": args.set, "device": args.device}, shard,
                         args.batch_size, progress=not args.no_progress)
    print(f"cache {args.cache}: {result['samples']} samples of shard {args.shard}: {result['hits']} already cached, "
          f"{result['misses']} computed; {result['entries']} entries, {result['bytes'] / 2**20:.1f} MB")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    """`vla data info`; with --config it says what training would do with each episode (the training config)."""
    from ..data.dataset_info import dataset_info, format_info

    config = None
    if args.config or args.set:
        from .config import load_train_config

        _, config = load_train_config({"config": args.config or "cpu", "set": list(args.set)})
    info = dataset_info(args.dataset, check=args.check, config=config)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
