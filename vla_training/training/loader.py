"""The training DataLoader: built once, persistent workers that each epoch are handed that epoch's
micro-batches (the order stays the trainer's: DistributedSampler-style and resumable mid-epoch)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


def worker_init(_worker_id: int) -> None:
    """One OpenCV thread per loader worker (N workers x all cores of threads oversubscribe the CPU)."""
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)


class _EpochBatches:
    """The loader's batch sampler: iterated in the training process at the start of every pass, so the
    persistent workers read whatever micro-batches the epoch set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EpochLoader:
    def __init__(self, dataset, collate, workers: int, seed: int, pin_memory: bool) -> None:
        self.order = _EpochBatches()
        # its own generator: the loader draws a base seed, which must not move the training noise's RNG
        self.loader = DataLoader(dataset, batch_sampler=self.order, num_workers=workers, collate_fn=collate,
                                 generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory,
                                 persistent_workers=workers > 0, worker_init_fn=worker_init if workers else None)

    def epoch(self, batches) -> object:
        """An iterator over `batches` (lists of sample indices), in order."""
        self.order.batches = [[int(i) for i in b] for b in batches]
        return iter(self.loader)

    def close(self) -> None:
        """Stop the workers (they would otherwise live until the loader is collected)."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None
