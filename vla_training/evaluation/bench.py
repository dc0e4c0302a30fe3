"""`vla bench`: per-stage inference latency at batch 1 (median, p95) for every expert on one backbone.

Both experts share one backbone object, so regression and diffusion are timed on the same weights,
inputs and process. Runners, each an optimisation on top of the previous one (measured in order):

- `eager`: `VLAPolicy.predict_action_chunk` as trained (fp32 weights; bf16 autocast on CUDA);
- `eager-bf16`: the same with the backbone's weights cast to bf16 once (CUDA only);
- `static`: `StaticRunner` without graphs: prompt layout precomputed, images processed by torch on the device;
- `graphs`: `StaticRunner` with each stage captured in a CUDA graph (CUDA only);
- `compiled`: the same with the encoders and the expert network compiled by torch.compile (CUDA only);
- `compiled-backbone`: the same with each backbone layer compiled too (CUDA only);
- `bf16-expert`: the same with the expert's weights in bfloat16 (its own copy; samples and the
  scheduler stay float32), halving the bytes a denoising step reads (CUDA only).

The expert's denoising step is also timed alone (with and without the per-chunk constants precomputed)
at 1 and 8 samples. A stage that fails is reported with its error, and the others still run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vla_models import build_policy, load_policy, preset
from vla_models.experts import EXPERTS
from vla_models.experts.diffusion import ChunkPlan
from vla_models.policy import VLAPolicy
from vla_models.static_runner import StaticRunner
from vla_models.testing import fake_observation, fit_fake_statistics

from .evaluate import resolve_checkpoint

RUNNERS = ("eager", "eager-bf16", "static", "graphs", "compiled", "compiled-backbone", "bf16-expert")
GRAPHED = ("graphs", "compiled", "compiled-backbone", "bf16-expert")
COMPILED = ("compiled", "compiled-backbone", "bf16-expert")
BACKBONE_COMPILED = ("compiled-backbone", "bf16-expert")  # long compiles: not run by default (bench/gpu.sh runs them)


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_policies(spec: str, device: torch.device, overrides: dict | None = None) -> dict[str, VLAPolicy]:
    """One policy per expert type (regression, diffusion, flow) sharing one backbone: from a preset (random
    weights, statistics fitted on random data) or from checkpoint directories/runs (`spec` = RUN[,RUN])."""
    if Path(spec.split(",")[0]).exists():
        policies = {}
        for path in spec.split(","):
            policy = load_policy(resolve_checkpoint(path), device=device)
            policies[policy.config.expert.type] = policy
        return policies
    config = preset(spec, **(overrides or {}))
    with torch.device(device):  # build the weights where they run (a 3B backbone initialises in seconds on a GPU)
        policies = {"regression": build_policy(config.replace(**{"expert.type": "regression"}))}
        for kind in EXPERTS:
            if kind not in policies:
                policies[kind] = VLAPolicy(config.replace(**{"expert.type": kind}), backbone=policies["regression"].backbone)
    for policy in policies.values():
        fit_fake_statistics(policy)
        policy.to(device).eval()
    return policies


def _summary(runs: list[dict]) -> dict:
    return {stage: {"median": statistics.median(r[stage] for r in runs),
                    "p95": float(np.percentile([r[stage] for r in runs], 95))} for stage in runs[0]}


def time_variants(policies: dict, runner: str, observation: dict, repeats: int, warmup: int,
                  variants: list[str]) -> dict:
    out: dict = {}
    engines = {name: (StaticRunner(p, cuda_graphs=runner in GRAPHED, compile_heads=runner in COMPILED,
                                   compile_backbone=runner in BACKBONE_COMPILED,
                                   expert_dtype=torch.bfloat16 if runner == "bf16-expert" else None)
                      if runner == "static" or runner in GRAPHED else p)
               for name, p in policies.items()}
    for name, policy in policies.items():
        for spec in policy.expert.latency_variants():
            if spec.label in variants:
                out[spec.label] = _time_one(engines[name], policy.expert.options_for(sampler=spec.sampler,
                                                                                   steps=spec.steps),
                                            observation, repeats, warmup)
    return out


def _time_one(engine, overrides: dict, observation: dict, repeats: int, warmup: int) -> dict:
    """Stage latencies of one sampling; an error is reported in the figures, not raised (one failing
    stage must not lose the others)."""
    try:
        for _ in range(warmup):
            engine.predict_action_chunk(observation, seed=0, **overrides)
        runs = []
        for r in range(repeats):
            engine.predict_action_chunk(observation, seed=r, **overrides)
            runs.append(dict(engine.last_timings))
        out = _summary(runs)
        if getattr(engine, "capture_errors", None):
            out["capture_errors"] = dict(engine.capture_errors)
        return out
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}


def wall_times_ms(fn, repeats: int, device: torch.device, warmup: int = 0) -> list[float]:
    """Wall times of `repeats` calls of fn() after `warmup` untimed ones (CUDA synchronised around each)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


@torch.no_grad()
def time_expert_step(policy: VLAPolicy, observation: dict, repeats: int) -> dict:
    """One denoising step of the diffusion expert on the policy's real condition, per sample count:
    `uncached` computes everything per step (the training path), `cached` selects the timestep in a
    `ChunkPlan` (condition keys/values and time tokens computed once per chunk) and runs the step."""
    prepared = policy.prepare(observation)
    cond = policy.encode(prepared)
    expert, out = policy.expert, {"condition_tokens": int(cond.tokens.shape[1])}
    for n in (1, 8):
        c = cond.repeat_interleave(n)
        x = torch.randn(n, expert.horizon, expert.action_dim, device=policy.device)
        t = torch.full((n,), 50, dtype=torch.long, device=policy.device)
        plan = ChunkPlan(expert, c, t[:1])

        def cached():
            plan.select(0)
            return expert.denoise_step(x, plan)

        for name, fn in (("uncached", lambda: expert.denoise(x, t, c)), ("cached", cached)):
            out[f"step_ms_{name}_samples{n}"] = statistics.median(wall_times_ms(fn, repeats, policy.device, warmup=3))
    return out


