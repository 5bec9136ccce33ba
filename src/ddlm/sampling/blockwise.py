"""Semi-autoregressive generation to any length: a window of the model's context slides over the sequence.

The first window is sampled as usual; each next window keeps its first (context - stride) tokens fixed
(already generated) and samples `stride` new ones, so a model trained on blocks of `context` tokens writes
sequences of any length (Sahoo et al. 2024, section 4.2; Arriola et al. 2025 for block diffusion).

With a prefix KV cache (`PrefixKVBackbone`) a window's finished prefix goes through the network once per
window instead of once per denoising step: the block-wise approximate cache of Fast-dLLM (Wu et al. 2025).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from .loop import SampleOutput


def sample_blockwise(sample_window, n: int, length: int, context: int, stride: int,
                     fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None,
                     stop=None) -> SampleOutput:
    """sample_window(n, length, fixed, fixed_mask, prefix) -> SampleOutput samples one window of `context`
    tokens whose first `prefix` tokens are finished (0 in the first window).

    fixed / fixed_mask (1 or n, length): user-given positions anywhere in the full sequence.
    stop: tokens (n, l) generated so far -> (n,) bool rows that are finished (e.g. produced <eos>,
    `stops.block_ended`); later windows sample only the other rows, and the run ends when all are finished
    (a finished row's positions after its last window keep the placeholder 0).
    """
    if not 0 < stride <= context:
        raise UserError(f"block stride must be in 1..{context}, got {stride}")
    x = torch.zeros((n, length), dtype=torch.long)  # placeholders: only positions in `given` are read
    given = torch.zeros((n, length), dtype=torch.bool)
    if fixed is not None:
        given = fixed_mask.expand(n, length).clone()
        x = torch.where(given, fixed.expand(n, length), x)
    nfe = row_evals = 0
    seconds = 0.0
    end = min(context, length)
    start = prefix = 0
    finished = torch.zeros(n, dtype=torch.bool)  # (n,) rows the stop predicate ended
    while True:
        window = slice(start, end)
        if stop is None:
            out = sample_window(n, end - start, x[:, window], given[:, window], prefix)
            x[:, window] = out.tokens.cpu()
        else:  # only the rows still going: a finished row's later windows would be cut off anyway
            rows = (~finished).nonzero()[:, 0]
            out = sample_window(len(rows), end - start, x[rows, window], given[rows, window], prefix)
            x[rows, window] = out.tokens.cpu()
            finished = finished | stop(x[:, :end])
        given[:, window] = True
        nfe, row_evals, seconds = nfe + out.nfe, row_evals + out.row_evals, seconds + out.seconds
        if end >= length or bool(finished.all()):
            break
        done = end
        end = min(end + stride, length)
        start = end - context
        prefix = done - start
    return SampleOutput(x, nfe, row_evals, seconds)


def check_kv_refresh(refresh) -> int:
    if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 0:
        raise UserError(f"kv_refresh must be a whole number >= 0 (0 = refresh the prefix cache only at a window's "
                        f"first step, N = every N network calls), got {refresh!r}")
    return refresh


class PrefixKVBackbone(nn.Module):
    """`backbone(x, t) -> logits` for one window (n rows) whose first `prefix` positions are finished.

    A full forward over the whole window [prefix, block] returns all logits and keeps, in every layer, the
    keys/values (B, H, prefix, Dh) of the prefix positions (rotary already applied); the next calls run only
    the block's tokens through the network (positions offset by `prefix`), attending to the kept prefix
    keys/values and the block's own. The prefix rows of the returned logits are those of the last full
    forward (the samplers read only masked positions, and the prefix has none).

    It is an approximation (Fast-dLLM's block-wise approximate cache, Wu et al. 2025): the network is
    bidirectional, so the prefix's keys/values depend on the block, which changes as it is denoised; the
    cache keeps those of the last full forward (and, for a time-conditioned model, of its t). A call on the
    same block tokens and t as the last full forward reproduces its logits. A full forward happens at the
    first call, every `refresh` calls if refresh > 0, and for rows not captured yet.

    Row subsets: a caller that evaluates only some rows (the cached Denoiser) says which with
    `select_rows(idx)` before the call; the next call's x then holds those rows, in that order.
    """

    def __init__(self, backbone, prefix: int, n: int, refresh: int = 0):
        super().__init__()
        if prefix <= 0:
            raise ValueError(f"a prefix KV cache needs a prefix, got {prefix}")
        self.backbone, self.prefix, self.n, self.refresh = backbone, prefix, n, check_kv_refresh(refresh)
        self.calls = self.full_calls = 0
        self._rows = None
        self._k = self._v = self._logits = self._captured = None  # per layer (n, H, P, Dh); (n, P, V); (n,)

    @property
    def time_conditioned(self) -> bool:
        return getattr(self.backbone, "time_conditioned", False)

    def select_rows(self, idx: torch.Tensor) -> None:
        """The next call's x holds rows `idx` (b,) of the window's n rows."""
        self._rows = idx

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, W) window tokens of the selected rows (all n when none were selected) -> logits (b, W, V)."""
        rows, self._rows = self._rows, None
        if rows is None:
            if x.shape[0] != self.n:
                raise ValueError(f"{x.shape[0]} rows given without select_rows, but the window has {self.n}")
            rows = torch.arange(self.n, device=x.device)
        P = self.prefix
        due = self.refresh > 0 and self.calls % self.refresh == 0
        self.calls += 1
        if self._captured is None or due or not self._captured[rows].all():
            return self._full(x, t, rows)
        every = len(rows) == self.n  # all rows, in order: no gather
        caches = [{"k": k if every else k[rows], "v": v if every else v[rows], "frozen": True}
                  for k, v in zip(self._k, self._v)]
        block = self.backbone(x[:, P:], t, kv_caches=caches)  # (b, W - P, V)
        return torch.cat([self._logits if every else self._logits[rows], block], dim=1)

    def _full(self, x, t, rows):
        P = self.prefix
        caches = [{} for _ in self.backbone.blocks]  # each block stores its keys/values of the whole window
        logits = self.backbone(x, t, kv_caches=caches)  # (b, W, V)
        if self._captured is None:
            self._k = [c["k"].new_zeros((self.n,) + c["k"].shape[1:2] + (P,) + c["k"].shape[3:]) for c in caches]
            self._v = [torch.zeros_like(k) for k in self._k]
            self._logits = logits.new_zeros((self.n, P) + logits.shape[2:])
            self._captured = torch.zeros(self.n, dtype=torch.bool, device=x.device)
        for i, c in enumerate(caches):
            self._k[i][rows] = c["k"][:, :, :P]
            self._v[i][rows] = c["v"][:, :, :P]
        self._logits[rows] = logits[:, :P]
        self._captured[rows] = True
        self.full_calls += 1
        return logits
