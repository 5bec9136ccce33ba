"""A length prior for masked models trained with `data.padding=skip`: draw the length first, then the tokens.

A `skip` model never attends to `<pad>` in training: its key-padding mask covers the record and its `<eos>`,
so the model is p(x | n), the record given its length n (tokens, `<eos>` included). It cannot choose n itself
(a window it attends to in full looks like a record of the window's length), so generation with `max_length`
draws n from the training records' lengths first (smoothed over 1..L, the same p(n) that `ddlm eval`
charges a skip model's bound for), writes `<eos>` at position n-1 and `<pad>` after it, hides the `<pad>`
from attention, and decodes positions 0..n-2 (never into a special token). The whole model is then
p(n) p(x | n), whose bound is the one eval reports, and its lengths follow the training lengths by
construction.
"""

from __future__ import annotations

import torch

from ..errors import UserError


def prior_probs(counts: torch.Tensor, block_len: int) -> torch.Tensor:
    """p(n) (block_len + 1,) float64 from length counts (>= block_len + 1,): (c_n + 1/L) / (N + 1) for
    n = 1..L, p(0) = 0 (eval/records.py length_prior, as probabilities). One pseudo-record spread over the L
    lengths keeps every length possible without flattening a small file's histogram (add-one would give 48
    records 80 pseudo-counts)."""
    c = counts.double()[: block_len + 1]
    c = torch.cat([c, c.new_zeros(block_len + 1 - len(c))])  # (L + 1,)
    p = c + 1.0 / block_len
    p[0] = 0.0
    return p / p.sum()


def draw_lengths(probs: torch.Tensor, n: int, window: int, min_length: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """(n,) lengths (tokens, <eos> included) from probs (L + 1,) restricted to min_length[i]..window per row.

    min_length (n,) long: a row whose given tokens reach position j needs n >= j + 2 (its <eos> after them)."""
    k = torch.arange(len(probs))
    allowed = (k[None, :] >= min_length[:, None]) & (k[None, :] <= window)  # (n, L + 1)
    p = probs[None, :].expand(n, -1) * allowed
    short = p.sum(-1) <= 0
    if bool(short.any()):
        raise UserError(f"the given tokens leave no room for <eos> within max_length {window}; "
                        f"raise --max-length or give a shorter prompt")
    return torch.multinomial(p.to(generator.device), 1, generator=generator).squeeze(-1).cpu()


def length_window(lengths: torch.Tensor, window: int, eos_id: int, pad_id: int, fixed=None, fixed_mask=None):
    """Rows (n, window) of drawn lengths: (fixed tokens, fixed mask, key mask), each (n, window).

    Position lengths[i]-1 holds <eos> and every later one <pad> (fixed; never attended: key mask False);
    positions the caller fixed (a prompt, infilled text) keep their tokens."""
    n = len(lengths)
    pos = torch.arange(window)[None, :]  # (1, W)
    end = (lengths - 1)[:, None]  # (n, 1) the <eos> position
    tokens = torch.where(pos == end, eos_id, pad_id).long()  # (n, W)
    mask = pos >= end  # (n, W)
    if fixed is not None:
        given = fixed_mask.bool().expand(n, -1)
        tokens = torch.where(given, fixed.long().expand(n, -1), tokens)
        mask = mask | given
    return tokens, mask, pos <= end


def min_lengths(n: int, fixed_mask) -> torch.Tensor:
    """(n,) the least length each row's given tokens allow: one past its last given position, plus <eos>."""
    if fixed_mask is None:
        return torch.ones(n, dtype=torch.long)
    given = fixed_mask.bool().expand(n, -1)  # (n, W)
    last = torch.where(given.any(-1), given.shape[1] - 1 - given.flip(-1).int().argmax(-1), -1)
    return last + 2


class KeyPadded(torch.nn.Module):
    """`backbone(x, t) -> logits` of p(x | n): never attends to the keys a fixed per-row mask (B, L) marks
    False, and gives the `banned` tokens (<eos>, <pad>, <bos>) no probability, since a record of length n holds
    none of them before its position n-1 (the positions that hold them are fixed, so their logits are unused).

    The row-caching denoiser evaluates subsets of rows and says which with `select_rows(idx)` before the
    call; those rows' masks are then used (and the call passed on to an inner backbone with per-row state)."""

    def __init__(self, backbone, key_mask: torch.Tensor, banned: tuple = ()):
        super().__init__()
        self.backbone, self.key_mask, self.banned, self._rows = backbone, key_mask, list(banned), None

    @property
    def time_conditioned(self) -> bool:
        return getattr(self.backbone, "time_conditioned", False)

    def select_rows(self, idx: torch.Tensor) -> None:
        self._rows = idx
        if hasattr(self.backbone, "select_rows"):
            self.backbone.select_rows(idx)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None, **kw) -> torch.Tensor:
        rows, self._rows = self._rows, None
        mask = self.key_mask.to(x.device)
        if rows is not None:
            mask = mask[rows.to(x.device)]
        if mask.shape != x.shape:
            raise ValueError(f"rows {tuple(x.shape)} but key mask {tuple(mask.shape)}; call select_rows for a subset")
        logits = self.backbone(x, t, mask=mask, **kw)  # (B, L, V)
        if self.banned:
            logits = logits.clone()
            logits[..., self.banned] = float("-inf")
        return logits
