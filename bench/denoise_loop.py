"""Operators and time of the diffusion expert's denoising loop alone (random weights, batch 1).

On a GPU the loop is bound by how many kernels a step launches, not by arithmetic; this counts
them (CUDA kernels from the profiler; on a CPU the top-level aten operators, each at least one
kernel on a GPU): the per-chunk part (`ChunkPlan`), one denoising step, one scheduler step and a
whole DDIM loop, and times the loop (eager, and with --compile a torch.compile'd step).

    python bench/denoise_loop.py                                  # seed-size expert, this CPU
    python bench/denoise_loop.py --hidden 64 --layers 2 --heads 4 --feedforward 256 --tokens 20   # tiny
    python bench/denoise_loop.py --device cuda --compile --json $OUT/denoise_loop.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vla_models.config import ExpertConfig
from vla_models.experts.diffusion import ChunkPlan, DiffusionExpert
from vla_models.fusion import Condition


def count_ops(fn, device: torch.device) -> int:
    """Kernels launched by fn() on CUDA; top-level aten operators on a CPU."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--feedforward", type=int, default=4096)
    parser.add_argument("--horizon", type=int, default=8)
    parser.add_argument("--action-dim", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=164, help="condition tokens")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd step")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    config = ExpertConfig(type="diffusion", layers=args.layers, heads=args.heads, feedforward=args.feedforward)
    expert = DiffusionExpert(config, args.hidden, args.horizon, args.action_dim).to(device).eval()
    cond = Condition(torch.randn(1, args.tokens, args.hidden, device=device),
                     torch.ones(1, args.tokens, dtype=torch.bool, device=device))
    noise = torch.randn(1, args.horizon, args.action_dim, device=device)
    steps = {"eager": expert.denoise_step}
    if args.compile:
        steps["compiled"] = torch.compile(expert.denoise_step, dynamic=False)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "args": vars(args) | {"json": str(args.json)}}
    with torch.no_grad():
        sched = expert.inference_scheduler("ddim", args.steps)
        timesteps = expert.timesteps("ddim", args.steps, device)
        plan = ChunkPlan(expert, cond, timesteps)
        eps = expert.denoise_step(noise, plan)
        result["ops"] = {"chunk_plan": count_ops(lambda: ChunkPlan(expert, cond, timesteps), device),
                         "denoise_step": count_ops(lambda: (plan.select(1), expert.denoise_step(noise, plan)), device),
                         "scheduler_step": count_ops(lambda: sched.step(eps, 50, noise), device)}
        for name, step in steps.items():
            def loop():
                return expert.denoise_loop(cond, noise, "ddim", args.steps, step=step)

            for _ in range(3):
                loop()
            ops = count_ops(loop, device)
            times = []
            for _ in range(args.repeats):
                sync()
                start = time.perf_counter()
                loop()
                sync()
                times.append((time.perf_counter() - start) * 1e3)
            result[name] = {"ops_per_loop": ops, "loop_ms_median": round(statistics.median(times), 3),
                            "loop_ms_min": round(min(times), 3)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