def run_bench(spec: str, device: str = "cpu", runners: list[str] | None = None, image_size: tuple[int, int] = (360, 640),
              repeats: int = 20, warmup: int = 3, variants: list[str] | None = None, seed: int = 0,
              on_update=None, overrides: dict | None = None) -> dict:
    """All figures for one preset or checkpoint pair; `image_size` is (H, W).

    on_update(result): called after each runner with the figures so far (to save partial results).
    overrides: dotted config keys for a preset, e.g. {"hidden_dim": 1024}.
    """
    dev = torch.device(device)
    runners = runners or ([r for r in RUNNERS if r not in BACKBONE_COMPILED] if dev.type == "cuda" else ["eager", "static"])
    unknown = [r for r in runners if r not in RUNNERS]
    if unknown:
        raise ValueError(f"runners: unknown {unknown}; expected some of {list(RUNNERS)}")
    torch.manual_seed(seed)
    start = time.perf_counter()
    policies = build_policies(spec, dev, overrides)
    variants = variants or [s.label for p in policies.values() for s in p.expert.latency_variants()]
    config = next(iter(policies.values())).config
    observation = fake_observation(config, 1, seed=seed, image_size=image_size)
    result: dict = {"spec": spec, "overrides": overrides or {}, "device": str(dev), "machine": machine_info(dev), "views": list(config.views),
                    "image_size_hw": list(image_size), "sensor_window": config.sensor.window,
                    "sensor_channels": config.sensor.channels, "hidden_dim": config.hidden_dim,
                    "expert_layers": config.expert.layers, "horizon": config.horizon, "repeats": repeats,
                    "build_s": round(time.perf_counter() - start, 1), "runners": {}}
    for runner in tqdm(runners, desc="bench runners", unit="runner"):
        if (runner == "eager-bf16" or runner in GRAPHED) and dev.type != "cuda":
            result["runners"][runner] = {"skipped": "CUDA only"}
            continue
        if runner != "eager" and dev.type == "cuda":
            for policy in policies.values():
                if policy.backbone is not None:
                    policy.backbone.model.to(torch.bfloat16)  # shared backbone: cast once, idempotent
        started = time.perf_counter()
        result["runners"][runner] = time_variants(policies, runner, observation, repeats, warmup, variants)
        result["runners"][runner]["wall_s"] = round(time.perf_counter() - started, 1)
        if on_update:
            on_update(result)
    if "diffusion" in policies:
        try:
            result["expert_step"] = time_expert_step(policies["diffusion"], observation, repeats)
        except Exception as exc:
            result["expert_step"] = {"error": f"{type(exc).__name__}: {exc}"}
    result["ratios"] = {runner: ratio_ddim10(figures) for runner, figures in result["runners"].items()}
    return result


def ratio_ddim10(figures: dict) -> dict | None:
    """End-to-end DDIM-10 / regression and the expert's share of the backbone."""
    reg, ddim = figures.get("regression", {}), figures.get("ddim-10", {})
    if "total_ms" not in reg or "total_ms" not in ddim:
        return None
    out = {"ddim10_over_regression": ddim["total_ms"]["median"] / reg["total_ms"]["median"]}
    if "backbone_ms" in ddim and ddim["backbone_ms"]["median"] > 0:
        out["ddim10_expert_over_backbone"] = ddim["expert_ms"]["median"] / ddim["backbone_ms"]["median"]
    return out


def format_table(result: dict) -> str:
    stages = ["preprocess_ms", "backbone_ms", "sensor_ms", "expert_ms", "total_ms"]
    lines = [f"{result['spec']} on {result['machine'].get('gpu', result['machine']['processor'])} "
             f"({result['device']}), views {len(result['views'])} at {result['image_size_hw'][1]}x"
             f"{result['image_size_hw'][0]}; median ms (p95)",
             "| runner | variant | " + " | ".join(s.removesuffix("_ms") for s in stages) + " |",
             "|---|---|" + "---|" * len(stages)]
    for runner, figures in result["runners"].items():
        if "skipped" in figures:
            continue
        for variant, stage_figs in figures.items():
            if not isinstance(stage_figs, dict):
                continue
            if "capture_errors" in stage_figs:
                lines.append(f"| {runner} | {variant} | eager stages (capture failed): "
                             f"{', '.join(stage_figs['capture_errors'])} |")
            if "error" in stage_figs:
                lines.append(f"| {runner} | {variant} | error: {stage_figs['error'][:80]} |")
                continue
            cells = [f"{stage_figs[s]['median']:.2f} ({stage_figs[s]['p95']:.2f})" if s in stage_figs else "-"
                     for s in stages]
            lines.append(f"| {runner} | {variant} | " + " | ".join(cells) + " |")
    for runner, ratio in result.get("ratios", {}).items():
        if ratio:
            lines.append(f"{runner}: DDIM-10 / regression end to end = {ratio['ddim10_over_regression']:.3f}" +
                         (f", DDIM-10 expert / backbone = {ratio['ddim10_expert_over_backbone']:.3f}"
                          if "ddim10_expert_over_backbone" in ratio else ""))
    if "expert_step" in result:
        lines.append("expert step (ms): " + json.dumps(result["expert_step"]))
    return "\n".join(lines)
