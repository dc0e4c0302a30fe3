"""`vla demo --vision --compare-experts`: which expert, where the policy must see.

The seeing policy B (config/vision_sees.yaml with the run's `-o` overrides: the recipe) trained once
with each expert - regression (one pass), diffusion (DDIM-10), flow (K = 10 Euler steps) - on the same
demonstrations, for the same steps, schedule and seed, each in its own lane; then the closed loop on the
same held-out placements (MT1 seed 1) as `vla demo --vision`, the stochastic experts once per sampling
seed, pooled with a Wilson interval, and each expert's per-stage latency -> DIR/experts.md and
DIR/report/experts.json, with a plot of the pooled rates and their intervals (DIR/report/vision_experts.png).
Outside `make demo`: three trainings of B.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..evaluation.evaluate import load_for_eval, stage_latency
from ..evaluation.report import _fmt, plot_success_bars
from ..files import write_json_atomic
from .demo import pooled_closed_loop
from .lanes import Job, run_lanes, threads_per_lane
from .vision_demo import (DETERMINISTIC, HELDOUT_SEED, IMAGE_SIZE, TASK, VIEWS, _eval_job, _train_argv, machine,
                          make_datasets, step_budget, vision_budget, vision_command)
from .vision_report import _rate

EXPERTS = ("regression", "diffusion", "flow")


def run_vision_experts(out_dir: str | Path = "runs/vision_experts", data_dir: str | Path = "data/vision",
                       minutes: float = 60.0, quick: bool = False, placement_seeds: int | None = None,
                       image_size: int = IMAGE_SIZE, overrides: list[str] | tuple[str, ...] = (),
                       steps: int | None = None) -> Path:
    budget = vision_budget(quick, image_size, overrides, placement_seeds, steps)
    out, data = Path(out_dir), Path(data_dir)
    (out / "report").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, heldout = make_datasets(data, budget, out / "logs")
    t_data = time.perf_counter() - t0
    # B's rate with the default expert on this machine: every expert trains the same steps
    steps, rate = step_budget(train, out, budget, minutes, steps)
    print(f"regression, diffusion and flow: {steps} steps each")
    runs = {e: out / e for e in EXPERTS}
    evals: dict[tuple[str, int], Path] = {}
    lanes = []
    for expert, run in runs.items():
        shutil.rmtree(run, ignore_errors=True)
        lane = [Job(f"train {expert}", _train_argv("sees", train, run, steps, budget, [steps], expert=expert),
                    total=steps, progress_file=run / "metrics.jsonl", progress_key="train/loss")]
        for seed in budget["sample_seeds"][:1] if expert in DETERMINISTIC else budget["sample_seeds"]:
            job, evals[expert, seed] = _eval_job(run, steps, seed, out, budget)
            lane.append(job)
        lanes.append(lane)
    threads = threads_per_lane(len(lanes))
    run_lanes(lanes, out / "logs", threads=threads)
    t_runs = time.perf_counter() - t0 - t_data

    rows = {}
    for expert, run in runs.items():
        meta = json.loads((run / f"step_{steps}" / "snapshot.json").read_text())
        per_seed = {s: next(iter(json.loads(path.read_text())["closed_loop"].values()))
                    for (e, s), path in evals.items() if e == expert}
        policy = load_for_eval(run / f"step_{steps}")
        latency = stage_latency({expert: policy}, heldout, repeats=budget["latency_repeats"])
        rows[expert] = {"train_minutes": meta["train_seconds"] / 60, **pooled_closed_loop(per_seed),
                        "latency_ms": {label: stages["total_ms"]["median"] for label, stages in latency.items()}}
    total = time.perf_counter() - t0
    result = {
        "command": vision_command("--compare-experts", minutes, rate, quick, placement_seeds, image_size, steps,
                                  overrides),
        "machine": f"{machine()}; the three experts in parallel lanes of processes with {threads} thread(s) each",
        "task": TASK, "views": list(VIEWS), "image_size": budget["image_size"], "overrides": list(overrides),
        "data": {"placement_seeds": budget["seeds"], "demos_per_seed": budget["demos_per_seed"]},
        "budget": {"steps": steps, "calibrated_steps_per_s": rate, "batch_size": budget["batch_size"],
                   "sample_seeds": budget["sample_seeds"]},
        "closed_loop": {"episodes": budget["eval_episodes"], "placement_seed": HELDOUT_SEED,
                        "max_steps": budget["max_steps"]},
        "experts": rows, "wall_time_s": {"data": t_data, "train_and_eval": t_runs, "total": total},
    }
    write_json_atomic(out / "report" / "experts.json", result)
    report = write_experts_report(result, out)
    print(f"\nreport: {report}  (total {total / 60:.1f} min)")
    return report


def write_experts_report(result: dict, out: Path) -> Path:
    budget, loop = result["budget"], result["closed_loop"]
    lines = ["# Which expert, where the policy must see", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}",
             f"- the seeing policy (config/vision_sees.yaml, views {', '.join(result['views'])} at "
             f"{result['image_size']} px; overrides {result['overrides']}) with each expert, {budget['steps']} steps x "
             f"batch {budget['batch_size']}, the same data ({len(result['data']['placement_seeds'])} placement seeds x "
             f"{result['data']['demos_per_seed']} demonstrations), schedule and seed",
             f"- closed loop: {loop['episodes']} placements of MT1 seed {loop['placement_seed']} (not in training), "
             f"<= {loop['max_steps']} steps; diffusion and flow once per sampling seed {budget['sample_seeds']}, pooled; "
             "regression once (deterministic)",
             f"- wall time: data {result['wall_time_s']['data']:.0f} s, training and evaluation "
             f"{result['wall_time_s']['train_and_eval']:.0f} s, total {result['wall_time_s']['total']:.0f} s", "",
             "| expert | training min | success (pooled, 95 % CI) | per sampling seed | latency, batch 1 (median ms) |",
             "|---|---|---|---|---|"]
    for expert, row in result["experts"].items():
        seeds = ", ".join(f"{100 * v:.0f} %" for v in row["per_seed"].values())
        latency = ", ".join(f"{label} {_fmt(ms, 1)}" for label, ms in row["latency_ms"].items())
        lines.append(f"| {expert} | {row['train_minutes']:.1f} | {_rate(row)} | {seeds} | {latency} |")
    plot = plot_success_bars(list(result["experts"]), list(result["experts"].values()),
                             out / "report" / "vision_experts.png",
                             title="the seeing policy B, closed loop on held-out placements", per_seed=True)
    lines += ["", f"![success per expert](report/{plot.name})"]
    report = out / "experts.md"
    tmp = out / ".experts.md.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(report)
    return report

