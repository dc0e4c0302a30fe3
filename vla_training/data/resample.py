"""Actions at a chosen control rate, and deltas that never span a gap (both importers use these).

A recording's action labels are pose differences between sample times. Anchored on the camera's
frames (30 fps) an 8-step chunk covers 0.27 s; `--rate HZ` puts the samples on a uniform grid at the
robot's control rate instead (the pose interpolated linearly between its two recorded neighbours,
angles unwrapped first), so the checkpoint's dt is 1/HZ. A delta is only made where the pose was
recorded around both of its ends: where the pose stream has a gap (longer than GAP_FACTOR x its
median period), or, at the frames' rate, where the camera dropped frames, the delta would span
several periods, so that sample is dropped (and counted) instead of labelled as one step.
"""

from __future__ import annotations

import numpy as np

from .episodes import DatasetError

GAP_FACTOR = 2.5  # a spacing this many median periods long is a gap, not jitter


def control_grid(start: float, end: float, rate_hz: float, where: str) -> np.ndarray:
    """start, start + 1/rate, ... <= end (seconds)."""
    if not rate_hz or rate_hz <= 0 or not np.isfinite(rate_hz):
        raise DatasetError(f"{where}: --rate: expected a control rate in Hz > 0, got {rate_hz!r}")
    return start + np.arange(int(np.floor((end - start) * rate_hz + 1e-6)) + 1) / rate_hz


def max_gap(t: np.ndarray) -> float:
    """The longest spacing of stamps `t` (sorted) that is still the stream's normal rhythm."""
    return GAP_FACTOR * float(np.median(np.diff(t))) if len(t) > 1 else 0.0


def interpolate(t: np.ndarray, values: np.ndarray, grid: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Values (N, D) stamped t (N,) sorted -> (values at grid (G, D), valid (G,)): linear between the two samples
    around each grid time; valid where both exist and lie at most `gap` apart (or a sample is at the time)."""
    t, values, grid = np.asarray(t, float), np.asarray(values, float), np.asarray(grid, float)
    right = np.clip(np.searchsorted(t, grid, side="left"), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    exact = np.isclose(t[right], grid, rtol=0, atol=1e-9)
    left = np.where(exact, right, left)
    inside = (grid >= t[0] - 1e-9) & (grid <= t[-1] + 1e-9)
    span = t[right] - t[left]
    valid = inside & (exact | (span <= gap + 1e-12))
    w = np.where(span > 0, (grid - t[left]) / np.where(span > 0, span, 1.0), 0.0)[:, None]
    return values[left] * (1 - w) + values[right] * w, valid


def one_period(t: np.ndarray, period: float) -> np.ndarray:
    """For consecutive sample times (N,): (N-1,) True where the two are one `period` apart (not across a gap)."""
    return np.rint(np.diff(t) / period) == 1 if len(t) > 1 else np.zeros(0, bool)


def unwrap_degrees(angles: np.ndarray) -> np.ndarray:
    return np.degrees(np.unwrap(np.radians(angles), axis=0))


def wrap_degrees(delta: np.ndarray) -> np.ndarray:
    """Angle differences into (-180, 180]: a crossing of +-180 is a small turn, not a 360-degree one."""
    return 180.0 - np.mod(180.0 - delta, 360.0)
