"""Model smoke demo (what `make demo` runs until the training/evaluation pipeline lands).

Builds the `tiny` preset (Qwen2.5-VL architecture at toy size, random weights, offline tokenizer)
with each expert, predicts chunks from a synthetic observation, checks that a saved checkpoint
reloads to identical outputs, and prints per-stage latency. It trains nothing: the numbers say
how fast the pipeline runs on this machine, not how well a policy acts.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from vla_models import build_policy, load_policy, preset
from vla_models.experts import EXPERTS
from vla_models.testing import fake_observation, fit_fake_statistics



def run_smoke_demo(out: Path, quick: bool = False) -> int:
    repeats = 3 if quick else 20
    rows = []
    for expert in tqdm(EXPERTS, desc="smoke demo"):
        torch.manual_seed(0)
        policy = build_policy(preset("tiny", **{"expert.type": expert}))
        fit_fake_statistics(policy)
        for spec in policy.expert.latency_variants():
            rows.append(_smoke(policy, spec, out / expert, repeats))
    stages = list(rows[0][1])
    print(f"\nchunk shape (B, H, A) = {rows[0][2]}; median ms over {repeats} runs, batch 1, tiny backbone, CPU")
    print(f"{'expert':<18}" + "".join(f"{s[:-3]:>12}" for s in stages))
    for label, med, _ in rows:
        print(f"{label:<18}" + "".join(f"{med[s]:>12.2f}" for s in stages))
    print(f"\ncheckpoints (reloaded to identical outputs): {out}/")
    return 0


def _smoke(policy, spec, out: Path, repeats: int) -> tuple:
    """One sampling: predict, save, reload to the identical chunk, time the stages."""
    options = policy.expert.options_for(sampler=spec.sampler, steps=spec.steps)
    obs = fake_observation(policy.config, 1)
    chunk = policy.predict_action_chunk(obs, seed=0, **options)
    path = policy.save(out)
    reloaded = load_policy(path).predict_action_chunk(obs, seed=0, **options)
    if not torch.equal(chunk, reloaded):
        raise RuntimeError(f"{path}: the reloaded checkpoint predicts a different chunk ({spec.label})")
    timings = []
    for _ in range(repeats):
        policy.predict_action_chunk(obs, seed=0, **options)
        timings.append(policy.last_timings)
    return spec.label, {k: statistics.median(t[k] for t in timings) for k in timings[0]}, tuple(chunk.shape)
