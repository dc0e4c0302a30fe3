"""Training throughput: samples/s, peak memory and the share of time the step waits for data.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--json out.json]              # CPU, tiny backbone
    python bench/train_throughput.py --spec 3b --device cuda --json $OUT/train_3b.json    # a GPU (bench/gpu.sh)

Runs `vla train` (a child process each, so peak RSS is per run) on a synthetic dataset written
with the episode writer in the seed's shape (JPEG frames as recorded, a stamped sensor stream, named
joint state; no simulator needed), for:
- `--spec tiny`: the tiny Qwen-VL backbone, stage 1 (frozen, features from a cache filled first by
  `vla cache build`), stage 2 (LoRA) with and without gradient checkpointing, stage 2 with the pixel
  values made on the device (`--pixels device`, 2 loader workers), and the seed preset's heads
  (hidden 1024, 4-layer expert, 650 x 1026 sensor encoder) on the tiny backbone, stage 1 and 2;
- `--spec 3b`: the Qwen2.5-VL-3B architecture with random weights (bf16 base), 2 and 5 views at
  640x360, stage 1 (cached) and stage 2 (LoRA, gradient checkpointing, pixels on the device,
  4 loader workers), batch 4.
Figures come from the runs' metrics.jsonl and getrusage of the child (peak RSS): samples/s and the data
wait over the steps after `--warmup-steps` (from the trainer's running totals, so the first steps' warm-up
does not count), on a GPU train/peak_memory_mb under `--memory-cap-gb` (torch's per-process memory
fraction: "fits 24 GB" is shown on a bigger card by failing if it does not). Runs write no checkpoint
(train.save_checkpoints false) and each run's directory and feature cache are deleted after it is
measured (`disk_mb` records what it held), so a 3B run does not leave ~22 GB behind.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vla_training.data.episodes import EpisodeWriter

SEED_HEADS = ["-o", "hidden_dim=1024", "-o", "expert.layers=4", "-o", "expert.heads=8", "-o", "expert.feedforward=4096",
              "-o", "sensor.window=650", "-o", "sensor.conv_channels=[512,1024,1024,1024]",
              "-o", "sensor.transformer_layers=2", "-o", "sensor.heads=8"]
TINY_DATA = {"views": 2, "image": (64, 64), "sensor": 6, "sensor_hz": 500, "state": 8, "actions": 4}
SEED_DATA = {"image": (360, 640), "sensor": 1026, "sensor_hz": 650, "state": 6, "actions": 7}
LORA_3B = ["--stage", "2", "-o", "backbone.gradient_checkpointing=true", "--pixels", "device", "--loader-workers", "4"]


def runs(spec: str) -> dict[str, tuple[list[str], dict]]:
    """name -> (vla train arguments, the dataset's shape)."""
    if spec == "tiny":
        tiny = ["--config", "tiny", "-o", "views=[View1,View2]"]
        seed_sensor = {**TINY_DATA, "sensor": 1026, "sensor_hz": 650}
        return {"tiny stage 1 (cached)": ([*tiny, "--stage", "1", "--cache"], TINY_DATA),
                "tiny stage 2 (LoRA)": ([*tiny, "--stage", "2"], TINY_DATA),
                "tiny stage 2 (LoRA, checkpointing)": ([*tiny, "--stage", "2", "-o", "backbone.gradient_checkpointing=true"],
                                                       TINY_DATA),
                "tiny stage 2 (LoRA, pixels on the device, 2 workers)": (
                    [*tiny, "--stage", "2", "--pixels", "device", "--loader-workers", "2"], TINY_DATA),
                "seed heads, tiny backbone, stage 1 (cached)": (
                    [*tiny, "--stage", "1", "--cache", "-o", "sensor.channels=1026", *SEED_HEADS], seed_sensor),
                "seed heads, tiny backbone, stage 2 (LoRA, checkpointing)": (
                    [*tiny, "--stage", "2", "-o", "backbone.gradient_checkpointing=true", "-o", "sensor.channels=1026",
                     *SEED_HEADS], seed_sensor)}
    out = {}
    for views in (2, 5):
        names = "[" + ",".join(f"View{i + 1}" for i in range(views)) + "]"
        base = ["--config", "3b", "-o", f"views={names}", "-o", "backbone.dtype=bfloat16"]
        data = {**SEED_DATA, "views": views}
        out[f"3b stage 1 (cached), {views} views"] = ([*base, "--stage", "1", "--cache"], data)
        out[f"3b stage 2 (LoRA, checkpointing, pixels on the device), {views} views"] = ([*base, *LORA_3B], data)
    return out


def write_dataset(out: Path, shape: dict, episodes: int, steps: int, seed: int = 0) -> Path:
    """Episodes in the seed's shape: JPEG frames per view, a stamped sensor stream, joint_1.. state."""
    rng = np.random.default_rng(seed)
    dt, (h, w) = 0.1, shape["image"]
    for e in range(episodes):
        writer = EpisodeWriter(out, f"episode_{e:03d}")
        t = np.arange(steps) * dt
        writer.array("actions", rng.normal(size=(steps, shape["actions"])), np.float32)
        writer.array("actions_t", t, np.float64)
        writer.array("state", rng.normal(size=(steps, shape["state"])), np.float32)
        writer.array("state_t", t, np.float64)
        rows = int(steps * dt * shape["sensor_hz"])
        writer.append_rows("sensor", np.arange(rows) / shape["sensor_hz"], rng.normal(size=(rows, shape["sensor"])))
        for view in range(shape["views"]):
            for i, stamp in enumerate(t):
                coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)  # camera-like: smooth, not noise
                buf = io.BytesIO()
                Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(buf, format="JPEG", quality=90)
                writer.append_encoded_frame(f"View{view + 1}", float(stamp), buf.getvalue())
        writer.close({"instruction": "insert the needle", "length": steps,
                      "action_names": [f"a{i}" for i in range(shape["actions"])],
                      "state_names": [f"joint_{i + 1}" for i in range(shape["state"])],
                      "rates": {"control": 1 / dt, "state": 1 / dt, "sensor": shape["sensor_hz"]}})
    return out


