"""Approximate time synchronisation of several inputs (message_filters is not installable here).

Keeps the last `queue_size` (stamp, value) pairs per input. `latest()` returns the newest set with
one entry per input whose stamps all lie within `slop` seconds of each other, or None: each
message, newest first, is tried as the pivot together with the closest message of every other input.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class ApproximateSynchronizer:
    def __init__(self, names: list[str], slop: float, queue_size: int = 10) -> None:
        if slop < 0:
            raise ValueError(f"slop: expected >= 0 seconds, got {slop}")
        self.names = list(names)
        self.slop = slop
        self._queues: dict[str, deque] = {n: deque(maxlen=queue_size) for n in self.names}
        self._lock = threading.Lock()

    def add(self, name: str, stamp: float, value: Any) -> None:
        with self._lock:
            queue = self._queues[name]
            if queue and stamp < queue[-1][0]:  # out of order: keep the queue sorted
                items = sorted([*queue, (stamp, value)], key=lambda item: item[0])
                queue.clear()
                queue.extend(items[-queue.maxlen:])
            else:
                queue.append((stamp, value))

    def latest(self) -> tuple[float, dict[str, tuple[float, Any]]] | None:
        """(newest stamp in the set, {name: (stamp, value)}) for the newest matching set, or None."""
        with self._lock:
            if not self.names or any(not q for q in self._queues.values()):
                return None
            pivots = sorted((s for q in self._queues.values() for s, _ in q), reverse=True)
            for pivot in pivots:  # newest first: the first set that fits wins
                chosen = {name: min(queue, key=lambda item: abs(item[0] - pivot))
                          for name, queue in self._queues.items()}
                stamps = [s for s, _ in chosen.values()]
                if max(stamps) - min(stamps) <= self.slop:
                    return max(stamps), chosen
            return None
