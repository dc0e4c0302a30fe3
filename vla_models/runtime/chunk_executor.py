"""Action chunks -> one action per control tick, on the observation's clock.

A chunk predicted from an observation stamped t0 schedules its action i for the control period
starting at t0 + i * dt. The executor indexes chunks by time, so the delay between observation and
execution is accounted for by construction: when a chunk arrives L seconds after its observation,
its first floor(L / dt) actions are already in the past and are never executed.

Modes:
- `receding`: the newest chunk only, at most `execute_steps` of its actions (0 = all H); if no newer
  chunk has come by then, nothing is returned (the robot holds) and the tick counts as starved.
- `temporal`: temporal ensembling (ACT, Zhao et al. 2023): every stored chunk that covers the tick
  contributes its action, weighted exp(-decay * k) with k = 0 for the oldest chunk.

Chunks must arrive in stamp order; an older chunk than the newest is dropped (and counted).
Pure Python + NumPy (no ROS), so the node and the tests use the same code.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

MODES = ("receding", "temporal")


@dataclass
class ExecutedAction:
    action: np.ndarray  # (A,)
    chunk_stamp: float  # observation stamp of the newest chunk that contributed
    index: int  # the action's index in that chunk
    chunks: int  # how many chunks contributed (1 unless temporal)


class ChunkExecutor:
    def __init__(self, dt: float, mode: str = "receding", execute_steps: int = 0, decay: float = 0.01,
                 max_chunks: int = 32) -> None:
        if dt <= 0:
            raise ValueError(f"dt: expected a positive control period, got {dt}")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        if execute_steps < 0:
            raise ValueError(f"execute_steps: expected >= 0 (0 = the whole chunk), got {execute_steps}")
        self.dt, self.mode, self.execute_steps, self.decay = dt, mode, execute_steps, decay
        self.chunks: deque[tuple[float, np.ndarray]] = deque(maxlen=max_chunks)
        self.counts = {"chunks": 0, "out_of_order": 0, "ticks": 0, "starved": 0, "skipped_past": 0}
        self._last: ExecutedAction | None = None
        self.boundary_jumps: list[float] = []  # |a_t - a_(t-1)| when the source chunk changes
        self.within_steps: list[float] = []  # |a_t - a_(t-1)| within one chunk

    def add_chunk(self, stamp: float, chunk: np.ndarray) -> bool:
        """Store a chunk (H, A) observed at `stamp`; False (dropped) if it is older than the newest one."""
        chunk = np.asarray(chunk, dtype=float)
        if chunk.ndim != 2 or not np.isfinite(chunk).all():
            raise ValueError(f"chunk: expected a finite (H, A) array, got shape {chunk.shape}")
        if self.chunks and stamp <= self.chunks[-1][0]:
            self.counts["out_of_order"] += 1
            return False
        self.chunks.append((stamp, chunk))
        self.counts["chunks"] += 1
        return True

    def reset(self) -> None:
        """Forget every stored chunk (a policy switch, a fault): nothing mixes across the cut."""
        self.chunks.clear()
        self._last = None
        self.counts["resets"] = self.counts.get("resets", 0) + 1

    def _index(self, stamp: float, now: float) -> int:
        # 1e-6 of a period: stamps rounded to nanoseconds must not fall one period short
        return int(math.floor((now - stamp) / self.dt + 1e-6))

    def action_at(self, now: float) -> ExecutedAction | None:
        """The action for the control period starting at `now`, or None (hold) when no chunk covers it."""
        self.counts["ticks"] += 1
        while self.chunks and self._index(self.chunks[0][0], now) >= len(self.chunks[0][1]):
            self.chunks.popleft()  # entirely in the past
        if not self.chunks:
            return self._starve()
        if self.mode == "receding":
            stamp, chunk = self.chunks[-1]
            index = self._index(stamp, now)
            limit = self.execute_steps or len(chunk)
            if index < 0 or index >= limit:
                return self._starve()
            out = ExecutedAction(chunk[index].copy(), stamp, index, 1)
        else:
            rows, weights = [], []
            for k, (stamp, chunk) in enumerate(self.chunks):
                index = self._index(stamp, now)
                if 0 <= index < len(chunk):
                    rows.append(chunk[index])
                    weights.append(math.exp(-self.decay * len(weights)))
            if not rows:
                return self._starve()
            w = np.asarray(weights) / sum(weights)
            stamp, chunk = self.chunks[-1]
            out = ExecutedAction((w[:, None] * np.asarray(rows)).sum(0), stamp, self._index(stamp, now), len(rows))
        if self._last is None or self._last.chunk_stamp != out.chunk_stamp:
            if out.index > 0:  # the chunk's first actions were already due when it arrived
                self.counts["skipped_past"] += out.index
        self._record_step(out)
        return out

    def _starve(self) -> None:
        self.counts["starved"] += 1
        self._last = None
        return None

    def _record_step(self, out: ExecutedAction) -> None:
        if self._last is not None:
            jump = float(np.abs(out.action - self._last.action).max())
            (self.boundary_jumps if out.chunk_stamp != self._last.chunk_stamp else self.within_steps).append(jump)
        self._last = out

    def jitter(self) -> dict:
        """Mean and p95 of the action change per tick at chunk boundaries vs within chunks."""
        def stats(values):
            return {"mean": float(np.mean(values)), "p95": float(np.percentile(values, 95)), "n": len(values)} \
                if values else {"mean": None, "p95": None, "n": 0}
        return {"boundary": stats(self.boundary_jumps), "within": stats(self.within_steps)}
