"""The `vla` command line. Each subcommand has --help; errors are printed as one clear line (exit 2)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from vla_models import CheckpointError, ConfigError, ObservationError, PolicyConfig, preset
from vla_models.experts import EXPERTS
from vla_models.presets import PRESETS

from .episodes import DatasetError
from .files import write_json_atomic


def _resolve_config(spec: str) -> PolicyConfig:
    return preset(spec) if spec in PRESETS else PolicyConfig.from_file(spec)


def cmd_config(args: argparse.Namespace) -> int:
    """Print a preset or config file, validated and with every default filled in, as YAML."""
    config = _resolve_config(args.config)
    print(yaml.safe_dump({"policy": config.to_dict()}, sort_keys=False), end="")
    return 0


def cmd_smoke_demo(args: argparse.Namespace) -> int:
    from .smoke_demo import run_smoke_demo

    return run_smoke_demo(Path(args.out), quick=args.quick)


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.vision and (args.set or args.placement_seeds is not None or args.image_size is not None):
        raise ConfigError("--placement-seeds, --image-size and -o apply to --vision only")
    if args.vision:
        from .vision_demo import TASK, run_vision_demo

        if args.task != TASK:
            raise ConfigError(f"--vision: the experiment is defined for {TASK} (its probe reads the peg and the hole); "
                              f"got --task {args.task}")
        if args.minutes <= 0:
            raise ConfigError(f"--minutes: expected a training budget > 0, got {args.minutes}")
        run_vision_demo(args.out or "runs/vision", args.data or "data/vision", minutes=args.minutes, quick=args.quick,
                        placement_seeds=args.placement_seeds, overrides=args.set,
                        **({} if args.image_size is None else {"image_size": args.image_size}))
        return 0
    from .demo import run_demo

    run_demo(args.out or "runs/demo", args.data or "data/demo", quick=args.quick, task=args.task)
    return 0


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
        label = policy.expert.sampling(**sampling_options(policy, args.sampler, args.steps)).label
        result["closed_loop"] = {label: closed_loop(
            engine, args.sim, args.episodes, args.seed, execute=args.execute, max_steps=args.max_steps,
            sampler=args.sampler, steps=args.steps, sample_seed=args.sample_seed,
            save_rollouts=args.save_rollouts, out_dir=Path(args.json).parent / "rollouts" if args.json else None,
            progress=not args.no_progress, episode_log=args.episode_log, image_size=args.image_size)}
        cl = result["closed_loop"][label]
        print(f"closed loop {label}: {cl['successes']}/{cl['episodes']} = {100 * cl['success_rate']:.0f} % "
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


def cmd_ros_demo(args: argparse.Namespace) -> int:
    from .ros_demo import run_ros_demo

    from .evaluate import resolve_checkpoint, wilson_interval

    summary = run_ros_demo(resolve_checkpoint(args.checkpoint), episodes=args.episodes, placement_seed=args.seed,
                           execute_steps=args.execute, task=args.task, max_steps=args.max_steps, sampler=args.sampler,
                           steps=args.steps, log_dir=args.logs, command_interface=args.command_interface)
    lo, hi = wilson_interval(summary["successes"], summary["episodes"])
    summary["success_ci95"] = [lo, hi]
    print(f"through ROS 2: {summary['successes']}/{summary['episodes']} = {100 * summary['success_rate']:.0f} % "
          f"(95 % CI {100 * lo:.0f}-{100 * hi:.0f} %) on {summary['task']} placements of seed {summary['placement_seed']}")
    if args.json:
        write_json_atomic(args.json, summary)
        print(f"wrote {args.json}")
    return 0


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


def cmd_data_sim(args: argparse.Namespace) -> int:
    from .sim import generate_demos

    views = tuple(v for v in args.views.split(",") if v)
    summary = generate_demos(args.out, args.task, args.episodes, args.seed, views, args.image_size, args.modes,
                             progress=not args.no_progress)
    print(f"wrote {summary['kept']} successful episodes of {summary['attempted']} attempts to {args.out} "
          f"(modes: {summary['modes']})")
    return 0 if summary["kept"] == args.episodes else 1


def cmd_data_info(args: argparse.Namespace) -> int:
    from .dataset_info import dataset_info, format_info

    config = None
    if args.config or args.set:
        from .train import load_train_config

        _, config = load_train_config({"config": args.config or "cpu", "set": list(args.set)})
    info = dataset_info(args.dataset, check=args.check, config=config)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_data_plot(args: argparse.Namespace) -> int:
    from .plots import plot_paths

    print(f"wrote {plot_paths(args.dataset, args.out)}")
    return 0


def cmd_data_import_seed(args: argparse.Namespace) -> int:
    from .import_seed import import_seed

    written = import_seed(args.src, args.out, progress=not args.no_progress)
    print(f"wrote {len(written)} episode(s) to {args.out}")
    return 0


def cmd_data_import_bag(args: argparse.Namespace) -> int:
    from .import_bag import import_bags

    written = import_bags(args.bags, args.topics, args.out, progress=not args.no_progress)
    print(f"wrote {len(written)} episode(s) to {args.out}")
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


def _sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", help="the expert's sampler (diffusion: ddim | ddpm; flow: euler); default: the "
                                     "checkpoint's; the expert says what it accepts")
    p.add_argument("--steps", "--ddim-steps", dest="steps", type=int,
                   help="steps of an iterative expert: DDIM steps (diffusion), Euler steps (flow)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="VLA policy suite: data, training, demo.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print a validated policy config (preset name or YAML/JSON file)")
    p.add_argument("config", help=f"a preset ({', '.join(sorted(PRESETS))}) or a YAML/JSON file")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="the main job: sim data -> three experts -> evaluation -> report (make demo)")
    p.add_argument("--task", default="peg-insert-side-v3",
                   help="Meta-World task with a scripted policy (default: %(default)s; the bimodal set: this one only)")
    p.add_argument("--out", help="runs and report (default: runs/demo; with --vision runs/vision)")
    p.add_argument("--data", help="demonstration datasets, reused (default: data/demo; with --vision data/vision)")
    p.add_argument("--quick", action="store_true", help="a 2-3 minute smoke version with tiny budgets")
    p.add_argument("--vision", action="store_true", help="the vision experiment instead: a blind policy vs one that sees "
                                                         "through the tiny Qwen-VL (runs/vision/report.md)")
    p.add_argument("--minutes", type=float, default=60.0, help="--vision: training budget of the seeing policy in "
                                                               "minutes of this machine (default: %(default)s)")
    p.add_argument("--placement-seeds", type=int, help="--vision: MT1 placement seeds of training demos, 48 demos "
                                                       "each (default 6)")
    p.add_argument("--image-size", type=int, help="--vision: camera resolution, rendered and seen, a multiple of "
                                                  "28 (default 112)")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="--vision: config overrides for both policies' training, e.g. backbone.size=3b (a GPU)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("smoke-demo", help="model smoke test: every expert on the tiny Qwen-VL backbone")
    p.add_argument("--out", default="runs/smoke_demo", help="where the checkpoints go (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.set_defaults(func=cmd_smoke_demo)

    p = sub.add_parser("eval", help="closed-loop success, offline path error, latency, diversity")
    p.add_argument("--checkpoint", required=True, help="a run directory (uses best/) or a checkpoint")
    p.add_argument("--sim", help="Meta-World task for closed-loop evaluation, e.g. peg-insert-side-v3")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1, help="placement seed (use another than the training data's)")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk (receding horizon)")
    p.add_argument("--max-steps", type=int, default=300)
    _sampling_arguments(p)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--save-rollouts", type=int, default=0, help="save this many rollouts as GIF + contact sheet")
    p.add_argument("--image-size", type=int, default=96, help="camera resolution in the closed loop (square; as the "
                                                              "training demos were rendered: vla data sim --image-size)")
    p.add_argument("--episode-log", help="append one JSON line per finished closed-loop episode to this file")
    p.add_argument("--expert-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="closed loop with the expert's weights in this dtype (bench's bf16-expert runner)")
    p.add_argument("--dataset", help="offline path error on this dataset")
    p.add_argument("--latency", action="store_true", help="per-stage latency (with --dataset for the inputs)")
    p.add_argument("--diversity", help="a (bimodal) dataset: K samples per observation, mode fractions")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    p.add_argument("--backbone", help="the backbone weights' directory on this machine (if not the trained-with path)")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="gather eval.json of several runs into DIR/report.md with plots")
    p.add_argument("runs", nargs="+", help="run directories holding eval.json (or eval JSON files)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="per-stage inference latency of every expert on one backbone (docs/performance.md)")
    p.add_argument("spec", nargs="?", default="tiny",
                   help="preset (tiny, cpu, 3b, ...) or checkpoint run(s) RUN[,RUN] (default tiny)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runners", help="comma list of eager,eager-bf16,static,graphs,compiled,compiled-backbone,"
                        "bf16-expert (default: those the device supports but the last two, slow to compile)")
    p.add_argument("--variants", help="comma list of regression,ddim-5,ddim-10,ddim-20,ddpm-100,flow-5,flow-10,flow-20 "
                                      "(default all)")
    p.add_argument("--image-size", default="640x360", help="camera image WIDTHxHEIGHT (default 640x360)")
    p.add_argument("--override", "-o", action="append", metavar="KEY=VALUE",
                   help="preset config override, repeatable (e.g. -o hidden_dim=1024 -o expert.layers=4)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", help="write every figure to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("cache", help="stage-1 feature cache: `vla cache build` fills it before training")
    csub = p.add_subparsers(dest="cache_command", required=True)
    p = csub.add_parser("build", help="backbone features of every sample (resumable, shardable across GPUs)")
    p.add_argument("--config", help="preset or YAML, as vla train (default: cpu)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache", required=True, help="cache directory (vla train --feature-cache)")
    p.add_argument("--cache-gb", dest="cache_gb", type=float, help="size cap in GB (default 20)")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as vla train")
    p.add_argument("--shard", default="0/1", help="I/N: this process takes samples I, I+N, ... (one per GPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_cache_build)

    p = sub.add_parser("ros-demo", help="closed loop through ROS 2: sim_robot_node + policy_node as processes")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best/) or checkpoint directory")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=1, help="MT1 placement seed (held out: not the training seed 0)")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk (receding horizon)")
    p.add_argument("--task", default="peg-insert-side-v3")
    p.add_argument("--max-steps", type=int, default=300)
    _sampling_arguments(p)
    p.add_argument("--command-interface", choices=["chunk", "servo_twist", "pose_target"], default="chunk",
                   help="chunk: the sim executes the ActionChunks (node in dry run); servo_twist / pose_target: the "
                        "armed node commands the sim as MoveIt Servo / a cartesian controller")
    p.add_argument("--logs", help="directory for the two nodes' logs")
    p.add_argument("--json", help="write the summary to this file")
    p.set_defaults(func=cmd_ros_demo)

    p = sub.add_parser("bag-eval", help="path error and latency of a policy on a rosbag2 (offline or a replay's outputs)")
    p.add_argument("bag", help="rosbag2 directory (sqlite3 or mcap)")
    p.add_argument("--checkpoint", help="run or checkpoint directory (offline: the policy runs here)")
    p.add_argument("--topics", default="config/bag_topics.yaml", help="topic map (as for data import-bag)")
    p.add_argument("--chunks-topic", help="evaluate the ActionChunk messages recorded on this topic instead "
                                          "(a live replay's output bag), e.g. /vla_policy/action_chunk")
    p.add_argument("--mm-per-unit", type=float, help="action units -> mm (default: the topic map's "
                                                     "mm_per_action_unit, else 1)")
    p.add_argument("--max-frames", type=int)
    _sampling_arguments(p)
    p.add_argument("--plot", help="PNG of predicted vs recorded trajectories")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    p.add_argument("--backbone", help="the backbone weights' directory on this machine (if not the trained-with path)")
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bag_eval)

    data = sub.add_parser("data", help="create, import and inspect datasets (docs/dataset.md)")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("sim", help="successful scripted-expert demonstrations from Meta-World")
    p.add_argument("--out", default="data/sim", help="dataset directory (default: %(default)s)")
    p.add_argument("--task", default="peg-insert-side-v3")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="placement seed (metaworld.MT1 seed)")
    p.add_argument("--views", default="corner,gripperPOV", help="comma-separated cameras; '' for no images")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--modes", type=int, default=1, help="2 = bimodal: a via-point left or right per episode")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data_sim)
    p = dsub.add_parser("info", help="episodes, lengths, rates, views, channels and action statistics")
    p.add_argument("dataset")
    p.add_argument("--check", action="store_true", help="read every array and validate it (slower); per-episode streams")
    p.add_argument("--config", help="a policy config (preset or YAML): say per episode what training would do with it")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as vla train")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("plot", help="top view of the episodes' end-effector paths, coloured by mode")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=cmd_data_plot)
    p = dsub.add_parser("import-seed", help="the seed's recordings (legacy recv_all_* or episode_* dirs)")
    p.add_argument("src", help="a session/episode directory or a folder of them")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data_import_seed)
    p = dsub.add_parser("import-bag", help="rosbag2 (sqlite3 or mcap) through rosbags; one episode per bag")
    p.add_argument("bags", nargs="+")
    p.add_argument("--topics", default="config/bag_topics.yaml", help="topic -> stream mapping (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_data_import_bag)

    p = sub.add_parser("train", help="train an action expert (torchrun for several processes)")
    p.add_argument("--expert", choices=list(EXPERTS))
    p.add_argument("--config", help="preset name or YAML file with policy: and train: sections (default: cpu)")
    p.add_argument("--dataset", "--dataset_dir", "--dataset-dir", dest="dataset", required=True)
    p.add_argument("--out", default="runs/train")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int)
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int)
    p.add_argument("--grad_accum", "--grad-accum", dest="grad_accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--diffusion_timesteps", "--diffusion-timesteps", dest="diffusion_timesteps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--stage", type=int, choices=[1, 2])
    p.add_argument("--init", help="checkpoint to start from (e.g. stage 1's best/)")
    p.add_argument("--feature-cache", "--feature_cache", dest="feature_cache", help="stage-1 feature cache directory")
    p.add_argument("--feature-cache-gb", dest="feature_cache_gb", type=float, help="its size cap in GB (default 20)")
    p.add_argument("--checkpoint-every", "--checkpoint_every", dest="checkpoint_every", type=int)
    p.add_argument("--val-fraction", dest="val_fraction", type=float)
    p.add_argument("--sensor-window", dest="sensor_window", type=int,
                   help="sensor samples per window (stored in the checkpoint: evaluation and the node use it)")
    p.add_argument("--sensor-weight", dest="sensor_weight", type=float,
                   help="loss weight of samples with sensor data (the research code: 2)")
    p.add_argument("--loader-workers", dest="loader_workers", type=int,
                   help="processes reading samples (decoding frames) ahead of the step (default 0: this process)")
    p.add_argument("--pixels", choices=["processor", "device"],
                   help="where the backbone's pixel values are made: 'processor' (the image processor, in the loader "
                        "workers; default) or 'device' (torch on the training device from the uint8 frames)")
    p.add_argument("--pretrained", help="local directory (or hub id) of the backbone weights = -o backbone.pretrained=DIR")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value: policy fields by dotted key (-o policy.horizon=8, "
                        "-o backbone.pretrained=DIR, -o state.columns=[joint_1,joint_2]) or train.FIELD; repeatable")
    p.add_argument("--device")
    p.add_argument("--resume", action="store_true", help="continue OUT/last (schedule, optimiser, data order)")
    p.add_argument("--wandb", action="store_true")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, ObservationError, DatasetError) as exc:
        print(f"vla {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
