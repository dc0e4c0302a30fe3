"""Executing chunks while the next one is inferred: the closed loop's `--chunk-execution` and `--delay`.

A chunk inferred from the observation at control step k arrives `delay` steps later; the simulator runs
on meanwhile, executing what the robot already has (the previous chunk; a hold before the first one).
A new inference starts every `execute` steps. Strategies:
- `switch`: the newest chunk from its row `delay` on (its first rows are already in the past);
- `ensemble`: temporal ensembling (ACT) of every chunk that covers the step (ChunkExecutor `temporal`);
- `rtc`: real-time chunking (experts/guidance.py): the next chunk is sampled with the rows that execute
  during inference frozen and the rest guided toward the current chunk (or, an expert trained with
  `expert.prefix_max`, given those rows as input), then switched to as `switch` does.
With delay 0, `switch` is the plain receding horizon (execute rows 0..execute-1, infer again).
The executed actions' jumps where the source chunk changes are kept (`boundary_jerk`: the mean |second
difference| of the executed path at chunk boundaries).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vla_models import ConfigError
from vla_models.experts.guidance import Inpaint
from vla_models.runtime.chunk_executor import ChunkExecutor

STRATEGIES = ("switch", "ensemble", "rtc")


class DelayedChunks:
    def __init__(self, strategy: str, delay: int, execute: int, horizon: int, rtc_capable: bool = True) -> None:
        """rtc_capable: the expert samples iteratively (guided) or was trained with given rows (expert.prefix_max)."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"chunk_execution: expected one of {list(STRATEGIES)}, got {strategy!r}")
        if strategy == "rtc" and not rtc_capable:
            raise ConfigError("chunk_execution rtc: real-time chunking guides an iterative sampler (flow, diffusion "
                              "ddim), or needs an expert trained with expert.prefix_max; this one predicts a chunk in "
                              "one pass; use switch or ensemble")
        if not isinstance(delay, int) or delay < 0:
            raise ConfigError(f"delay: expected control steps >= 0, got {delay!r}")
        if execute < 1 or execute + delay > horizon:
            raise ConfigError(f"execute + delay: expected 1..{horizon} (the horizon): the chunk must last until the "
                              f"next one arrives, got execute {execute} + delay {delay}")
        self.strategy, self.delay, self.execute = strategy, delay, execute
        # time in control steps: a chunk's stamp is the step of its observation
        self.executor = ChunkExecutor(1.0, "temporal" if strategy == "ensemble" else "receding")
        self.pending: deque[tuple[int, int, np.ndarray]] = deque()  # (arrives at step, observed at step, chunk)
        self.next_inference = 0

    def due(self, step: int) -> bool:
        """Does an inference start at this step (from its observation)?"""
        return step >= self.next_inference

    def inpaint(self, step: int) -> Inpaint | None:
        """rtc: the current chunk's rows from `step` on, the first `delay` of which execute during this inference."""
        if self.strategy != "rtc" or not self.executor.chunks or not self.delay:
            return None
        stamp, chunk = self.executor.chunks[-1]
        rows = chunk[step - int(stamp):]
        return Inpaint(rows[None].astype(np.float32), min(self.delay, len(rows))) if len(rows) else None

    def submit(self, step: int, chunk: np.ndarray) -> None:
        self.pending.append((step + self.delay, step, np.asarray(chunk)))
        self.next_inference = step + self.execute

    def action(self, step: int) -> np.ndarray | None:
        """The action executed at `step`, or None (hold: no chunk covers it yet)."""
        while self.pending and self.pending[0][0] <= step:
            _, observed, chunk = self.pending.popleft()
            self.executor.add_chunk(float(observed), chunk)
        executed = self.executor.action_at(float(step))
        return None if executed is None else executed.action

    def boundary_jumps(self) -> list[float]:
        return list(self.executor.boundary_jumps)
