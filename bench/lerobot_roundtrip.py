"""Meta-World demo data -> LeRobotDataset v3 -> our episodes again: does a regression expert trained on
the round trip succeed as often as one trained on the original? (issue 26; docs/dataset.md)

    .venv/bin/python bench/lerobot_roundtrip.py [--quick] [--json docs/bench/lerobot_roundtrip.json]

1. `vla data sim` demonstrations (the `vla demo` budget: 40 demos of peg-insert-side-v3, placement seed 0);
2. `export_lerobot` -> a v3.0 folder, `import_lerobot` -> episodes; checks that actions, state and
   the sensor stream came back equal and the control period is the same;
3. `vla train` a regression expert on each (CPU preset, same seed and steps, two processes side by side);
4. `vla eval` both in closed loop on the same held-out placements (MT1 seed 1);
5. JSON: successes of both, their difference (the acceptance: at most 1 episode), times.
`--quick` is the smoke size `make test` runs (2 demos, 10 steps, 2 placements).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from vla_training.data.episodes import list_episodes
from vla_training.data.lerobot_export import export_lerobot
from vla_training.data.lerobot_import import import_lerobot
from vla_training.demos.demo import BUDGETS, CONFIG, HELDOUT_SEED, TASK, TRAIN_SEED, vla_argv

QUICK = {"demos": 2, "regression_steps": 10, "eval_episodes": 2, "max_steps": 40, "batch_size": 16}


def same_arrays(original: Path, back: Path) -> dict:
    """Per-field equality of the round trip."""
    result = {"episodes": 0, "actions_equal": True, "state_equal": True, "sensor_equal": True, "max_dt_error_s": 0.0}
    for a, b in zip(list_episodes(original), list_episodes(back), strict=True):
        result["episodes"] += 1
        result["actions_equal"] &= bool(np.array_equal(a.array("actions"), b.array("actions")))
        result["state_equal"] &= bool(np.array_equal(a.array("state"), b.array("state")))
        if a.has("sensor"):
            result["sensor_equal"] &= bool(b.has("sensor") and np.array_equal(a.array("sensor"), b.array("sensor")))
        dt = np.abs(np.diff(a.array("actions_t")) - np.diff(b.array("actions_t")))
        result["max_dt_error_s"] = max(result["max_dt_error_s"], float(dt.max()) if len(dt) else 0.0)
    return result


def run(argvs: list[list[str]], logs: list[Path]) -> None:
    """Processes side by side, one math thread each (2 cores here)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
             for argv, log in zip(argvs, logs)]
    for proc, log in zip(procs, logs):
        if proc.wait() != 0:
            raise RuntimeError(f"{' '.join(proc.args[2:6])} failed; see {log}:\n{log.read_text()[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size (make test)")
    parser.add_argument("--workdir", help="keep the data and runs here (default: a temporary directory)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    budget = QUICK if args.quick else BUDGETS["full"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vla-lerobot-roundtrip-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    original, lerobot, back = work / "original", work / "lerobot", work / "roundtrip"
    for path in (original, lerobot, back):
        shutil.rmtree(path, ignore_errors=True)
    run([vla_argv("data", "sim", "--out", str(original), "--task", TASK, "--episodes", str(budget["demos"]),
                  "--seed", str(TRAIN_SEED), "--views", "", "--no-progress")], [work / "data.log"])
    t_data = time.perf_counter() - t0
    export_lerobot(original, lerobot, "vla/peg_insert_side")
    import_lerobot(lerobot, back)
    t_convert = time.perf_counter() - t0 - t_data
    arrays = same_arrays(original, back)
    names = {"original": original, "roundtrip": back}
    run([vla_argv("train", "--config", CONFIG, "--dataset", str(data), "--out", str(work / f"run_{name}"),
                  "--expert", "regression", "--max-steps", str(budget["regression_steps"]),
                  "--batch-size", str(budget["batch_size"]), "--seed", str(TRAIN_SEED), "--no-progress")
         for name, data in names.items()], [work / f"train_{name}.log" for name in names])
    t_train = time.perf_counter() - t0 - t_data - t_convert
    run([vla_argv("eval", "--checkpoint", str(work / f"run_{name}"), "--json", str(work / f"eval_{name}.json"),
                  "--sim", TASK, "--episodes", str(budget["eval_episodes"]), "--seed", str(HELDOUT_SEED),
                  "--max-steps", str(budget["max_steps"]), "--no-progress") for name in names],
        [work / f"eval_{name}.log" for name in names])
    closed = {name: next(iter(json.loads((work / f"eval_{name}.json").read_text())["closed_loop"].values()))
              for name in names}
    successes = {name: int(c["successes"]) for name, c in closed.items()}
    figures = {
        "command": "bench/lerobot_roundtrip.py" + (" --quick" if args.quick else ""),
        "task": f"Meta-World {TASK}, {budget['demos']} demos (placement seed {TRAIN_SEED}), regression expert "
                f"{budget['regression_steps']} steps x batch {budget['batch_size']} (config/train_cpu.yaml, seed "
                f"{TRAIN_SEED}), closed loop on {budget['eval_episodes']} placements of MT1 seed {HELDOUT_SEED}, "
                f"<= {budget['max_steps']} steps",
        "round_trip_arrays": arrays,
        "successes": successes, "episodes": budget["eval_episodes"],
        "difference": abs(successes["original"] - successes["roundtrip"]),
        "within_one_episode": abs(successes["original"] - successes["roundtrip"]) <= 1,
        "seconds": {"data": round(t_data, 1), "export_import": round(t_convert, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    ok = figures["within_one_episode"] and arrays["actions_equal"] and arrays["state_equal"] and arrays["sensor_equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
