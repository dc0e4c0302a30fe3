"""Chunk execution under delay with the demonstrator's own future as the chunk: what the task allows.

    python bench/demonstrator_chunks.py [--task peg-insert-side-obstacle-v3] [--episodes 50] [--seed 1]
                                        [--delays 0 1 2 4] [--strategies switch ensemble] [--json FILE]

Each chunk is the scripted demonstrator (the one that recorded the training demonstrations) rolled out
for `horizon` steps on a twin of the simulator set to the observation's physics state: a perfect policy
that plans consistently from one chunk to the next. The chunks go through the closed loop's own
execution (`DelayedChunks`: each arrives `delay` steps after its observation while the simulator runs
on, as `vla eval --delay`). Where this stays high and a trained policy collapses, the delay is not what
the task cannot take; the policy's chunks are. On the obstacle task each placement is passed in front of
the post on even episodes and behind it on odd ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np

from vla_training.data.obstacle import OBSTACLE_TASK, DetourExpert
from vla_training.data.sim import SimEnv, ViaPointExpert
from vla_training.evaluation.chunk_execution import DelayedChunks
from vla_training.evaluation.evaluate import wilson_interval


def episode(env: SimEnv, twin: SimEnv, placement: int, strategy: str, delay: int, execute: int, horizon: int,
            max_steps: int) -> dict:
    record = env.reset(placement)
    mode = (-1, 1)[placement % 2]
    expert = DetourExpert(mode) if env.task == OBSTACLE_TASK else ViaPointExpert(env.task, mode)
    runner = DelayedChunks(strategy, delay, execute, horizon, True)
    steps, success, contact = 0, False, False
    while steps < max_steps and not success:
        if runner.due(steps):  # the demonstrator's next `horizon` actions from this state, on the twin
            twin.reset(placement)  # (Meta-World counts a twin's steps toward its episode limit)
            twin.set_state(env.get_state())
            planner, state, chunk = copy.deepcopy(expert), record.state, []
            for _ in range(horizon):
                chunk.append(planner(state))
                state = twin.step(chunk[-1]).state
            runner.submit(steps, np.asarray(chunk))
        action = runner.action(steps)
        expert(record.state)  # the demonstrator's stages follow the executed state
        record = env.step(action if action is not None else env.hold_action())
        contact |= bool(record.info.get("obstacle_contact", False))
        steps += 1
        success = record.success
        if contact:
            break
    return {"placement": placement, "success": bool(success), "length": steps, "obstacle_contact": contact}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=OBSTACLE_TASK)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1, help="placement seed (1: the closed loops' held-out set)")
    parser.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--strategies", nargs="+", default=["switch", "ensemble"], choices=["switch", "ensemble"])
    parser.add_argument("--execute", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    env = SimEnv(args.task, seed=args.seed, views=(), render=False)
    twin = SimEnv(args.task, seed=args.seed, views=(), render=False)
    results = []
    try:
        for strategy in args.strategies:
            for delay in args.delays:
                start = time.perf_counter()
                runs = [episode(env, twin, p, strategy, delay, args.execute, args.horizon, args.max_steps)
                        for p in range(args.episodes)]
                wins = sum(r["success"] for r in runs)
                lo, hi = wilson_interval(wins, len(runs))
                results.append({"strategy": strategy, "delay": delay, "successes": wins, "episodes": len(runs),
                                "success_ci95": [lo, hi], "obstacle_contacts": sum(r["obstacle_contact"] for r in runs),
                                "seconds": round(time.perf_counter() - start, 1), "per_episode": runs})
                print(f"{strategy:8s} delay {delay}: {wins}/{len(runs)} = {100 * wins / len(runs):.0f} % "
                      f"(95 % CI {100 * lo:.0f}-{100 * hi:.0f} %)", flush=True)
    finally:
        env.close()
        twin.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "placement_seed": args.seed, "execute": args.execute,
                                               "horizon": args.horizon, "max_steps": args.max_steps,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
