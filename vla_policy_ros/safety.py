"""Safety logic of the policy node, free of ROS so it can be tested exhaustively (hypothesis).

- `OutputLimits`: every command satisfies a per-dimension maximum delta, workspace bounds for
  absolute targets and a maximum speed; violations are clipped or the whole command is rejected
  (`mode`), and non-finite values are always rejected.
- `StampGuard`: rejects zero, backwards and future header stamps per input.
- `Watchdog`: tells which inputs are older than their timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LIMIT_MODES = ("clip", "reject")


@dataclass
class LimitResult:
    chunk: np.ndarray | None  # the command's action chunk (H, A) after limits; None when rejected
    positions: np.ndarray | None  # absolute targets (H, 3) after limits, when given
    outcome: str  # "ok" | "clipped" | "rejected"
    reason: str = ""


@dataclass
class OutputLimits:
    max_delta: np.ndarray  # (A,) maximum |action| per dimension (inf = unlimited)
    workspace_min: np.ndarray = field(default_factory=lambda: np.full(3, -np.inf))  # (3,) metres
    workspace_max: np.ndarray = field(default_factory=lambda: np.full(3, np.inf))
    max_speed: float = np.inf  # m/s between consecutive targets (and from the current position)
    max_angular_speed: float = np.inf  # rad/s of the orientation between consecutive targets
    max_chunk_rotation: float = np.inf  # rad from the orientation the chunk starts at
    mode: str = "clip"

    def __post_init__(self) -> None:
        self.max_delta = np.asarray(self.max_delta, float)
        self.workspace_min, self.workspace_max = np.asarray(self.workspace_min, float), np.asarray(self.workspace_max, float)
        if self.mode not in LIMIT_MODES:
            raise ValueError(f"limit_mode: expected one of {list(LIMIT_MODES)}, got {self.mode!r}")
        if np.any(self.max_delta < 0) or np.any(self.workspace_min > self.workspace_max) or not self.max_speed > 0 \
                or not (self.max_angular_speed > 0 and self.max_chunk_rotation > 0):
            raise ValueError("output limits: expected max_delta >= 0, workspace_min <= workspace_max, max_speed > 0, "
                             "max_angular_speed > 0, max_chunk_rotation > 0")

    def apply_chunk(self, chunk: np.ndarray) -> LimitResult:
        """Per-dimension delta limits on an action chunk (H, A)."""
        chunk = np.asarray(chunk, float)
        if not np.isfinite(chunk).all():
            return LimitResult(None, None, "rejected", "non-finite action")
        limit = np.broadcast_to(self.max_delta[: chunk.shape[1]] if self.max_delta.size > 1 else self.max_delta,
                                chunk.shape[1:])
        over = np.abs(chunk) > limit
        if not over.any():
            return LimitResult(chunk, None, "ok")
        if self.mode == "reject":
            return LimitResult(None, None, "rejected", f"{int(over.sum())} action value(s) beyond max_delta")
        return LimitResult(np.clip(chunk, -limit, limit), None, "clipped", "max_delta")

    def apply_targets(self, positions: np.ndarray, current: np.ndarray, dt: float) -> LimitResult:
        """Workspace bounds and maximum speed on absolute targets (H, 3) reached every dt from `current`."""
        positions = np.asarray(positions, float)
        current = np.asarray(current, float)
        if not (np.isfinite(positions).all() and np.isfinite(current).all()):
            return LimitResult(None, None, "rejected", "non-finite target")
        if np.any((current < self.workspace_min) | (current > self.workspace_max)):
            return LimitResult(None, None, "rejected", "the current position is outside the workspace")
        max_step = self.max_speed * dt
        outside = np.any((positions < self.workspace_min) | (positions > self.workspace_max))
        steps = np.linalg.norm(np.diff(np.vstack([current, positions]), axis=0), axis=1)
        too_fast = np.any(steps > max_step * (1 + 1e-9))
        if not (outside or too_fast):
            return LimitResult(None, positions, "ok")
        if self.mode == "reject":
            why = "outside the workspace" if outside else f"faster than max_speed {self.max_speed} m/s"
            return LimitResult(None, None, "rejected", why)
        out, previous = np.empty_like(positions), current
        for i, target in enumerate(positions):
            target = np.clip(target, self.workspace_min, self.workspace_max)
            step = target - previous
            length = np.linalg.norm(step)
            if length > max_step:
                target = previous + step * (max_step / length)
                target = np.clip(target, self.workspace_min, self.workspace_max)  # stays inside: both ends are
            out[i] = previous = target
        return LimitResult(None, out, "clipped", "workspace/max_speed")


class StampGuard:
    """Per-input header stamp checks: not zero, not going backwards, not in the future.

    When the clock itself jumps back (a bag replayed in a loop, a simulator reset, use_sim_time),
    every input's history is forgotten (`resets` counts it): otherwise each input would be refused
    until its stamps caught up with the time before the jump."""

    def __init__(self, future_tolerance_s: float = 1.0) -> None:
        self.future_tolerance_s = future_tolerance_s
        self._last: dict[str, float] = {}
        self._last_now: float | None = None
        self.resets = 0

    def reset(self) -> None:
        self._last.clear()
        self.resets += 1

    def check(self, name: str, stamp: float, now: float) -> str | None:
        """Why the stamp is refused, or None (and then it becomes the input's latest)."""
        if self._last_now is not None and now < self._last_now:
            self.reset()
        self._last_now = now
        if stamp <= 0:
            return "zero stamp"
        if stamp > now + self.future_tolerance_s:
            return f"stamp {stamp - now:.3f} s in the future"
        last = self._last.get(name)
        if last is not None and stamp < last:
            return f"stamp goes backwards by {last - stamp:.3f} s"
        self._last[name] = stamp
        return None


class Watchdog:
    """Remembers when each input last delivered a valid message (node clock, seconds). Each input has its own
    timeout (`timeouts`: a camera at 10 Hz, joint states at 1 kHz), `timeout_s` for the others; timeout_s <= 0
    turns the watchdog off."""

    def __init__(self, inputs: list[str], timeout_s: float, timeouts: dict[str, float] | None = None) -> None:
        self.timeout_s = timeout_s
        self.timeouts = {n: (timeouts or {}).get(n, timeout_s) for n in inputs}
        self._seen = dict.fromkeys(inputs)

    @property
    def inputs(self) -> list[str]:
        return list(self._seen)

    def feed(self, name: str, now: float) -> None:
        self._seen[name] = now

    def stale(self, now: float, only: list[str] | None = None) -> list[str]:
        """Inputs (all, or those in `only`) never seen or older than the timeout."""
        if self.timeout_s <= 0:
            return []
        return [n for n, t in self._seen.items()
                if (only is None or n in only) and (t is None or now - t > self.timeouts[n])]
