"""What a training run reports and the limits it runs under: throughput over a window of recent steps,
an enforced GPU memory cap, and the loggers (metrics.jsonl, TensorBoard, wandb with its run id kept)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

import torch

from vla_models import ConfigError

WANDB_RUN_ID_FILE = "wandb_run_id"


class ThroughputWindow:
    """Samples/s and the share of wall time spent waiting for data over the last `steps` optimiser steps (the
    first steps' warm-up, compilation and cache filling no longer dominate the figure, as a count from step 0
    did); `totals()` gives the counts since the start, from which any other window can be computed."""

    def __init__(self, steps: int = 20) -> None:
        self.start = time.perf_counter()
        self.marks: deque = deque([(self.start, 0, 0.0)], maxlen=steps + 1)
        self.samples, self.data_s = 0, 0.0

    def step(self, samples: int, data_s: float) -> None:
        """One optimiser step done: `samples` trained in it (all ranks), `data_s` seconds waited for its batches."""
        self.samples += samples
        self.data_s += data_s
        self.marks.append((time.perf_counter(), self.samples, self.data_s))

    def rates(self) -> dict:
        (t0, n0, d0), (t1, n1, d1) = self.marks[0], self.marks[-1]
        elapsed = max(t1 - t0, 1e-9)
        return {"train/samples_per_s": (n1 - n0) / elapsed, "train/data_wait_frac": (d1 - d0) / elapsed,
                "train/samples_total": self.samples, "train/data_wait_s_total": self.data_s,
                "train/wall_s_total": t1 - self.start}


def apply_memory_cap(device: torch.device, cap_gb: float | None) -> float | None:
    """Limit this process's CUDA allocations to cap_gb (torch.cuda.set_per_process_memory_fraction): "fits a 24 GB
    card" measured on an 80 GB one. Returns the fraction set (None without a cap); a cap on the CPU is an error."""
    if not cap_gb:
        return None
    if device.type != "cuda":
        raise ConfigError(f"memory_cap_gb: a GPU memory cap needs a CUDA device, got {device}; leave it unset on a CPU")
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = cap_gb * 2**30 / total
    if fraction > 1:
        raise ConfigError(f"memory_cap_gb: {cap_gb} GB is more than this GPU has ({total / 2**30:.1f} GB)")
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def make_loggers(train_cfg, out: Path, project: str) -> list:
    """Callables (metrics, step) for rank 0: TensorBoard and wandb when asked. wandb's run id is kept in
    OUT/wandb_run_id, so `--resume` continues the same wandb run instead of starting a new one."""
    loggers = []
    if train_cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
        loggers.append(lambda m, step: [writer.add_scalar(k, v, step) for k, v in m.items()])
    if train_cfg.wandb:
        try:
            import wandb
        except ImportError:
            raise ConfigError("--wandb: the wandb package is not installed (pip install wandb); "
                              "set WANDB_MODE=offline to log without network") from None
        id_file = out / WANDB_RUN_ID_FILE
        run_id = id_file.read_text().strip() if train_cfg.resume and id_file.exists() else wandb.util.generate_id()
        run = wandb.init(project=project, dir=str(out), config=asdict(train_cfg), id=run_id,
                         resume="must" if train_cfg.resume and id_file.exists() else "allow")
        id_file.write_text(run_id)
        loggers.append(lambda m, step: run.log(m, step=step))
    return loggers
