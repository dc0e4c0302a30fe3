"""`vla eval`, `vla compare`, `vla bench`, `vla bag-eval` (called by vla_training.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from vla_models import ConfigError

from ..files import write_json_atomic


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import closed_loop, diversity, load_for_eval, offline_path_error, sampling_options, stage_latency

    if args.expert_dtype != "float32" and not args.sim:
        raise ConfigError(f"--expert-dtype {args.expert_dtype}: applies to the closed loop only; expected --sim TASK")
    policy = load_for_eval(args.checkpoint, args.device, args.backbone)
    result: dict = {"checkpoint": str(args.checkpoint), "expert": policy.config.expert.type}
    if args.sim:
        engine = policy
        if args.expert_dtype != "float32":  # the expert's weights in bfloat16 (as the GPU runner can run it)
            import torch

            from vla_models.static_runner import StaticRunner

            engine = StaticRunner(policy, expert_dtype=getattr(torch, args.expert_dtype))
            result["expert_dtype"] = args.expert_dtype
        if args.chunk_execution == "rtc" and args.expert_dtype != "float32":
            raise ConfigError("--chunk-execution rtc: guided sampling runs in the policy, not the bf16 expert runner; "
                              "drop --expert-dtype")
        label = policy.expert.sampling(**sampling_options(policy, args.sampler, args.steps)).label
        seeds = _placement_seeds(args.placement_seeds) if args.placement_seeds else [args.seed]
        runs = [closed_loop(
            engine, args.sim, args.episodes, seed, execute=args.execute, max_steps=args.max_steps,
            sampler=args.sampler, steps=args.steps, sample_seed=args.sample_seed,
            save_rollouts=args.save_rollouts, out_dir=Path(args.json).parent / "rollouts" if args.json else None,
            progress=not args.no_progress, episode_log=args.episode_log, image_size=args.image_size,
            chunk_execution=args.chunk_execution, delay=args.delay, targets=args.targets) for seed in seeds]
        result["closed_loop"] = {label: runs[0] if len(runs) == 1 else pool_placement_sets(runs)}
        for cl in [*runs, *([result["closed_loop"][label]] if len(runs) > 1 else [])]:
            print(f"closed loop {label} (placements {cl['placement_seed']}, {args.chunk_execution}, delay "
                  f"{args.delay}, {args.targets} targets): {cl['successes']}/{cl['episodes']} = {100 * cl['success_rate']:.0f} % "
                  f"(95 % CI {100 * cl['success_ci95'][0]:.0f}-{100 * cl['success_ci95'][1]:.0f} %), "
                  f"mean length {cl['length']['mean']:.0f}")
    if args.dataset:
        result["offline"] = offline_path_error(policy, args.dataset, sampler=args.sampler, steps=args.steps)
        o = result["offline"]["overall_mm"]
        print(f"offline path error: mean {o['mean']:.2f} mm, median {o['median']:.2f}, p95 {o['p95']:.2f} "
              f"({result['offline']['samples']} samples)")
        if args.latency:
            result["latency"] = stage_latency({policy.config.expert.type: policy}, args.dataset)
            for label, stages in result["latency"].items():
                print(f"latency {label}: " + ", ".join(f"{k} {v['median']:.2f}" for k, v in stages.items()))
    if args.diversity:
        result["diversity"] = diversity(policy, args.diversity, k=args.samples)
        print("diversity: " + json.dumps({k: v for k, v in result["diversity"].items() if k != "dataset"}))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _placement_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--placement-seeds: expected a comma list of integers such as 1,2,3, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--placement-seeds: expected distinct seeds such as 1,2,3, got {text!r}")
    return seeds


def pool_placement_sets(runs: list[dict]) -> dict:
    """Several placement sets' closed-loop results -> one pooled result (successes over every episode, Wilson
    interval of the pool) with each set's own figures under `per_placement_set`."""
    from .evaluate import obstacle_summary, summarise, wilson_interval

    episodes = [r for run in runs for r in run["per_episode"]]
    wins, n = sum(run["successes"] for run in runs), sum(run["episodes"] for run in runs)
    return {**{k: runs[0][k] for k in ("task", "execute", "max_steps", "sampler", "sampling", "sample_seed",
                                        "chunk_execution", "delay", "targets")},
            "placement_seed": [run["placement_seed"] for run in runs], "episodes": n, "successes": wins,
            "success_rate": wins / max(n, 1), "success_ci95": wilson_interval(wins, n),
            "length": summarise(r["length"] for r in episodes),
            "length_success": summarise(r["length"] for r in episodes if r["success"]),
            "boundary_jerk": summarise(r["boundary_jerk"] for r in episodes if r["boundary_jerk"] is not None),
            "per_placement_set": {str(run["placement_seed"]): {k: run[k] for k in ("successes", "episodes",
                                                                                  "success_rate", "success_ci95")}
                                  for run in runs},
            **obstacle_summary(episodes), "per_episode": episodes, "rollouts": [x for run in runs for x in run["rollouts"]]}


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import write_report

    evals = []
    for run in args.runs:
        path = Path(run) / "eval.json" if Path(run).is_dir() else Path(run)
        if not path.exists():
            raise ConfigError(f"{path}: no evaluation; run `vla eval --checkpoint {run} ... --json {path}` first")
        data = json.loads(path.read_text())
        data.setdefault("name", Path(run).name if Path(run).is_dir() else path.stem)
        evals.append(data)
    report = write_report(evals, args.out, {"runs": ", ".join(args.runs)})
    print(f"report: {report}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench

    size = _parse_size(args.image_size)
    result = run_bench(args.spec, device=args.device, runners=args.runners.split(",") if args.runners else None,
                       image_size=size, repeats=args.repeats, warmup=args.warmup,
                       variants=args.variants.split(",") if args.variants else None,
                       on_update=(lambda partial: write_json_atomic(args.json, partial)) if args.json else None,
                       overrides=_parse_overrides(args.override))
    print(format_table(result))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _parse_overrides(items: list[str] | None) -> dict:
    """['expert.layers=4', 'hidden_dim=1024'] -> {'expert.layers': 4, 'hidden_dim': 1024} (values parsed as YAML)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--override: expected KEY=VALUE such as expert.layers=4, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _parse_size(text: str) -> tuple[int, int]:
    """'640x360' (W x H) -> (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size: expected WIDTHxHEIGHT such as 640x360, got {text!r}") from None
    if w < 28 or h < 28:
        raise ConfigError(f"--image-size: expected at least 28x28, got {text!r}")
    return h, w


def cmd_bag_eval(args: argparse.Namespace) -> int:
    from .bag_eval import bag_eval

    if not args.checkpoint and not args.chunks_topic:
        raise ConfigError("bag-eval: expected --checkpoint RUN (offline) or --chunks-topic TOPIC (a replay's outputs)")
    result = bag_eval(args.bag, args.checkpoint, args.topics, chunks_topic=args.chunks_topic,
                      mm_per_unit=args.mm_per_unit, max_frames=args.max_frames, sampler=args.sampler,
                      steps=args.steps, plot=args.plot, progress=not args.no_progress, device=args.device,
                      backbone=args.backbone)
    err, total = result["path_error_mm"], result["latency_ms"].get("total_ms", {})
    print(f"{result['source']}: {result['evaluated']}/{result['anchors']} anchors; path error mean "
          f"{err['mean']:.2f} mm, median {err['median']:.2f}, p95 {err['p95']:.2f}; latency median "
          f"{total.get('median') or 0:.1f} ms" + (f"; plot {result['plot']}" if "plot" in result else ""))
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """vla export --merge-lora RUN OUT: a checkpoint to serve, with the LoRA adapters merged into the backbone."""
    from vla_models import load_policy
    from vla_models.checkpoint import merge_lora

    from .evaluate import resolve_checkpoint

    if not args.merge_lora:
        raise ConfigError("export: nothing to do; expected --merge-lora (the only export so far)")
    source = resolve_checkpoint(args.run)
    policy = load_policy(source, backbone_pretrained=args.backbone)
    layers = merge_lora(policy)
    policy.save(args.out)
    print(f"{source} -> {args.out}: LoRA merged into {layers} backbone layer(s); every backbone weight is stored "
          "(backbone.lora.merged: true)")
    return 0
