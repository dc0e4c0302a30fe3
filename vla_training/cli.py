"""The `vla` command line. Each subcommand has --help; errors are printed as one clear line (exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from vla_models import CheckpointError, ConfigError, ObservationError, PolicyConfig, preset
from vla_models.presets import PRESETS


def _resolve_config(spec: str) -> PolicyConfig:
    return preset(spec) if spec in PRESETS else PolicyConfig.from_file(spec)


def cmd_config(args: argparse.Namespace) -> int:
    """Print a preset or config file, validated and with every default filled in, as YAML."""
    config = _resolve_config(args.config)
    print(yaml.safe_dump({"policy": config.to_dict()}, sort_keys=False), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .smoke_demo import run_smoke_demo

    return run_smoke_demo(Path(args.out), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="VLA policy suite: configs, demo (more to come).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print a validated policy config (preset name or YAML/JSON file)")
    p.add_argument("config", help=f"a preset ({', '.join(sorted(PRESETS))}) or a YAML/JSON file")
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("demo", help="model smoke demo: both experts on the tiny Qwen-VL backbone")
    p.add_argument("--out", default="runs/smoke_demo", help="where the demo checkpoints go (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ObservationError) as exc:
        print(f"vla {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
