"""`vla demo` (= `make demo`), the main job: data -> both experts -> evaluation -> comparison report.

1. Meta-World `peg-insert-side-v3` demonstrations (placement seed 0), a bimodal set (`--modes 2`)
   and held-out demonstrations (placement seed 1) for offline metrics, generated in parallel
   processes or reused when a previous run made them with the same parameters.
2. Train the regression and the diffusion expert with the CPU preset (state + contact wrench), and
   both again on the bimodal set.
3. Closed loop on held-out placements (MT1 seed 1), offline path error on the held-out demos,
   per-stage latency, diversity and modes on the bimodal set.
4. DIR/report.md with tables and plots.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .episodes import list_episodes
from .evaluate import (SIM_MM_PER_UNIT, closed_loop, diversity, load_for_eval, offline_path_error, stage_latency)
from .report import write_report
from .samples import ChunkDataset, collate
from .train import train

TASK = "peg-insert-side-v3"
CONFIG = str(Path(__file__).resolve().parents[1] / "config" / "train_cpu.yaml")
BUDGETS = {
    "full": {"demos": 40, "bimodal_demos": 20, "heldout_demos": 10, "diffusion_steps": 2500, "regression_steps": 1000,
             "bimodal_steps": 600, "eval_episodes": 50, "max_steps": 300, "batch_size": 64},
    "quick": {"demos": 3, "bimodal_demos": 4, "heldout_demos": 2, "diffusion_steps": 20, "regression_steps": 20,
              "bimodal_steps": 10, "eval_episodes": 2, "max_steps": 40, "batch_size": 16},
}
TRAIN_SEED, HELDOUT_SEED, BIMODAL_SEED = 0, 1, 2


def _dataset_command(out: Path, episodes: int, seed: int, modes: int) -> list[str]:
    return [sys.executable, "-m", "vla_training.cli", "data", "sim", "--out", str(out), "--task", TASK,
            "--episodes", str(episodes), "--seed", str(seed), "--modes", str(modes), "--views", "", "--no-progress"]


def _have(out: Path, episodes: int, seed: int, modes: int) -> bool:
    stamp = out / "dataset.json"
    want = {"task": TASK, "episodes": episodes, "seed": seed, "modes": modes}
    return stamp.exists() and json.loads(stamp.read_text()) == want


def make_datasets(root: Path, budget: dict) -> dict[str, Path]:
    """Generate the three datasets in parallel processes (or reuse them)."""
    specs = {"train": (budget["demos"], TRAIN_SEED, 1), "bimodal": (budget["bimodal_demos"], BIMODAL_SEED, 2),
             "heldout": (budget["heldout_demos"], HELDOUT_SEED, 1)}
    procs = {}
    for name, (n, seed, modes) in specs.items():
        out = root / name
        if _have(out, n, seed, modes):
            print(f"reusing {out}")
            continue
        if out.exists():
            import shutil

            shutil.rmtree(out)
        print(f"generating {out}: {n} demonstrations (placement seed {seed}, modes {modes})")
        procs[name] = subprocess.Popen(_dataset_command(out, n, seed, modes))
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"demo data generation for {name} failed (exit {proc.returncode})")
        n, seed, modes = specs[name]
        (root / name / "dataset.json").write_text(json.dumps({"task": TASK, "episodes": n, "seed": seed, "modes": modes}))
    return {name: root / name for name in specs}


def _train(dataset: Path, out: Path, expert: str, steps: int, budget: dict) -> dict:
    start = time.perf_counter()
    train({"config": CONFIG, "dataset": str(dataset), "out": str(out), "expert": expert, "max_steps": steps,
           "batch_size": budget["batch_size"], "checkpoint_every": max(steps // 5, 1), "seed": TRAIN_SEED})
    return {"steps": steps, "batch_size": budget["batch_size"], "seconds": time.perf_counter() - start}


def _bimodal_paths(policy, dataset: Path, k: int = 16, max_obs: int = 8) -> dict:
    """Sampled chunks and recorded chunks (xy, mm, relative to the hand) at detour starts."""
    episodes = list_episodes(dataset)
    ds = ChunkDataset(episodes, policy.config, 64)
    starts, offset = [], 0
    for ep in episodes:
        detour = ep.meta.get("detour")
        if detour and detour.get("start_step") is not None:
            starts.append(offset + detour["start_step"])
        offset += ep.length
    demos, samples = [], []
    for i in starts[:max_obs]:
        batch = collate([ds[i]])
        demos.append(np.cumsum(batch["action"][0].numpy()[:, :2] * SIM_MM_PER_UNIT, axis=0))
        draws = policy.predict_action_chunk(batch, num_samples=k, seed=i)[0].cpu().numpy()
        samples.extend(np.cumsum(draws[..., :2] * SIM_MM_PER_UNIT, axis=1))
    return {"demos": demos, "samples": samples}


def run_demo(out_dir: str | Path = "runs/demo", data_dir: str | Path = "data/demo", quick: bool = False) -> Path:
    budget = BUDGETS["quick" if quick else "full"]
    out, data = Path(out_dir), Path(data_dir)
    torch.manual_seed(TRAIN_SEED)
    t0 = time.perf_counter()
    datasets = make_datasets(data, budget)
    t_data = time.perf_counter() - t0
    runs = {"regression": ("train", "regression", budget["regression_steps"]),
            "diffusion": ("train", "diffusion", budget["diffusion_steps"]),
            "bimodal_regression": ("bimodal", "regression", budget["bimodal_steps"]),
            "bimodal_diffusion": ("bimodal", "diffusion", budget["bimodal_steps"])}
    training = {name: _train(datasets[ds], out / name, expert, steps, budget) for name, (ds, expert, steps) in runs.items()}
    policies = {name: load_for_eval(out / name) for name in runs}
    evals, bimodal_samples = [], {}
    latency = stage_latency({"regression": policies["regression"], "diffusion": policies["diffusion"]},
                            datasets["heldout"], repeats=30 if not quick else 3)
    for name in ("regression", "diffusion"):
        policy = policies[name]
        label = "regression" if name == "regression" else "ddim-10"
        ev = {"name": name, "expert": name, "training": training[name],
              "closed_loop": {label: closed_loop(policy, TASK, budget["eval_episodes"], HELDOUT_SEED,
                                                 max_steps=budget["max_steps"], sample_seed=0, save_rollouts=1,
                                                 out_dir=out / "report" / "rollouts")},
              "offline": offline_path_error(policy, datasets["heldout"]),
              "latency": {k: v for k, v in latency.items() if (k == "regression") == (name == "regression")}}
        evals.append(ev)
    for name in ("bimodal_regression", "bimodal_diffusion"):
        policy = policies[name]
        evals.append({"name": name, "expert": policy.config.expert.type, "training": training[name],
                      "diversity": diversity(policy, datasets["bimodal"], k=16)})
        bimodal_samples[policy.config.expert.type] = _bimodal_paths(policy, datasets["bimodal"])
    total = time.perf_counter() - t0
    context = {
        "command": "make demo (= vla demo)" + (" --quick" if quick else ""),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU'}",
        "task": f"Meta-World {TASK}",
        "observation": "39-d simulator state (hand, gripper, peg pose, previous frame, goal) + 12-channel contact "
                       "wrench window (last 64 samples at 400 Hz); no images (CPU preset, backbone none)",
        "actions": "4-D (dx, dy, dz, grip), horizon 16, first 8 executed per chunk (receding horizon)",
        "data": f"{budget['demos']} successful expert demos (placement seed {TRAIN_SEED}); bimodal: "
                f"{budget['bimodal_demos']} (seed {BIMODAL_SEED}, --modes 2); held-out offline set: "
                f"{budget['heldout_demos']} (seed {HELDOUT_SEED})",
        "closed loop": f"{budget['eval_episodes']} placements of MT1 seed {HELDOUT_SEED} (not in training), "
                       f"<= {budget['max_steps']} steps, diffusion DDIM-10 with sampling seed 0",
        "training budget": "; ".join(f"{n}: {t['steps']} steps x batch {t['batch_size']} in {t['seconds']:.0f} s"
                                     for n, t in training.items()),
        "seeds": f"training {TRAIN_SEED}, placements train {TRAIN_SEED} / eval {HELDOUT_SEED} / bimodal {BIMODAL_SEED}",
        "wall time": f"data {t_data:.0f} s, total {total:.0f} s",
    }
    report = write_report(evals, out / "report", context, bimodal_samples)
    print(f"\nreport: {report}  (total {total / 60:.1f} min)")
    return report
