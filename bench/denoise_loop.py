"""Operators and time of the diffusion expert's denoising loop alone (random weights, batch 1).

On a GPU the loop is bound by how many kernels a step launches and how many weight bytes it reads,
not by arithmetic. This counts the kernels (CUDA kernels from the profiler; on a CPU the top-level
aten operators, each at least one kernel on a GPU) of the per-chunk part (`ChunkPlan`), one
denoising step, one scheduler step (diffusers) and one coefficient-tensor update, and a whole DDIM
loop, lists the loop's costliest kernels (CUDA), and times the loop both ways (`scheduler`: diffusers'
`DDIMScheduler.step` per step; `tensor`: the update as tensor arithmetic, what sampling runs): eager,
with a torch.compile'd step (--compile), with the expert's weights in bf16 (--bf16), and on CUDA also
replayed from a CUDA graph as `StaticRunner` runs it.

    python bench/denoise_loop.py                                  # seed-size expert, this CPU
    python bench/denoise_loop.py --hidden 64 --layers 2 --heads 4 --feedforward 256 --tokens 20   # tiny
    python bench/denoise_loop.py --device cuda --compile --bf16 --json $OUT/denoise_loop.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vla_models.config import ExpertConfig
from vla_models.experts.diffusion import ChunkPlan, DiffusionExpert
from vla_models.fusion import Condition
from vla_models.static_runner import CudaGraph
from vla_training.evaluation.bench import wall_times_ms

from profile_backbone import kernel_profile  # bench/, beside this script


def profile_ops(fn, device: torch.device, top: int = 0) -> tuple[int, list]:
    """(kernels launched by fn() on CUDA, or top-level aten operators on a CPU; on CUDA the `top`
    kernels by device time, as profile_backbone.py lists them)."""
    if device.type == "cuda":
        kernels = kernel_profile(fn, device, top)
        return kernels["kernels"], kernels["top"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))), []


def median_ms(fn, repeats: int, device: torch.device) -> dict:
    times = wall_times_ms(fn, repeats, device)
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3)}


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
    parser.add_argument("--compile", action="store_true", help="also a torch.compile'd step")
    parser.add_argument("--bf16", action="store_true", help="also the expert's weights in bfloat16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ExpertConfig(type="diffusion", layers=args.layers, heads=args.heads, feedforward=args.feedforward)
    expert = DiffusionExpert(config, args.hidden, args.horizon, args.action_dim).to(device).eval()
    cond = Condition(torch.randn(1, args.tokens, args.hidden, device=device),
                     torch.ones(1, args.tokens, dtype=torch.bool, device=device))
    noise = torch.randn(1, args.horizon, args.action_dim, device=device)  # the sample stays float32
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "args": vars(args) | {"json": str(args.json)},
              "expert_parameters": sum(p.numel() for p in expert.parameters())}
    with torch.no_grad():
        sched = expert.inference_scheduler("ddim", args.steps)
        timesteps = expert.timesteps("ddim", args.steps, device)
        plan = ChunkPlan(expert, cond, timesteps)
        eps = expert.denoise_step(noise, plan)
        result["ops"] = {"chunk_plan": profile_ops(lambda: ChunkPlan(expert, cond, timesteps), device)[0],
                         "denoise_step": profile_ops(lambda: (plan.select(1), expert.denoise_step(noise, plan)),
                                                     device)[0],
                         "scheduler_step": profile_ops(lambda: sched.step(eps, 50, noise), device)[0],
                         "tensor_update": profile_ops(lambda: expert.ddim_update(
                             noise, eps, expert.ddim_coefficients(args.steps, device)[0]), device)[0]}
        for dtype in [torch.float32] + ([torch.bfloat16] if args.bf16 else []):
            net = expert if dtype == torch.float32 else copy.deepcopy(expert).to(dtype)
            c = Condition(cond.tokens.to(dtype), cond.mask)
            # the loop with diffusers' scheduler.step, and with the update as coefficient tensors (what sampling runs)
            for mode, kind in itertools.product(["eager"] + (["compiled"] if args.compile else []), ["scheduler", "tensor"]):
                name = f"{str(dtype).removeprefix('torch.')}-{mode}-{kind}"
                try:
                    step = torch.compile(net.denoise_step, dynamic=False) if mode == "compiled" else None

                    def loop(tokens=c.tokens, mask=c.mask, x=noise, model=net, step=step, kind=kind):
                        cond_ = Condition(tokens, mask)
                        return (model.ddim_loop(cond_, x, args.steps, step=step) if kind == "tensor" else
                                model.denoise_loop(cond_, x, "ddim", args.steps, step=step),)

                    for _ in range(3):
                        loop()
                    ops, top = profile_ops(loop, device, top=8)
                    figures = {"ops_per_loop": ops, "loop_ms": median_ms(loop, args.repeats, device)}
                    if top:
                        figures["top_kernels"] = top
                    if device.type == "cuda":  # as StaticRunner runs it: the whole loop replayed from one graph
                        graph = CudaGraph(loop, [c.tokens, c.mask, noise])
                        figures["graph_loop_ms"] = median_ms(lambda: graph(c.tokens, c.mask, noise), args.repeats, device)
                except Exception as exc:  # reported, not hidden: the other variants still run
                    figures = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
                result[name] = figures
                print(name, json.dumps(figures), flush=True)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
