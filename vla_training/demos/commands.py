"""`vla demo`, `vla smoke-demo`, `vla ros-demo` (called by vla_training.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path


from vla_models import ConfigError

from ..files import write_json_atomic


def cmd_demo(args: argparse.Namespace) -> int:
    vision_only = args.set or args.placement_seeds is not None or args.image_size is not None or args.seeing_only \
        or args.steps is not None or args.compare_experts or args.expert is not None
    if args.modes:
        if args.vision or vision_only:
            raise ConfigError("--modes: a state-only experiment of its own; --vision, --placement-seeds, --image-size, "
                              "--seeing-only, --compare-experts, --steps, --expert and -o do not apply")
        from .modes_demo import run_modes_demo

        run_modes_demo(args.out or "runs/modes", args.data or "data/modes", quick=args.quick)
        return 0
    if not args.vision and vision_only:
        raise ConfigError("--placement-seeds, --image-size, --seeing-only, --compare-experts, --steps, --expert and "
                          "-o apply to --vision only")
    if args.vision:
        from .vision_demo import TASK, run_vision_demo

        if args.task != TASK:
            raise ConfigError(f"--vision: the experiment is defined for {TASK} (its probe reads the peg and the hole); "
                              f"got --task {args.task}")
        if args.minutes <= 0:
            raise ConfigError(f"--minutes: expected a training budget > 0, got {args.minutes}")
        if args.compare_experts:
            from .vision_experts import run_vision_experts

            if args.seeing_only or args.expert is not None:
                raise ConfigError("--compare-experts trains the seeing policy with each expert; --seeing-only and "
                                  "--expert do not apply")
            run_vision_experts(args.out or "runs/vision_experts", args.data or "data/vision", minutes=args.minutes,
                               quick=args.quick, placement_seeds=args.placement_seeds, overrides=args.set,
                               steps=args.steps, **({} if args.image_size is None else {"image_size": args.image_size}))
            return 0
        run_vision_demo(args.out or "runs/vision", args.data or "data/vision", minutes=args.minutes, quick=args.quick,
                        placement_seeds=args.placement_seeds, overrides=args.set, seeing_only=args.seeing_only,
                        steps=args.steps, **({} if args.expert is None else {"expert": args.expert}),
                        **({} if args.image_size is None else {"image_size": args.image_size}))
        return 0
    from .demo import run_demo

    run_demo(args.out or "runs/demo", args.data or "data/demo", quick=args.quick, task=args.task)
    return 0


def cmd_smoke_demo(args: argparse.Namespace) -> int:
    from .smoke_demo import run_smoke_demo

    return run_smoke_demo(Path(args.out), quick=args.quick)


def cmd_ros_demo(args: argparse.Namespace) -> int:
    from .ros_demo import run_ros_demo

    from ..evaluation.evaluate import resolve_checkpoint, wilson_interval

    summary = run_ros_demo(resolve_checkpoint(args.checkpoint), episodes=args.episodes, placement_seed=args.seed,
                           execute_steps=args.execute, task=args.task, max_steps=args.max_steps, sampler=args.sampler,
                           steps=args.steps, log_dir=args.logs, command_interface=args.command_interface,
                           latency_s=args.latency_ms / 1000.0, chunk_execution=args.chunk_execution)
    lo, hi = wilson_interval(summary["successes"], summary["episodes"])
    summary["success_ci95"] = [lo, hi]
    print(f"through ROS 2: {summary['successes']}/{summary['episodes']} = {100 * summary['success_rate']:.0f} % "
          f"(95 % CI {100 * lo:.0f}-{100 * hi:.0f} %) on {summary['task']} placements of seed {summary['placement_seed']}")
    if args.json:
        write_json_atomic(args.json, summary)
        print(f"wrote {args.json}")
    return 0
