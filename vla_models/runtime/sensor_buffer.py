"""Ring buffer of a high-rate sensor stream: samples (C,) with stamps; windows cut on demand."""

from __future__ import annotations

import threading

import numpy as np


class SensorRingBuffer:
    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity, self.channels = capacity, channels
        self._data = np.zeros((capacity, channels), np.float32)
        self._stamps = np.full(capacity, -np.inf)
        self._count = 0  # samples ever written
        self._lock = threading.Lock()

    def extend(self, stamps: np.ndarray, samples: np.ndarray) -> None:
        """Append N samples (N, C) with their stamps (N,) seconds."""
        samples = np.asarray(samples, np.float32).reshape(-1, self.channels)
        stamps = np.asarray(stamps, np.float64).reshape(-1)
        if len(stamps) != len(samples):
            raise ValueError(f"got {len(samples)} samples but {len(stamps)} stamps")
        with self._lock:
            for stamp, row in zip(stamps[-self.capacity:], samples[-self.capacity:]):
                i = self._count % self.capacity
                self._data[i], self._stamps[i] = row, stamp
                self._count += 1

    def window(self, length: int, until: float | None = None) -> np.ndarray:
        """The most recent `length` samples stamped <= `until` (oldest first), (T, C) with T <= length."""
        with self._lock:
            n = min(self._count, self.capacity)
            order = (np.arange(self._count - n, self._count) % self.capacity)  # oldest -> newest
            stamps, data = self._stamps[order], self._data[order]
        if until is not None:
            keep = stamps <= until
            stamps, data = stamps[keep], data[keep]
        return data[-length:].copy()

    def newest_stamp(self) -> float | None:
        with self._lock:
            return None if self._count == 0 else float(self._stamps[(self._count - 1) % self.capacity])
