"""A time-based history of a robot-state stream, looked up at any stamp by linear interpolation.

Joint states arrive at 100 Hz-1 kHz while camera frames are 30-100 ms old when they arrive, so a
count-based queue (10 messages = 10-20 ms at 1 kHz) may never hold the state at a frame's stamp.
This keeps `horizon_s` seconds and interpolates between the two samples around the asked stamp;
outside the held span it answers None (never extrapolates), within `tolerance_s` of either end it
gives that end.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np


class StateHistory:
    def __init__(self, horizon_s: float = 2.0, tolerance_s: float = 0.0) -> None:
        if horizon_s <= 0:
            raise ValueError(f"horizon_s: expected > 0 seconds, got {horizon_s}")
        self.horizon_s, self.tolerance_s = horizon_s, tolerance_s
        self._stamps: list[float] = []
        self._values: list[np.ndarray] = []
        self._lock = threading.Lock()

    def add(self, stamp: float, value: np.ndarray) -> None:
        """Store a state (D,) stamped `stamp` s; out-of-order samples are inserted in place."""
        value = np.asarray(value, np.float64)
        with self._lock:
            if self._values and value.shape != self._values[-1].shape:  # a new layout: start over
                self._stamps, self._values = [], []
            i = bisect.bisect_right(self._stamps, stamp)
            self._stamps.insert(i, stamp)
            self._values.insert(i, value)
            cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.horizon_s)
            if cut:
                del self._stamps[:cut], self._values[:cut]

    def clear(self) -> None:
        with self._lock:
            self._stamps, self._values = [], []

    def newest(self) -> tuple[float, np.ndarray] | None:
        with self._lock:
            return (self._stamps[-1], self._values[-1].copy()) if self._stamps else None

    def at(self, stamp: float) -> np.ndarray | None:
        """The state (D,) at `stamp`, interpolated; None outside the held span (+- tolerance_s)."""
        with self._lock:
            if not self._stamps:
                return None
            first, last = self._stamps[0], self._stamps[-1]
            if stamp < first - self.tolerance_s or stamp > last + self.tolerance_s:
                return None
            if stamp <= first:
                return self._values[0].copy()
            if stamp >= last:
                return self._values[-1].copy()
            i = bisect.bisect_right(self._stamps, stamp)  # stamps[i-1] <= stamp < stamps[i]
            t0, t1 = self._stamps[i - 1], self._stamps[i]
            w = 0.0 if t1 == t0 else (stamp - t0) / (t1 - t0)
            return (1 - w) * self._values[i - 1] + w * self._values[i]