def vla(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_training.cli", *args], capture_output=True, text=True)


def measure(name: str, spec: list[str], data: Path, run: Path, args) -> dict | None:
    spec, cache = list(spec), run.with_name(run.name + "-cache")
    extra = []
    if "--cache" in spec:
        spec.remove("--cache")
        built = vla("cache", "build", *[a for a in spec if a not in ("--stage", "1")], "--dataset", str(data),
                    "--cache", str(cache), "--device", args.device, "--no-progress")
        if built.returncode:
            print(f"{name}: cache build failed\n{built.stderr[-2000:]}")
            return None
        extra = ["--feature-cache", str(cache)]
    # a fresh interpreter per measured run: RUSAGE_CHILDREN is a maximum over every child so far
    result = subprocess.run([sys.executable, "-c", (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(r.stderr[-2000:]); "
        "sys.exit(r.returncode)"), sys.executable, "-m", "vla_training.cli", "train", *spec, *extra,
        "--dataset", str(data), "--out", str(run), "--expert", "diffusion", "--max-steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--val-fraction", "0", "-o", "train.save_checkpoints=false",
        *(["-o", f"train.memory_cap_gb={args.memory_cap_gb}"] if args.memory_cap_gb else []),
        "--device", args.device, "--no-progress"], capture_output=True, text=True)
    disk_mb = sum(f.stat().st_size for d in (run, cache) if d.exists() for f in d.rglob("*") if f.is_file()) / 2**20
    try:
        if result.returncode:
            print(f"{name}: failed\n{result.stderr[-2000:]}")
            return None
        steps = [m for m in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
                 if "train/samples_total" in m]
    finally:
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    first, last = steps[min(args.warmup_steps, len(steps) - 1) - 1] if args.warmup_steps else None, steps[-1]
    totals = ("train/samples_total", "train/data_wait_s_total", "train/wall_s_total")
    base = [first[k] for k in totals] if first else [0, 0.0, 0.0]
    samples, waited, wall = (last[k] - b for k, b in zip(totals, base))
    row = {"samples_per_s": round(samples / max(wall, 1e-9), 2), "data_wait_frac": round(waited / max(wall, 1e-9), 3),
           "window_steps": len(steps) - (min(args.warmup_steps, len(steps) - 1) if args.warmup_steps else 0),
           "peak_rss_mb": round(int(result.stdout.split()[-1]) / 1024, 1), "steps": args.steps,
           "batch_size": args.batch_size, "device": args.device, "disk_mb": round(disk_mb, 3)}
    if "train/peak_memory_mb" in last:
        row["peak_gpu_memory_mb"] = round(last["train/peak_memory_mb"], 1)
        row["memory_cap_gb"] = args.memory_cap_gb
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", choices=["tiny", "3b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of samples/s and data wait "
                                                                     "(default %(default)s)")
    parser.add_argument("--memory-cap-gb", type=float, help="GPU only: cap the run's GPU memory (a run that needs "
                                                             "more fails: 'fits 24 GB' shown on a bigger card)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--episode-steps", type=int, default=40, help="control steps (samples) per episode")
    parser.add_argument("--only", help="run only the configurations whose name contains this text")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if args.memory_cap_gb and args.device == "cpu":
        parser.error("--memory-cap-gb caps GPU memory; it needs --device cuda")
    work = Path(tempfile.mkdtemp(prefix="vla-train-bench-"))
    try:
        return _measure_all(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the synthetic datasets


def _measure_all(args, work: Path) -> int:
    datasets: dict[str, Path] = {}
    figures, failed = {}, False
    for name, (spec, shape) in runs(args.spec).items():
        if args.only and args.only not in name:
            continue
        key = json.dumps(shape, sort_keys=True)
        if key not in datasets:
            datasets[key] = write_dataset(work / f"data{len(datasets)}", shape, args.episodes, args.episode_steps)
        row = measure(name, spec, datasets[key], work / f"run{len(figures)}", args)
        if row is None:
            failed = True
            continue
        figures[name] = row
        memory = f"peak GPU {row['peak_gpu_memory_mb']:>8.1f} MB" if "peak_gpu_memory_mb" in row else ""
        print(f"{name:<66} {row['samples_per_s']:>8.2f} samples/s  data wait {100 * row['data_wait_frac']:>5.1f} %  "
              f"peak RSS {row['peak_rss_mb']:>8.1f} MB {memory}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 1 if failed or not figures else 0


if __name__ == "__main__":
    raise SystemExit(main())
