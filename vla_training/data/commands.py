"""`vla data ...`: create, import, inspect and plot datasets (called by vla_training.cli)."""

from __future__ import annotations

import argparse


def cmd_data_sim(args: argparse.Namespace) -> int:
    from .sim import generate_demos

    views = tuple(v for v in args.views.split(",") if v)
    summary = generate_demos(args.out, args.task, args.episodes, args.seed, views, args.image_size, args.modes,
                             progress=not args.no_progress, action_noise=args.action_noise)
    print(f"wrote {summary['kept']} successful episodes of {summary['attempted']} attempts to {args.out} "
          f"(modes: {summary['modes']})")
    return 0 if summary["kept"] == args.episodes else 1


def cmd_data_plot(args: argparse.Namespace) -> int:
    from .plots import plot_paths

    print(f"wrote {plot_paths(args.dataset, args.out)}")
    return 0


def cmd_data_import_seed(args: argparse.Namespace) -> int:
    from .import_seed import import_seed

    written = import_seed(args.src, args.out, progress=not args.no_progress, rate=args.rate)
    print(f"wrote {len(written)} episode(s) to {args.out}")
    return 0


def cmd_data_import_bag(args: argparse.Namespace) -> int:
    from .import_bag import import_bags

    written = import_bags(args.bags, args.topics, args.out, progress=not args.no_progress, rate=args.rate)
    print(f"wrote {len(written)} episode(s) to {args.out}")
    return 0


def cmd_data_export_lerobot(args: argparse.Namespace) -> int:
    from .lerobot_export import export_lerobot

    out = export_lerobot(args.dataset, args.out, args.repo_id, fps=args.fps, vcodec=args.vcodec,
                         progress=not args.no_progress)
    print(f"wrote LeRobotDataset v3.0 {args.repo_id} to {out}")
    return 0


def cmd_data_import_lerobot(args: argparse.Namespace) -> int:
    from .lerobot_import import import_lerobot

    views = None if args.views is None else [v for v in args.views.split(",") if v]
    written = import_lerobot(args.path, args.out, views=views, state_key=args.state, action_key=args.action,
                             meaning=args.action_meaning, to_deltas=args.to_deltas, progress=not args.no_progress)
    print(f"wrote {len(written)} episode(s) to {args.out}")
    return 0
