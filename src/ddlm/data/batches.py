"""Batch sources whose batch depends only on (seed, step): exact resume and DDP sharding come for free.

A `BlockBatches` walks a fixed set of packed blocks in a seeded random order, epoch after epoch; the
batch at step s is always the same, whoever asks and whenever.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class BlockBatches:
    """Batches of rows of `blocks` (N, L): epoch e uses permutation seeded by (seed, e). With `masks` (N, L)
    bool (records: True = counts in the loss) and/or `labels` (N,) long (a class per row) a batch is a `Batch`
    of tokens, mask and cond, else a bare tensor."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int, masks: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None):
        self.blocks, self.batch_size, self.seed, self.masks, self.labels = blocks, batch_size, seed, masks, labels
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.blocks), generator=g), epoch
        return self._perm

    def batch(self, step: int, rank: int = 0, world: int = 1):
        """Global batch of `step` (B, L) (a Batch when masks were given); with world > 1 this rank's rows
        rank::world."""
        n, b = len(self.blocks), self.batch_size
        idx = []
        for i in range(step * b, (step + 1) * b):
            idx.append(self._permutation(i // n)[i % n])
        rows = torch.stack(idx)[rank::world]
        if self.masks is not None or self.labels is not None:
            return Batch(self.blocks[rows], None if self.masks is None else self.masks[rows],
                         None if self.labels is None else self.labels[rows])
        return self.blocks[rows]


class GeneratedBatches:
    """Batches drawn from a generator function `make(n, seed) -> (n, L) long` (e.g. random Sudoku grids)."""

    def __init__(self, make, batch_size: int, seed: int):
        self.make, self.batch_size, self.seed = make, batch_size, seed

    def batch(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        rows = self.make(self.batch_size, self.seed * 1_000_003 + step)
        return torch.as_tensor(rows, dtype=torch.long)[rank::world]


# ---- the batch contract: what every objective receives ----------------------------------------------------
@dataclass
class Batch:
    """One training/evaluation batch: every objective takes `(model, batch, generator)`.

    tokens (B, L) long: x_0.
    mask   (B, L) bool or None: True = the position counts in the loss; None = every position counts.
           Positions that do not count are context: never noised, never scored.
    cond   (B,) long or None: a class label per row (0..n_classes-1, -1 = the 'null' label), None = unconditional.
    attend (B, L) bool or None: the key-padding mask, True = attention may see the position; None = `mask`
           (a record's <bos> is context the loss skips but attention sees: give attend = tokens != pad).

    An all-True mask is stored as None, so a full batch runs exactly the code path of a bare tensor (the
    same loss to the bit). The loss is normalised per counted position: sum over counted positions / their number.
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    cond: torch.Tensor | None = None
    attend: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.dim() != 2:
            raise ValueError(f"Batch.tokens must be (B, L), got shape {tuple(self.tokens.shape)}")
        for name in ("mask", "attend"):
            m = getattr(self, name)
            if m is None:
                continue
            if m.shape != self.tokens.shape or m.dtype != torch.bool:
                raise ValueError(f"Batch.{name} must be a bool tensor of shape {tuple(self.tokens.shape)}, "
                                 f"got {m.dtype} {tuple(m.shape)}")
            if bool(m.all()):  # nothing excluded: the bare-tensor path
                setattr(self, name, None)
        if self.attend is not None and self.mask is not None and torch.equal(self.attend, self.mask):
            self.attend = None  # the default: attention sees what counts
        if self.cond is not None and tuple(self.cond.shape) != (self.tokens.shape[0],):
            raise ValueError(f"Batch.cond must be (B,) = ({self.tokens.shape[0]},), got {tuple(self.cond.shape)}")

    @property
    def key_mask(self) -> torch.Tensor | None:
        """(B, L) bool the backbone's attention may see, or None (all)."""
        return self.attend if self.attend is not None else self.mask

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def numel(self) -> int:
        """Tokens in the batch, padding included (throughput counts what the network processed)."""
        return self.tokens.numel()

    def n_counted(self) -> int:
        """Positions that count in the loss."""
        return self.tokens.numel() if self.mask is None else int(self.mask.sum())

    def to(self, device) -> "Batch":
        move = (lambda v: None if v is None else v.to(device))
        return Batch(self.tokens.to(device), move(self.mask), move(self.cond), move(self.attend))

    def rows(self, index) -> "Batch":
        """The rows `index` (a slice, an index tensor or a list) of every field."""
        pick = (lambda v: None if v is None else v[index])
        return Batch(self.tokens[index], pick(self.mask), pick(self.cond), pick(self.attend))

    def chunk(self, n: int) -> list["Batch"]:
        """Split the rows into at most n micro-batches, as `torch.Tensor.chunk` splits the tokens (grad accum)."""
        parts = self.tokens.chunk(n)
        out, start = [], 0
        for p in parts:
            out.append(self.rows(slice(start, start + p.shape[0])))
            start += p.shape[0]
        return out


def as_batch(batch) -> Batch:
    """A Batch as it is, or a bare (B, L) token tensor as a Batch in which every position counts."""
    return batch if isinstance(batch, Batch) else Batch(torch.as_tensor(batch))


def model_kwargs(batch: Batch) -> dict:
    """The backbone's optional keyword arguments for this batch: empty for a plain batch, so models and toy
    oracles with the signature `model(x, t)` keep working."""
    kw = {}
    if batch.cond is not None:
        kw["cond"] = batch.cond
    if batch.key_mask is not None:
        kw["mask"] = batch.key_mask
    return kw


def per_token(per_sequence: torch.Tensor, batch: Batch) -> torch.Tensor:
    """A loss in nats per counted position from per-sequence sums (B,) over counted positions: their sum over
    the batch / the number of counted positions. A full batch takes the bare-tensor formula, mean / L (the same
    value up to rounding, and the same bits as before the batch contract)."""
    if batch.mask is None:
        return per_sequence.mean() / batch.tokens.shape[1]
    return per_sequence.sum() / batch.mask.sum().clamp_min(1)


def counted(values: torch.Tensor, batch: Batch) -> torch.Tensor:
    """values (B, L) with the positions that do not count set to 0 (torch.where, so a NaN there stays out)."""
    return values if batch.mask is None else torch.where(batch.mask, values, torch.zeros_like(values))
