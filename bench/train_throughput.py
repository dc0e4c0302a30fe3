"""Training throughput on this machine: samples/s, peak memory and the share of time spent reading data.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--json out.json]

Runs `vla train` (a child process each, so peak RSS is per run) on a small simulated dataset with
camera views, for:
- tiny stage 1: the tiny Qwen-VL backbone frozen, features from a cache filled first by
  `vla cache build` (the stage-1 path);
- tiny stage 2: LoRA on the backbone, with and without gradient checkpointing;
- seed heads: the seed preset's heads (hidden 1024, 4-layer expert, 1026 x 650 sensor encoder,
  5 views) on the tiny backbone (a 3B backbone with random weights does not train on a CPU).
Figures come from the runs' metrics.jsonl (train/samples_per_s, train/data_wait_frac of the last
step) and getrusage of the child (peak RSS).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = {
    "tiny stage 1 (cached)": ["--config", "tiny", "--stage", "1", "--cache"],
    "tiny stage 2 (LoRA)": ["--config", "tiny", "--stage", "2"],
    "tiny stage 2 (LoRA, checkpointing)": ["--config", "tiny", "--stage", "2", "-o",
                                           "backbone.gradient_checkpointing=true"],
    "seed heads, tiny backbone, stage 1 (cached)": [
        "--config", "tiny", "--stage", "1", "--cache", "-o", "hidden_dim=1024", "-o", "expert.layers=4",
        "-o", "expert.heads=8", "-o", "expert.feedforward=4096", "-o", "sensor.window=650",
        "-o", "sensor.conv_channels=[512,1024,1024,1024]", "-o", "sensor.transformer_layers=2", "-o", "sensor.heads=8"],
}


def vla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_training.cli", *args], capture_output=True, text=True)



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--only", help="run only the configuration whose name contains this text")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vla-train-bench-"))
    data = work / "data"
    made = vla("data", "sim", "--out", str(data), "--episodes", str(args.episodes), "--image-size", "64",
               "--views", "corner,gripperPOV", "--no-progress")
    if made.returncode not in (0, 1):  # 1: fewer successful episodes than asked; still a dataset
        print(made.stdout[-2000:] + made.stderr[-2000:])
        return 1
    views = ["-o", "views=[corner,gripperPOV]", "-o", "sensor.channels=12", "-o", "state.dim=39"]
    figures = {}
    for name, spec in CONFIGS.items():
        if args.only and args.only not in name:
            continue
        spec = list(spec)
        run, cache = work / f"run{len(figures)}", work / f"cache{len(figures)}"
        extra = []
        if "--cache" in spec:
            spec.remove("--cache")
            built = vla("cache", "build", *spec[:2], "--dataset", str(data), "--cache", str(cache), *views,
                        *[a for a in spec[2:] if a not in ("--stage", "1")], "--no-progress")
            if built.returncode:
                print(built.stderr[-2000:])
                return 1
            extra = ["--feature-cache", str(cache)]
        # a fresh interpreter per measured run: RUSAGE_CHILDREN is a maximum over every child so far
        measure = subprocess.run([sys.executable, "-c", (
            "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr[-2000:]); "
            "sys.exit(r.returncode)"), sys.executable, "-m", "vla_training.cli", "train", *spec, *views, *extra,
            "--dataset", str(data), "--out", str(run), "--expert", "diffusion", "--max-steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--val-fraction", "0", "--checkpoint-every", str(10 ** 6),
            "--device", "cpu", "--no-progress"], capture_output=True, text=True)
        if measure.returncode:
            print(f"{name}: failed\n{measure.stderr[-2000:]}")
            return 1
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        last = [m for m in metrics if "train/samples_per_s" in m][-1]
        figures[name] = {"samples_per_s": round(last["train/samples_per_s"], 2),
                         "data_wait_frac": round(last["train/data_wait_frac"], 3),
                         "peak_rss_mb": round(int(measure.stdout.split()[-1]) / 1024, 1),
                         "steps": args.steps, "batch_size": args.batch_size}
        print(f"{name:<46} {figures[name]['samples_per_s']:>8.2f} samples/s  data wait "
              f"{100 * figures[name]['data_wait_frac']:>5.1f} %  peak RSS {figures[name]['peak_rss_mb']:>8.1f} MB",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
