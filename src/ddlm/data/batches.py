"""Batch sources whose batch depends only on (seed, step): exact resume and DDP sharding come for free.

A `BlockBatches` walks a fixed set of packed blocks in a seeded random order, epoch after epoch; the
batch at step s is always the same, whoever asks and whenever.
"""

from __future__ import annotations

import torch


class BlockBatches:
    """Batches of rows of `blocks` (N, L): epoch e uses permutation seeded by (seed, e)."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int):
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.blocks), generator=g), epoch
        return self._perm

    def batch(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Global batch of `step` (B, L); with world > 1 this rank's rows rank::world."""
        n, b = len(self.blocks), self.batch_size
        idx = []
        for i in range(step * b, (step + 1) * b):
            idx.append(self._permutation(i // n)[i % n])
        rows = torch.stack(idx)[rank::world]
        return self.blocks[rows]


class GeneratedBatches:
    """Batches drawn from a generator function `make(n, seed) -> (n, L) long` (e.g. random Sudoku grids)."""

    def __init__(self, make, batch_size: int, seed: int):
        self.make, self.batch_size, self.seed = make, batch_size, seed

    def batch(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        rows = self.make(self.batch_size, self.seed * 1_000_003 + step)
        return torch.as_tensor(rows, dtype=torch.long)[rank::world]
