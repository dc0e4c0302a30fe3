"""The `vla` command line: the parser, and one function per subcommand in the layer that does the work.

Each subcommand has --help; errors are printed as one clear line (exit 2). The functions live in
data/commands.py, training/commands.py, evaluation/commands.py and demos/commands.py.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from vla_models import CheckpointError, ConfigError, ObservationError, PolicyConfig, preset
from vla_models.experts import EXPERTS
from vla_models.presets import PRESETS

from .data import commands as data_commands
from .data.episodes import DatasetError
from .demos import commands as demos
from .evaluation import commands as evaluation
from .training import commands as training


def _resolve_config(spec: str) -> PolicyConfig:
    return preset(spec) if spec in PRESETS else PolicyConfig.from_file(spec)


def cmd_config(args: argparse.Namespace) -> int:
    """Print a preset or config file, validated and with every default filled in, as YAML."""
    config = _resolve_config(args.config)
    print(yaml.safe_dump({"policy": config.to_dict()}, sort_keys=False), end="")
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
    p.add_argument("--modes", action="store_true", help="the multimodal experiment instead: the three experts on "
                                                        "peg-insert-side-obstacle-v3, and chunk execution under delay "
                                                        "(runs/modes/report/modes.md; not in make demo)")
    p.add_argument("--minutes", type=float, default=60.0, help="--vision: training budget of the seeing policy in "
                                                               "minutes of this machine (default: %(default)s)")
    p.add_argument("--placement-seeds", type=int, help="--vision: MT1 placement seeds of training demos, 48 demos "
                                                       "each (default 6)")
    p.add_argument("--image-size", type=int, help="--vision: camera resolution, rendered and seen, a multiple of "
                                                  "28 (default 112)")
    p.add_argument("--seeing-only", action="store_true", help="--vision: train and evaluate B alone (a lever measured "
                                                               "against an earlier run's blind baseline; -o may then "
                                                               "set what only B takes, e.g. train.augment)")
    p.add_argument("--compare-experts", action="store_true", help="--vision: the seeing policy with each expert "
                                                                  "(regression, diffusion, flow), same recipe and steps "
                                                                  "(runs/vision_experts/experts.md)")
    p.add_argument("--expert", choices=list(EXPERTS),
                   help="--vision: the action expert of both policies (default: regression)")
    p.add_argument("--steps", type=int, help="--vision: a fixed step budget instead of --minutes calibrated on this "
                                             "machine (levers compared at equal steps)")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="--vision: config overrides for the policies' training, e.g. backbone.size=3b (a GPU)")
    p.set_defaults(func=demos.cmd_demo)

    p = sub.add_parser("smoke-demo", help="model smoke test: every expert on the tiny Qwen-VL backbone")
    p.add_argument("--out", default="runs/smoke_demo", help="where the checkpoints go (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.set_defaults(func=demos.cmd_smoke_demo)

    p = sub.add_parser("eval", help="closed-loop success, offline path error, latency, diversity")
    p.add_argument("--checkpoint", required=True, help="a run directory (uses best/) or a checkpoint")
    p.add_argument("--sim", help="Meta-World task for closed-loop evaluation, e.g. peg-insert-side-v3")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1, help="placement seed (use another than the training data's)")
    p.add_argument("--execute", type=int, default=8, help="actions executed per chunk (receding horizon)")
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--placement-seeds", help="comma list of placement seeds, each --episodes placements, reported per "
                                             "seed and pooled (instead of --seed)")
    p.add_argument("--chunk-execution", choices=["switch", "ensemble", "rtc"], default="switch",
                   help="how chunks are executed while the next is inferred: switch, temporal ensembling, or "
                        "real-time chunking (flow, diffusion ddim) (default %(default)s)")
    p.add_argument("--delay", type=int, default=0, help="control steps between an observation and its chunk's "
                                                        "arrival; the simulator runs on meanwhile (default 0)")
    p.add_argument("--targets", choices=["delta", "absolute"], default="delta",
                   help="absolute: each chunk's xyz deltas accumulated from the commanded pose at its observation into "
                        "position targets, reached by the next step (as the ROS node's pose_target interface and a "
                        "cartesian controller do); switch or ensemble (default delta)")
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
    p.set_defaults(func=evaluation.cmd_eval)

    p = sub.add_parser("compare", help="gather eval.json of several runs into DIR/report.md with plots")
    p.add_argument("runs", nargs="+", help="run directories holding eval.json (or eval JSON files)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=evaluation.cmd_compare)

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
    p.set_defaults(func=evaluation.cmd_bench)

    p = sub.add_parser("export", help="a checkpoint for serving: --merge-lora adds the LoRA adapters into the backbone")
    p.add_argument("run", help="run directory (uses best/) or checkpoint directory")
    p.add_argument("out", help="the new checkpoint directory (written atomically)")
    p.add_argument("--merge-lora", action="store_true", help="merge the backbone's LoRA adapters into its weights "
                                                               "(the node and the static runner then serve the base model)")
    p.add_argument("--backbone", help="local path of the base weights when not where training had them")
    p.set_defaults(func=evaluation.cmd_export)

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
    p.set_defaults(func=training.cmd_cache_build)

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
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="camera-to-command latency injected by the sim: each observation is this old when published")
    p.add_argument("--chunk-execution", choices=["switch", "ensemble", "rtc"], default="switch",
                   help="both nodes' chunk_execution (ensemble: a streamed --command-interface; rtc: flow, diffusion "
                        "ddim) (default switch)")
    p.add_argument("--logs", help="directory for the two nodes' logs")
    p.add_argument("--json", help="write the summary to this file")
    p.set_defaults(func=demos.cmd_ros_demo)

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
    p.set_defaults(func=evaluation.cmd_bag_eval)

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
    p.add_argument("--action-noise", type=float, default=0.0, metavar="SIGMA",
                   help="DART: execute the demonstrator's motion + N(0, SIGMA^2), record its own action (default 0)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=data_commands.cmd_data_sim)
    p = dsub.add_parser("info", help="episodes, lengths, rates, views, channels and action statistics")
    p.add_argument("dataset")
    p.add_argument("--check", action="store_true", help="read every array and validate it (slower); per-episode streams")
    p.add_argument("--config", help="a policy config (preset or YAML): say per episode what training would do with it")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as vla train")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=training.cmd_data_info)
    p = dsub.add_parser("plot", help="top view of the episodes' end-effector paths, coloured by mode")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=data_commands.cmd_data_plot)
    p = dsub.add_parser("import-seed", help="the seed's recordings (legacy recv_all_* or episode_* dirs)")
    p.add_argument("src", help="a session/episode directory or a folder of them")
    p.add_argument("--out", required=True)
    p.add_argument("--rate", type=float, metavar="HZ", help="actions on a uniform grid at this control rate (the "
                                                            "pose interpolated), not at the camera's frames")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=data_commands.cmd_data_import_seed)
    p = dsub.add_parser("import-bag", help="rosbag2 (sqlite3 or mcap) through rosbags; one episode per bag")
    p.add_argument("bags", nargs="+")
    p.add_argument("--topics", default="config/bag_topics.yaml", help="topic -> stream mapping (default: %(default)s)")
    p.add_argument("--out", required=True)
    p.add_argument("--rate", type=float, metavar="HZ", help="actions on a uniform grid at this control rate (the "
                                                            "pose interpolated), not at the anchor camera's frames")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=data_commands.cmd_data_import_bag)
    p = dsub.add_parser("export-lerobot", help="our episodes -> a LeRobotDataset v3.0 folder (docs/dataset.md)")
    p.add_argument("dataset")
    p.add_argument("out", help="the LeRobot dataset folder to create (must not exist)")
    p.add_argument("--repo-id", required=True, help="the dataset's name, e.g. me/peg_insert")
    p.add_argument("--fps", type=float, help="frames per second (default: the episodes' control rate)")
    p.add_argument("--vcodec", default="libsvtav1", help="video codec (PyAV): libsvtav1 (LeRobot's default) or h264")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=data_commands.cmd_data_export_lerobot)
    p = dsub.add_parser("import-lerobot", help="a local LeRobotDataset (v3.0 or v2.1) -> our episodes")
    p.add_argument("path", help="the LeRobot dataset folder (meta/info.json inside)")
    p.add_argument("out", help="the dataset folder to create (must not exist)")
    p.add_argument("--views", help="comma-separated views (observation.images.<view>); default all, '' for none")
    p.add_argument("--state", help="state feature (default observation.state if present; '' for none)")
    p.add_argument("--action", default="action", help="action feature (default: %(default)s)")
    p.add_argument("--action-meaning", default="auto", choices=("auto", "delta", "absolute"),
                   help="what the actions are (auto: from their names)")
    p.add_argument("--to-deltas", action="store_true", help="absolute actions -> per-step differences")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=data_commands.cmd_data_import_lerobot)

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
    p.add_argument("--init-partial", dest="init_partial", action="store_const", const=True,
                   help="--init: skip (with a warning) the checkpoint's tensors that do not fit, instead of an error")
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
    p.set_defaults(func=training.cmd_train)
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
