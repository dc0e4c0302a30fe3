"""`vla demo --modes`: where sampling must win, and chunk execution under delay.

One command: demonstrations of `peg-insert-side-obstacle-v3` (data/obstacle.py: a post across the
straight path, passed in front or behind, half each) -> the three experts trained with the main demo's
recipe -> closed loop on held-out placements (diffusion and flow once per sampling seed, pooled; a
contact sheet per expert) -> the same checkpoints executed under delay: each chunk arrives `d` control
steps after its observation while the simulator runs on (evaluation/chunk_execution.py), with `switch`,
`ensemble` and, for flow and diffusion, `rtc` -> runs/modes/report/modes.md (+ modes.json, one plot).

Not in `make demo` (it would not fit the 25-minute budget); its wall time is in the report.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from ..data.obstacle import OBSTACLE_TASK
from ..evaluation.evaluate import wilson_interval
from .demo import EXPERTS, HELDOUT_SEED, STOCHASTIC, TRAIN_SEED, _train_job, vla_argv
from .lanes import Job, run_lanes, threads_per_lane

BUDGETS = {
    "full": {"demos": 60, "regression_steps": 2000, "diffusion_steps": 6000, "flow_steps": 6000, "batch_size": 64,
             "eval_episodes": 50, "max_steps": 300, "sample_seeds": [0, 1], "delays": [0, 1, 2, 4],
             "delay_seeds": {0: [0, 1], 1: [0], 2: [0], 4: [0, 1]}},
    "quick": {"demos": 2, "regression_steps": 10, "diffusion_steps": 10, "flow_steps": 10, "batch_size": 16,
              "eval_episodes": 1, "max_steps": 20, "sample_seeds": [0, 1], "delays": [0, 2],
              "delay_seeds": {0: [0], 2: [0]},  # a smoke run: each expert, strategy and table once, not the grid
              "cells": [("regression", "ensemble", 2, 0), ("diffusion", "rtc", 2, 0), ("flow", "switch", 0, 0)]},
}
STRATEGIES = {"regression": ("switch", "ensemble"), "diffusion": ("switch", "ensemble", "rtc"),
              "flow": ("switch", "ensemble", "rtc")}
EXECUTE = 8


def _eval_job(out: Path, name: str, budget: dict, seed: int, strategy: str = "switch", delay: int = 0,
              rollouts: int = 0) -> tuple[Job, Path]:
    tag = f"{name}_{strategy}_d{delay}_seed{seed}"
    result, log = out / "evals" / f"{tag}.json", out / "evals" / f"{tag}.jsonl"
    log.unlink(missing_ok=True)
    argv = vla_argv("eval", "--checkpoint", str(out / name), "--sim", OBSTACLE_TASK,
                    "--episodes", str(budget["eval_episodes"]), "--seed", str(HELDOUT_SEED),
                    "--max-steps", str(budget["max_steps"]), "--execute", str(EXECUTE), "--sample-seed", str(seed),
                    "--chunk-execution", strategy, "--delay", str(delay), "--save-rollouts", str(rollouts),
                    "--episode-log", str(log), "--json", str(result), "--no-progress")
    return Job(f"eval {tag}", argv, total=budget["eval_episodes"], progress_file=log), result


def _mark(path: Path) -> Job:
    return Job(f"mark {path.parent.name} trained", [sys.executable, "-c", "import pathlib, sys; "
                                                     "pathlib.Path(sys.argv[1]).touch()", str(path)])


def _grid(budget: dict) -> list[tuple[str, str, int, int]]:
    """(expert, strategy, delay, sampling seed) of every closed loop; regression is deterministic: seed 0 only."""
    if "cells" in budget:
        return list(budget["cells"])
    cells = []
    for delay in budget["delays"]:
        for name in EXPERTS:
            for strategy in STRATEGIES[name]:
                if strategy == "rtc" and delay == 0:
                    continue  # rtc with nothing executing during inference is switch (tested bit for bit)
                seeds = budget["delay_seeds"][delay] if name in STOCHASTIC else [0]
                cells += [(name, strategy, delay, seed) for seed in seeds]
    return cells


def _pooled(results: list[dict]) -> dict:
    runs = [next(iter(r["closed_loop"].values())) for r in results]
    wins, n = sum(r["successes"] for r in runs), sum(r["episodes"] for r in runs)
    episodes = [e for r in runs for e in r["per_episode"]]
    jerks = [e["boundary_jerk"] for e in episodes if e["boundary_jerk"] is not None]
    passed: dict[str, int] = {}
    for r in runs:
        for side, count in r.get("passed", {}).items():
            passed[side] = passed.get(side, 0) + count
    return {"seeds": [r["sample_seed"] for r in runs], "successes": wins, "episodes": n,
            "success_rate": wins / max(n, 1), "success_ci95": wilson_interval(wins, n),
            "per_seed": {str(r["sample_seed"]): r["successes"] for r in runs},
            "obstacle_contacts": sum(r.get("obstacle_contacts", 0) for r in runs), "passed": passed,
            "boundary_jerk": sum(jerks) / len(jerks) if jerks else None,
            "rollouts": [x for r in runs for x in r.get("rollouts", [])]}


def run_modes_demo(out_dir: str | Path = "runs/modes", data_dir: str | Path = "data/modes", quick: bool = False) -> Path:
    budget = BUDGETS["quick" if quick else "full"]
    out, data = Path(out_dir), Path(data_dir) / "train"
    t0 = time.perf_counter()
    if not (data / "dataset.json").exists() or json.loads((data / "dataset.json").read_text()) != budget["demos"]:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
        run_lanes([[Job("demos", vla_argv("data", "sim", "--out", str(data), "--task", OBSTACLE_TASK, "--episodes",
                                          str(budget["demos"]), "--seed", str(TRAIN_SEED), "--modes", "2",
                                          "--views", "", "--no-progress"))]], out / "logs", threads=1)
        (data / "dataset.json").write_text(json.dumps(budget["demos"]))
    t_data = time.perf_counter() - t0
    (out / "evals").mkdir(parents=True, exist_ok=True)
    train = {name: _train_job(name, data, out, name, budget[f"{name}_steps"], budget) for name in EXPERTS}
    cells = _grid(budget)
    evals = {cell: _eval_job(out, cell[0], budget, seed=cell[3], strategy=cell[1], delay=cell[2],
                             rollouts=1 if cell[1:] == ("switch", 0, 0) else 0) for cell in cells}
    trained = {name: out / name / "TRAINED" for name in EXPERTS}  # made once its training has finished
    for path in trained.values():
        path.unlink(missing_ok=True)
    # two lanes: diffusion (the slowest to train) then its closed loops and regression's (trained early in
    # the other lane); regression then flow, then flow's closed loops
    lanes = [[train["diffusion"], _mark(trained["diffusion"])], [train["regression"], _mark(trained["regression"]),
                                                                  train["flow"], _mark(trained["flow"])]]
    for cell in cells:
        job = evals[cell][0]
        job.after = trained[cell[0]]
        lanes[1 if cell[0] == "flow" else 0].append(job)
    run_lanes(lanes, out / "logs", threads=threads_per_lane(len(lanes)))
    t_train_eval = time.perf_counter() - t0 - t_data

    table: dict[str, dict] = {}
    for name in EXPERTS:
        for strategy in STRATEGIES[name]:
            for delay in budget["delays"]:
                runs = [json.loads(evals[c][1].read_text()) for c in cells if c[:3] == (name, strategy, delay)]
                if runs:
                    table[f"{name}/{strategy}/d{delay}"] = {"expert": name, "strategy": strategy, "delay": delay,
                                                            **_pooled(runs)}
    total = time.perf_counter() - t0
    context = {
        "command": "vla demo --modes" + (" --quick" if quick else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{'CUDA' if torch.cuda.is_available() else 'CPU'}; two lanes of one-thread processes",
        "task": f"Meta-World {OBSTACLE_TASK} (data/obstacle.py); success = inserted without touching the post",
        "data": f"{budget['demos']} scripted demonstrations (placement seed {TRAIN_SEED}): {budget['demos'] // 2} "
                f"placements, each passed in front and behind",
        "training": "; ".join(f"{n}: {budget[f'{n}_steps']} steps x batch {budget['batch_size']} "
                              f"({train[n].seconds:.0f} s)" for n in EXPERTS) + " (config/train_cpu.yaml, seed 0)",
        "closed loop": f"{budget['eval_episodes']} held-out placements (seed {HELDOUT_SEED}), <= {budget['max_steps']} "
                       f"steps, {EXECUTE} actions per chunk; sampling seeds per delay {budget['delay_seeds']} "
                       f"(regression: deterministic, one run)",
        "wall time": f"data {t_data:.0f} s, training + closed loops {t_train_eval:.0f} s, total {total:.0f} s",
    }
    report = write_modes_report(table, out / "report", context)
    print(f"\nreport: {report}  (total {total / 60:.1f} min)")
    return report


def _pct(cell: dict) -> str:
    lo, hi = cell["success_ci95"]
    return f"{100 * cell['success_rate']:.0f} % ({cell['successes']}/{cell['episodes']}, CI {100 * lo:.0f}-{100 * hi:.0f} %)"


def write_modes_report(table: dict, out: Path, context: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "modes.json").write_text(json.dumps({"context": context, "cells": table}, indent=2))
    lines = ["# Where sampling must win: the obstacle task, and chunk execution under delay", ""]
    lines += [f"- **{k}**: {v}" for k, v in context.items()]
    lines += ["", "## Closed loop, no delay (switch = the receding horizon)", "",
              "| expert | success (pooled over sampling seeds) | per seed | touched the post | where the hand passed |",
              "|---|---|---|---|---|"]
    for key, cell in table.items():
        if cell["strategy"] == "switch" and cell["delay"] == 0:
            passed = ", ".join(f"{k}: {v}" for k, v in sorted(cell["passed"].items()))
            lines.append(f"| {cell['expert']} | {_pct(cell)} | {cell['per_seed']} | {cell['obstacle_contacts']} | "
                         f"{passed} |")
    sheets = [(cell["expert"], r["contact_sheet"]) for cell in table.values() for r in cell["rollouts"]]
    lines += ["", "Contact sheets (first held-out placement, sampling seed 0): "
              + ", ".join(f"[{name}]({os.path.relpath(path, out)})" for name, path in sheets), ""]
    lines += ["## Under delay: success and chunk-boundary jerk", "",
              "Delay d: control steps between an observation and its chunk's arrival (the sim runs on). Jerk: mean "
              "|second difference| of the executed actions at chunk boundaries.", "",
              "| expert | strategy | delay | success | boundary jerk |", "|---|---|---|---|---|"]
    for cell in table.values():
        jerk = "-" if cell["boundary_jerk"] is None else f"{cell['boundary_jerk']:.3f}"
        lines.append(f"| {cell['expert']} | {cell['strategy']} | {cell['delay']} | {_pct(cell)} | {jerk} |")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (name, strategy) in sorted({(c["expert"], c["strategy"]) for c in table.values()}):
        cells = sorted((c for c in table.values() if (c["expert"], c["strategy"]) == (name, strategy)),
                       key=lambda c: c["delay"])
        delays = [c["delay"] for c in cells]
        rate = [100 * c["success_rate"] for c in cells]
        err = [[100 * (c["success_rate"] - c["success_ci95"][0]) for c in cells],
               [100 * (c["success_ci95"][1] - c["success_rate"]) for c in cells]]
        style = {"switch": "-", "ensemble": "--", "rtc": ":"}[strategy]
        color = {"regression": "C0", "diffusion": "C1", "flow": "C2"}[name]
        axes[0].errorbar(delays, rate, yerr=err, linestyle=style, color=color, marker="o", capsize=3,
                         label=f"{name} {strategy}")
        axes[1].plot(delays, [c["boundary_jerk"] or 0.0 for c in cells], linestyle=style, color=color, marker="o")
    axes[0].set(xlabel="delay (control steps)", ylabel="success (%)", ylim=(0, 100), title="success, 95 % CI")
    axes[1].set(xlabel="delay (control steps)", ylabel="mean |2nd difference| at boundaries", title="boundary jerk")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "modes.png", dpi=110)
    plt.close(fig)
    lines += ["", "![success and jerk under delay](modes.png)", ""]
    report = out / "modes.md"
    report.write_text("\n".join(lines))
    return report
