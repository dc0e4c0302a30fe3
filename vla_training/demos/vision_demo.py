"""`vla demo --vision`: does the vision-language path carry the task? Blind vs seeing, same everything else.

A ("blind", config/vision_blind.yaml): the robot's own state (hand position, gripper) + the contact
wrench; the peg's and the hole's positions are not read. B ("sees", config/vision_sees.yaml): A + the
`corner` and `gripperPOV` cameras (112 x 112) and the instruction through the tiny Qwen2.5-VL backbone,
random weights trained end to end with the expert. The two differ only in `views` and `backbone`. The recipe
(docs/results.md, "Levers toward B >= 80 %"): the regression expert (`--expert` picks another), fusion
`cross_attention`, B's word-embedding table frozen.

1. Demonstrations with both views from several placement seeds (MT1 has 50 placements per seed; more
   placements help a vision policy more than more steps), a held-out set from seed 1 (probe, latency).
2. B's training rate is measured (a short run, A training in the other lane as in the real runs), and
   `--minutes` becomes a step budget; A and B train the same steps with the same schedule, in two
   lanes, keeping snapshots at 1/4, 1/2 and all of it (about 15/30/60 minutes of B at `--minutes 60`).
   A lever is measured with `--seeing-only --steps N`: B alone, at the step count of the run it is compared
   with, and the overrides (`-o`) may then be ones only B can take (train.augment).
3. Closed loop on the 50 held-out placements (MT1 seed 1) for every snapshot; the last snapshots once
   per sampling seed, pooled (a deterministic expert once).
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

from vla_models import ConfigError, build_policy
from vla_models.config import column_indices

from .demo import pooled_closed_loop, vla_argv
from ..data.episodes import list_episodes
from ..evaluation.evaluate import load_for_eval, stage_latency
from ..files import write_json_atomic
from .lanes import Job, run_lanes, threads_per_lane
from .probe import TARGET_COLUMNS, RidgeProbe, episode_frames, image_features, score
from ..data.sim import STATE_NAMES, SimEnv, task_instruction

TASK = "peg-insert-side-v3"
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
VARIANTS = {"blind": CONFIG_DIR / "vision_blind.yaml", "sees": CONFIG_DIR / "vision_sees.yaml"}
VIEWS, IMAGE_SIZE, EXPERT, HELDOUT_SEED = ("corner", "gripperPOV"), 112, "regression", 1
DETERMINISTIC = ("regression",)  # one closed loop: every sampling seed gives the same chunks
PATCH = 28  # the tiny Qwen2.5-VL's 14-px patches merged 2 x 2: the rendered size is a multiple of this
def training_seeds(count: int) -> list[int]:
    """`count` MT1 placement seeds for training demonstrations: 0, 2, 3, ... (1 is the held-out seed)."""
    return [0, *range(2, count + 1)]


BUDGETS = {
    "full": {"seeds": training_seeds(6), "demos_per_seed": 48, "heldout_demos": 10, "eval_episodes": 50,
             "max_steps": 300, "batch_size": 64, "calibration_steps": 60, "max_train_steps": None,
             "sample_seeds": [0, 1], "probe_frames": 3000, "latency_repeats": 30, "rollouts": 2},
    "quick": {"seeds": [0], "demos_per_seed": 3, "heldout_demos": 1, "eval_episodes": 2, "max_steps": 24,
              "batch_size": 8, "calibration_steps": 5, "max_train_steps": 8, "sample_seeds": [0, 1],
              "probe_frames": 40, "latency_repeats": 2, "rollouts": 1},
}


def _sim_job(out: Path, episodes: int, seed: int, image_size: int) -> Job:
    return Job(f"data seed {seed}", vla_argv("data", "sim", "--out", str(out), "--task", TASK, "--episodes", str(episodes),
                                         "--seed", str(seed), "--views", ",".join(VIEWS), "--image-size",
                                         str(image_size), "--no-progress"))


def make_datasets(root: Path, budget: dict, log_dir: Path) -> tuple[Path, Path]:
    """data/vision/train (every training seed's demos, merged) and data/vision/heldout; reused when a
    previous run made them with the same parameters."""
    want = {"task": TASK, "seeds": budget["seeds"], "demos_per_seed": budget["demos_per_seed"],
            "heldout_demos": budget["heldout_demos"], "views": list(VIEWS), "image_size": budget["image_size"]}
    stamp, train, heldout = root / "dataset.json", root / "train", root / "heldout"
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        print(f"reusing {root}")
        return train, heldout
    if root.exists():
        shutil.rmtree(root)
    parts = {seed: root / f"seed_{seed}" for seed in budget["seeds"]}
    jobs = [_sim_job(path, budget["demos_per_seed"], seed, budget["image_size"]) for seed, path in parts.items()]
    jobs.append(_sim_job(heldout, budget["heldout_demos"], HELDOUT_SEED, budget["image_size"]))
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


def _train_argv(variant: str, dataset: Path, run: Path, steps: int, budget: dict, snapshots: list[int],
                checkpoints: int = 4, expert: str = EXPERT) -> list[str]:
    """`vla train` of one variant: its config, then the experiment's overrides (both variants), and for
    B the backbone's resolution = the rendered size (one image, no resampling); `checkpoints` validated
    checkpoints along the way."""
    pixels = budget["image_size"] ** 2
    sets = [*budget["overrides"], *([f"backbone.min_pixels={pixels}", f"backbone.max_pixels={pixels}"]
                                    if variant == "sees" else [])]
    return vla_argv("train", "--config", str(VARIANTS[variant]), "--dataset", str(dataset), "--out", str(run),
                "--expert", expert, "--max-steps", str(steps), "--batch-size", str(budget["batch_size"]),
                "--checkpoint-every", str(max(steps // checkpoints, 1)), "--seed", "0", "--no-progress",
                "-o", f"train.snapshots={snapshots}", *[a for item in sets for a in ("-o", item)])


def calibrate(dataset: Path, out: Path, budget: dict) -> float:
    """B's optimiser steps per second, measured while A trains in the other lane (as in the real runs),
    from the metrics' clock after the first steps (which carry the start-up), with no checkpoint between."""
    steps, skip = budget["calibration_steps"], budget["calibration_steps"] // 5
    runs = {v: out / f"calibrate_{v}" for v in VARIANTS}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
    run_lanes([[Job("calibrate sees", _train_argv("sees", dataset, runs["sees"], steps, budget, [], checkpoints=1))],
               [Job("calibrate blind", _train_argv("blind", dataset, runs["blind"], 4 * steps, budget, [],
                                                   checkpoints=1))]],
              out / "logs", threads=1, progress=False)
    lines = [json.loads(line) for line in (runs["sees"] / "metrics.jsonl").read_text().splitlines()]
    timed = [(m["step"], m["time"]) for m in lines if "train/loss" in m and m["step"] > skip]
    for run in runs.values():
        shutil.rmtree(run)
    return (timed[-1][0] - timed[0][0]) / max(timed[-1][1] - timed[0][1], 1e-9)


def _eval_job(run: Path, step: int, sample_seed: int, out: Path, budget: dict, rollouts: int = 0,
              wait: bool = False) -> tuple[Job, Path]:
    checkpoint = run / f"step_{step}"
    result = out / "report" / f"eval_{run.name}_step{step}_seed{sample_seed}.json"
    log = out / "report" / f"episodes_{run.name}_step{step}_seed{sample_seed}.jsonl"
    log.unlink(missing_ok=True)
    argv = vla_argv("eval", "--checkpoint", str(checkpoint), "--sim", TASK, "--episodes", str(budget["eval_episodes"]),
                "--seed", str(HELDOUT_SEED), "--max-steps", str(budget["max_steps"]), "--sample-seed",
                str(sample_seed), "--image-size", str(budget["image_size"]), "--episode-log", str(log), "--json", str(result),
                "--save-rollouts", str(rollouts), "--no-progress")
    job = Job(f"eval {run.name} step {step} seed {sample_seed}", argv, total=budget["eval_episodes"],
              progress_file=log, after=checkpoint / "snapshot.json" if wait else None)
    return job, result


def placement_probe(policy, probe: RidgeProbe, placements: int, image_size: int) -> list[dict]:
    """The probe on the first frame of each closed-loop placement: predicted and true peg/hole (m)."""
    columns = column_indices(TARGET_COLUMNS, STATE_NAMES)
    env = SimEnv(TASK, seed=HELDOUT_SEED, views=VIEWS, image_size=image_size)
    try:
        records = [env.reset(p) for p in range(placements)]
        images = {v: np.stack([r.images[v] for r in records]) for v in VIEWS}
        true = np.stack([r.state[columns] for r in records]).astype(np.float64)
    finally:
        env.close()
    predicted = probe.predict(image_features(policy, images, task_instruction(TASK)))
    return [{"placement": p, "true": true[p].tolist(), "predicted": predicted[p].tolist()} for p in range(placements)]


def initial_policy(config, seed: int = 0):
    """The policy as `vla train --seed SEED` builds it before the first step: B's starting weights."""
    torch.manual_seed(seed)  # as the Trainer seeds before it builds the policy
    return build_policy(config).eval()


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
            out["placements"] = placement_probe(model, probe, placements, budget["image_size"])
    return out


def vision_budget(quick: bool, image_size: int, overrides, placement_seeds: int | None, steps: int | None) -> dict:
    """The experiment's budget with the levers applied (named errors for bad ones)."""
    if image_size % PATCH or image_size < PATCH:
        raise ConfigError(f"--image-size: expected a multiple of {PATCH} px (the backbone's merged patch), "
                          f"got {image_size}")
    if steps is not None and steps < 4:
        raise ConfigError(f"--steps: expected at least 4 training steps (snapshots at 1/4, 1/2 and all), got {steps}")
    if placement_seeds is not None and placement_seeds < 1:
        raise ConfigError(f"--placement-seeds: expected at least 1, got {placement_seeds}")
    budget = {**BUDGETS["quick" if quick else "full"], "image_size": image_size, "overrides": list(overrides)}
    if placement_seeds is not None:
        budget["seeds"] = training_seeds(placement_seeds)
    return budget


def step_budget(train: Path, out: Path, budget: dict, minutes: float, steps: int | None) -> tuple[int, float | None]:
    """(training steps, B's calibrated steps/s): `steps` as given (no calibration: None), or `minutes` of B's
    training on this machine, measured."""
    if steps is not None:
        return steps, None
    rate = calibrate(train, out, budget)
    steps = max(4, int(rate * minutes * 60))
    if budget["max_train_steps"]:
        steps = min(steps, budget["max_train_steps"])
    print(f"B trains at {rate:.2f} steps/s: {minutes:g} min = {steps} steps")
    return steps, rate


def vision_command(mode: str, minutes: float, rate: float | None, quick: bool, placement_seeds: int | None,
                   image_size: int, steps: int, overrides, expert: str = EXPERT) -> str:
    """The `vla demo --vision` command line a run stands for (`mode`: '', --seeing-only, --compare-experts):
    --minutes when they were calibrated into steps (`rate`), --steps when the steps were given."""
    return ("vla demo --vision" + (f" {mode}" if mode else "") + (f" --expert {expert}" if expert != EXPERT else "")
            + (f" --minutes {minutes:g}" if rate is not None else "")
            + (" --quick" if quick else "")
            + (f" --placement-seeds {placement_seeds}" if placement_seeds is not None else "")
            + (f" --image-size {image_size}" if image_size != IMAGE_SIZE else "")
            + (f" --steps {steps}" if rate is None else "") + "".join(f" -o {item}" for item in overrides))


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def run_vision_demo(out_dir: str | Path = "runs/vision", data_dir: str | Path = "data/vision", minutes: float = 60.0,
                    quick: bool = False, placement_seeds: int | None = None, image_size: int = IMAGE_SIZE,
                    overrides: list[str] | tuple[str, ...] = (), seeing_only: bool = False,
                    steps: int | None = None, expert: str = EXPERT) -> Path:
    """The levers: placement_seeds (x 48 demonstrations), image_size (px, rendered and seen), overrides
    (`KEY=VALUE` for the variants' `vla train -o`: backbone.size, fusion.mode, hidden_dim, ...).
    seeing_only: B alone (a lever measured against the blind baseline of an earlier run; the overrides may then
    be ones A cannot take, such as train.augment); steps: a fixed step budget instead of `minutes` calibrated
    (levers compared at equal steps); expert: both policies' action expert (regression is evaluated once: it is
    deterministic, so a second sampling seed would count the same episodes twice)."""
    from .vision_report import write_vision_report

    budget = vision_budget(quick, image_size, overrides, placement_seeds, steps)
    out, data = Path(out_dir), Path(data_dir)
    (out / "report").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, heldout = make_datasets(data, budget, out / "logs")
    t_data = time.perf_counter() - t0
    variants = ("sees",) if seeing_only else tuple(VARIANTS)
    steps, rate = step_budget(train, out, budget, minutes, steps)
    snapshots = sorted({steps // 4, steps // 2, steps})
    print(f"{' and '.join(variants)}: {steps} steps; snapshots at {snapshots}")
    runs = {v: out / v for v in variants}
    for run in runs.values():
        shutil.rmtree(run, ignore_errors=True)
    train_jobs = {v: Job(f"train {v}", _train_argv(v, train, run, steps, budget, snapshots, expert=expert),
                         total=steps, progress_file=run / "metrics.jsonl", progress_key="train/loss")
                  for v, run in runs.items()}
    seeds = budget["sample_seeds"][:1] if expert in DETERMINISTIC else budget["sample_seeds"]
    last = snapshots[-1]
    evals: dict[tuple[str, int, int], Path] = {}

    def job(variant: str, step: int, seed: int, **kwargs) -> Job:
        made, evals[variant, step, seed] = _eval_job(runs[variant], step, seed, out, budget, **kwargs)
        return made

    # lane 1: B trains, then its last snapshot; lane 2: A trains and is evaluated, then B's earlier
    # snapshots as they appear, and B's last with the second sampling seed
    lane1 = [train_jobs["sees"], job("sees", last, seeds[0], rollouts=budget["rollouts"])]
    lane2 = [*([train_jobs["blind"], *[job("blind", s, seeds[0]) for s in snapshots],
               *[job("blind", last, s) for s in seeds[1:]]] if "blind" in runs else []),
             *[job("sees", s, seeds[0], wait=True) for s in snapshots[:-1]],
             *[job("sees", last, s, wait=True) for s in seeds[1:]]]
    threads = threads_per_lane(2)
    run_lanes([lane1, lane2], out / "logs", threads=threads)
    t_runs = time.perf_counter() - t0 - t_data

    curve = []
    for step in snapshots:
        row = {"step": step}
        for variant in variants:
            meta = json.loads((runs[variant] / f"step_{step}" / "snapshot.json").read_text())
            per_seed = {s: next(iter(json.loads(evals[variant, step, s].read_text())["closed_loop"].values()))
                        for s in seeds if (variant, step, s) in evals}
            row[variant] = {"train_minutes": meta["train_seconds"] / 60, **pooled_closed_loop(per_seed)}
        curve.append(row)
    final = {v: load_for_eval(runs[v] / f"step_{last}") for v in variants}
    sampling = final["sees"].expert.sampling()  # as the closed loops sampled (the checkpoint's config, -o included)
    latency = {v: stage_latency({v: p}, heldout, repeats=budget["latency_repeats"]) for v, p in final.items()}
    initial = initial_policy(final["sees"].config)
    probe = run_probe(final["sees"], initial, train, heldout, budget, budget["eval_episodes"])
    closed_b = json.loads(evals["sees", last, seeds[0]].read_text())["closed_loop"]
    outcome = {r["placement"]: r["success"] for r in next(iter(closed_b.values()))["per_episode"]}
    for row in probe["placements"]:
        row["success"] = outcome.get(row["placement"])
    rollouts = next(iter(closed_b.values()))["rollouts"]
    total = time.perf_counter() - t0
    result = {
        "command": vision_command("--seeing-only" if seeing_only else "", minutes, rate, quick, placement_seeds,
                                  image_size, steps, overrides, expert),
        "machine": f"{machine()}; {' and '.join(variants)} in two parallel lanes of processes with {threads} thread(s) each",
        "variants": list(variants),
        "task": TASK, "views": list(VIEWS), "image_size": image_size, "expert": expert,
        "sampling": sampling.label if sampling.stochastic else "one pass",
        "overrides": list(overrides),
        "configs": {v: str(VARIANTS[v].relative_to(CONFIG_DIR.parent)) for v in variants},
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
