"""`vla demo --vision`: does the vision-language path carry the task? Blind vs seeing, same everything else.

A ("blind", config/vision_blind.yaml): the robot's own state (hand position, gripper) + the contact
wrench; the peg's and the hole's positions are not read. B ("sees", config/vision_sees.yaml): A + the
`corner` and `gripperPOV` cameras (112 x 112) and the instruction through the tiny Qwen2.5-VL backbone,
random weights trained end to end with the expert. The two differ only in `views` and `backbone`.

1. Demonstrations with both views from several placement seeds (MT1 has 50 placements per seed; more
   placements help a vision policy more than more steps), a held-out set from seed 1 (probe, latency).
2. B's training rate is measured (two short runs, one per lane, as the real runs share the CPU), and
   `--minutes` becomes a step budget; A and B train the same steps with the same schedule, in two
   lanes, keeping snapshots at 1/4, 1/2 and all of it (about 15/30/60 minutes of B at `--minutes 60`).
3. Closed loop on the 50 held-out placements (MT1 seed 1) for every snapshot, DDIM-10; the last
   snapshots once per sampling seed, pooled.
4. Per-stage latency, a rollout contact sheet of B, and a linear probe of B's image features for the
   peg's and the hole's positions (against the same probe on the backbone's initial weights), joined
   with B's closed-loop outcome per placement -> DIR/report.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from vla_models import build_policy

from .demo import pooled_closed_loop
from .episodes import list_episodes
from .evaluate import load_for_eval, stage_latency
from .files import write_json_atomic
from .lanes import Job, run_lanes, threads_per_lane
from .probe import TARGET_STATE, RidgeProbe, episode_frames, image_features, score
from .sim import STATE_NAMES, SimEnv, task_instruction

TASK = "peg-insert-side-v3"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
VARIANTS = {"blind": CONFIG_DIR / "vision_blind.yaml", "sees": CONFIG_DIR / "vision_sees.yaml"}
LABELS = {"blind": "A blind (state + wrench)", "sees": "B sees (+ 2 views, tiny Qwen-VL)"}
VIEWS, IMAGE_SIZE, EXPERT, HELDOUT_SEED = ("corner", "gripperPOV"), 112, "diffusion", 1
BUDGETS = {
    "full": {"seeds": [0, 2, 3, 4, 5, 6], "demos_per_seed": 48, "heldout_demos": 10, "eval_episodes": 50,
             "max_steps": 300, "batch_size": 64, "calibration_steps": 25, "max_train_steps": None,
             "sample_seeds": [0, 1], "probe_frames": 3000, "latency_repeats": 30, "rollouts": 2},
    "quick": {"seeds": [0], "demos_per_seed": 3, "heldout_demos": 1, "eval_episodes": 2, "max_steps": 24,
              "batch_size": 8, "calibration_steps": 3, "max_train_steps": 8, "sample_seeds": [0, 1],
              "probe_frames": 40, "latency_repeats": 2, "rollouts": 1},
}


def _vla(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "vla_training.cli", *args]


def _sim_job(out: Path, episodes: int, seed: int) -> Job:
    return Job(f"data seed {seed}", _vla("data", "sim", "--out", str(out), "--task", TASK, "--episodes", str(episodes),
                                         "--seed", str(seed), "--views", ",".join(VIEWS), "--image-size",
                                         str(IMAGE_SIZE), "--no-progress"))


def make_datasets(root: Path, budget: dict, log_dir: Path) -> tuple[Path, Path]:
    """data/vision/train (every training seed's demos, merged) and data/vision/heldout; reused when a
    previous run made them with the same parameters."""
    want = {"task": TASK, "seeds": budget["seeds"], "demos_per_seed": budget["demos_per_seed"],
            "heldout_demos": budget["heldout_demos"], "views": list(VIEWS), "image_size": IMAGE_SIZE}
    stamp, train, heldout = root / "dataset.json", root / "train", root / "heldout"
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        print(f"reusing {root}")
        return train, heldout
    if root.exists():
        shutil.rmtree(root)
    parts = {seed: root / f"seed_{seed}" for seed in budget["seeds"]}
    jobs = [_sim_job(path, budget["demos_per_seed"], seed) for seed, path in parts.items()]
    jobs.append(_sim_job(heldout, budget["heldout_demos"], HELDOUT_SEED))
    lanes = [jobs[0::2], jobs[1::2]]
    run_lanes([lane for lane in lanes if lane], log_dir, threads=1)
    train.mkdir(parents=True)
    count = 0
    for path in parts.values():  # one dataset: the episodes renamed in seed order
        for episode in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            os.replace(episode, train / f"episode_{count:06d}")
            count += 1
        shutil.rmtree(path)
    write_json_atomic(stamp, want)
    return train, heldout


def _train_argv(variant: str, dataset: Path, run: Path, steps: int, budget: dict, snapshots: list[int]) -> list[str]:
    return _vla("train", "--config", str(VARIANTS[variant]), "--dataset", str(dataset), "--out", str(run),
                "--expert", EXPERT, "--max-steps", str(steps), "--batch-size", str(budget["batch_size"]),
                "--checkpoint-every", str(max(steps // 4, 1)), "--seed", "0", "--no-progress",
                "-o", f"train.snapshots={snapshots}")


def calibrate(dataset: Path, out: Path, budget: dict) -> float:
    """B's optimiser steps per second, measured in two lanes at once (as A and B will share the CPU)."""
    steps = budget["calibration_steps"]
    runs = [out / f"calibrate_{i}" for i in range(2)]
    for run in runs:
        shutil.rmtree(run, ignore_errors=True)
    run_lanes([[Job(f"calibrate {i}", _train_argv("sees", dataset, run, steps, budget, []))]
               for i, run in enumerate(runs)], out / "logs", threads=1, progress=False)
    rates = []
    for run in runs:
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rates.append([m["train/samples_per_s"] for m in lines if "train/samples_per_s" in m][-1] / budget["batch_size"])
        shutil.rmtree(run)
    return float(np.mean(rates))


def _eval_job(run: Path, step: int, sample_seed: int, out: Path, budget: dict, rollouts: int = 0,
              wait: bool = False) -> tuple[Job, Path]:
    checkpoint = run / f"step_{step}"
    result = out / "report" / f"eval_{run.name}_step{step}_seed{sample_seed}.json"
    log = out / "report" / f"episodes_{run.name}_step{step}_seed{sample_seed}.jsonl"
    log.unlink(missing_ok=True)
    argv = _vla("eval", "--checkpoint", str(checkpoint), "--sim", TASK, "--episodes", str(budget["eval_episodes"]),
                "--seed", str(HELDOUT_SEED), "--max-steps", str(budget["max_steps"]), "--sample-seed",
                str(sample_seed), "--image-size", str(IMAGE_SIZE), "--episode-log", str(log), "--json", str(result),
                "--save-rollouts", str(rollouts), "--no-progress")
    job = Job(f"eval {run.name} step {step} seed {sample_seed}", argv, total=budget["eval_episodes"],
              progress_file=log, after=checkpoint / "snapshot.json" if wait else None)
    return job, result


def placement_probe(policy, probe: RidgeProbe, placements: int) -> list[dict]:
    """The probe on the first frame of each closed-loop placement: predicted and true peg/hole (m)."""
    columns = TARGET_STATE.column_indices(STATE_NAMES)
    env = SimEnv(TASK, seed=HELDOUT_SEED, views=VIEWS, image_size=IMAGE_SIZE)
    try:
        records = [env.reset(p) for p in range(placements)]
        images = {v: np.stack([r.images[v] for r in records]) for v in VIEWS}
        true = np.stack([r.state[columns] for r in records]).astype(np.float64)
    finally:
        env.close()
    predicted = probe.predict(image_features(policy, images, task_instruction(TASK)))
    return [{"placement": p, "true": true[p].tolist(), "predicted": predicted[p].tolist()} for p in range(placements)]


def run_probe(policy, initial, train: Path, heldout: Path, budget: dict, placements: int) -> dict:
    """Ridge probes of the trained and of the initial backbone's features: held-out scores, and the
    trained probe on each closed-loop placement's first frame."""
    instruction = task_instruction(TASK)
    x_images, y = episode_frames(list_episodes(train), list(VIEWS), limit=budget["probe_frames"])
    t_images, t = episode_frames(list_episodes(heldout), list(VIEWS), every=3)
    out = {"train_frames": len(y), "heldout_frames": len(t)}
    for name, model in (("trained", policy), ("initial", initial)):
        probe = RidgeProbe().fit(image_features(model, x_images, instruction), y)
        out[name] = {"alpha": probe.alpha, **score(probe.predict(image_features(model, t_images, instruction)), t)}
        if name == "trained":
            out["placements"] = placement_probe(model, probe, placements)
    return out


def run_vision_demo(out_dir: str | Path = "runs/vision", data_dir: str | Path = "data/vision", minutes: float = 60.0,
                    quick: bool = False) -> Path:
    from .vision_report import write_vision_report

    budget = BUDGETS["quick" if quick else "full"]
    out, data = Path(out_dir), Path(data_dir)
    (out / "report").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, heldout = make_datasets(data, budget, out / "logs")
    t_data = time.perf_counter() - t0
    rate = calibrate(train, out, budget)
    steps = max(4, int(rate * minutes * 60))
    if budget["max_train_steps"]:
        steps = min(steps, budget["max_train_steps"])
    snapshots = sorted({steps // 4, steps // 2, steps})
    print(f"B trains at {rate:.2f} steps/s: {minutes:g} min = {steps} steps; snapshots at {snapshots}")
    runs = {v: out / v for v in VARIANTS}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
    train_jobs = {v: Job(f"train {v}", _train_argv(v, train, run, steps, budget, snapshots), total=steps,
                         progress_file=run / "metrics.jsonl", progress_key="train/loss") for v, run in runs.items()}
    seeds, last = budget["sample_seeds"], snapshots[-1]
    evals: dict[tuple[str, int, int], Path] = {}

    def job(variant: str, step: int, seed: int, **kwargs) -> Job:
        made, evals[variant, step, seed] = _eval_job(runs[variant], step, seed, out, budget, **kwargs)
        return made

    # lane 1: B trains, then its last snapshot; lane 2: A trains and is evaluated, then B's earlier
    # snapshots as they appear, and B's last with the second sampling seed
    lane1 = [train_jobs["sees"], job("sees", last, seeds[0], rollouts=budget["rollouts"])]
    lane2 = [train_jobs["blind"], *[job("blind", s, seeds[0]) for s in snapshots],
             *[job("blind", last, s) for s in seeds[1:]],
             *[job("sees", s, seeds[0], wait=True) for s in snapshots[:-1]],
             *[job("sees", last, s, wait=True) for s in seeds[1:]]]
    threads = threads_per_lane(2)
    run_lanes([lane1, lane2], out / "logs", threads=threads)
    t_runs = time.perf_counter() - t0 - t_data

    curve = []
    for step in snapshots:
        row = {"step": step}
        for variant in VARIANTS:
            meta = json.loads((runs[variant] / f"step_{step}" / "snapshot.json").read_text())
            per_seed = {s: next(iter(json.loads(evals[variant, step, s].read_text())["closed_loop"].values()))
                        for s in seeds if (variant, step, s) in evals}
            row[variant] = {"train_minutes": meta["train_seconds"] / 60, **pooled_closed_loop(per_seed)}
        curve.append(row)
    final = {v: load_for_eval(runs[v] / f"step_{last}") for v in VARIANTS}
    latency = {v: stage_latency({v: p}, heldout, repeats=budget["latency_repeats"]) for v, p in final.items()}
    torch.manual_seed(0)  # the trainer's seed: the backbone B started from
    initial = build_policy(final["sees"].config).eval()
    probe = run_probe(final["sees"], initial, train, heldout, budget, budget["eval_episodes"])
    closed_b = json.loads(evals["sees", last, seeds[0]].read_text())["closed_loop"]
    outcome = {r["placement"]: r["success"] for r in next(iter(closed_b.values()))["per_episode"]}
    for row in probe["placements"]:
        row["success"] = outcome.get(row["placement"])
    rollouts = next(iter(closed_b.values()))["rollouts"]
    total = time.perf_counter() - t0
    result = {
        "command": f"vla demo --vision --minutes {minutes:g}" + (" --quick" if quick else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
                   f"A and B in two parallel lanes of processes with {threads} thread(s) each",
        "task": TASK, "views": list(VIEWS), "image_size": IMAGE_SIZE, "expert": EXPERT,
        "configs": {v: str(p.relative_to(CONFIG_DIR.parent)) for v, p in VARIANTS.items()},
        "data": {"placement_seeds": budget["seeds"], "demos": len(list_episodes(train)),
                 "heldout_demos": len(list_episodes(heldout))},
        "budget": {"minutes": minutes, "calibrated_steps_per_s": rate, "steps": steps, "snapshots": snapshots,
                   "batch_size": budget["batch_size"], "sample_seeds": seeds},
        "closed_loop": {"episodes": budget["eval_episodes"], "placement_seed": HELDOUT_SEED,
                        "max_steps": budget["max_steps"]},
        "curve": curve, "latency": latency, "probe": probe, "rollouts": rollouts,
        "wall_time_s": {"data": t_data, "train_and_eval": t_runs, "total": total},
    }
    write_json_atomic(out / "report" / "report.json", result)
    report = write_vision_report(result, out)
    print(f"\nreport: {report}  (total {total / 60:.1f} min)")
    return report
