"""Where the backbone's GPU time goes: kernel count and the top kernels, HF forward vs static forward.

    python bench/profile_backbone.py --spec 3b --device cuda --out runs/bench/profile_3b.json

A launch-bound forward shows thousands of kernels of a few microseconds each; an arithmetic-bound one
shows a few large matrix products. Used to choose the GPU optimisations of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from vla_models import preset
from vla_models.backbones.qwen_vl import QwenVLBackbone
from vla_models.testing import fake_observation


def kernel_profile(fn, device: torch.device, top: int = 12) -> dict:
    for _ in range(2):
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if (e.device_type.name == "CUDA" if device.type == "cuda" else True)]
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total_us = sum(getattr(e, attr) for e in events)
    return {"kernels": int(sum(e.count for e in events)), "total_ms": total_us / 1e3,
            "top": [{"name": e.key[:90], "count": e.count, "ms": getattr(e, attr) / 1e3} for e in events[:top]]}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--image-size", default="640x360")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    w, h = (int(v) for v in args.image_size.split("x"))
    config = preset(args.spec)
    with torch.device(device):
        backbone = QwenVLBackbone(config.backbone).eval()
    if device.type == "cuda":
        backbone.model.to(torch.bfloat16)
    obs = fake_observation(config, 1, image_size=(h, w))
    inputs = backbone.preprocess(obs["images"], obs["instruction"], config.views)
    layout = backbone.static_layout(inputs)
    pixels = backbone.pixels(obs["images"], config.views, device)
    result = {"spec": args.spec, "device": str(device), "tokens": int(inputs["input_ids"].shape[1]),
              "patches": int(inputs["pixel_values"].shape[0]),
              "hf_forward": kernel_profile(lambda: backbone(inputs), device),
              "static_forward": kernel_profile(lambda: backbone.forward_static(pixels, layout), device)}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
