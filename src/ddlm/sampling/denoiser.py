"""What every sampler shares: the output record, the argument checks and the (row-caching) denoiser.

Caching: when the denoiser is time-free (no time conditioning) its output depends on x_t alone, so a row
whose tokens did not change since its last evaluation reuses its last output and the network runs on the
changed rows only. NFE counts network calls; `row_evals` counts rows evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # (B, L) long
    nfe: int  # network calls
    row_evals: int  # rows of the batch evaluated, summed over calls
    seconds: float
    texts: list | None = None
    seed: int | None = None  # the generator's seed (SequenceModel.generate records it)
    lengths: torch.Tensor | None = None  # (B,) long tokens before each row's <eos> (generate(max_length=...))
    span_lengths: torch.Tensor | None = None  # (B,) long the length each row's [MASK] took (generate(infill=...))


class Denoiser:
    """Wraps a backbone and a process into x_t -> log p_theta(x_0 | x_t) (B, L, V) with optional row caching.

    The log-probabilities come from `process.log_probs(logits)`, the one name every process gives them
    (processes/protocol.py)."""

    def __init__(self, backbone, process, cached: bool = False):
        if cached and getattr(backbone, "time_conditioned", False):
            raise UserError("the cached sampler needs a time-free denoiser (model.time_conditioning=false); "
                            "use --sampler ancestral for this model")
        self.backbone, self.process, self.cached = backbone, process, cached
        self.nfe = self.row_evals = 0
        self._x = self._logp = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_0 | x_t) (B, L, V). With caching, only rows that changed since their last evaluation and
        are still `active` (B,) (have masked positions) are evaluated; the others keep their last output."""
        rows = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if self.cached:
            if self._x is not None:
                rows = (x != self._x).any(-1)  # (B,) rows that changed since their last evaluation
            if active is not None:
                rows &= active  # a finished row's output is never read again
            if not rows.any():
                return self._logp
        idx = rows.nonzero()[:, 0]
        if hasattr(self.backbone, "select_rows"):  # a backbone with per-row state (blockwise prefix KV cache)
            self.backbone.select_rows(idx)
        logp = self.process.log_probs(self.backbone(x[idx], t[idx]))  # (b, L, V)
        self.nfe += 1
        self.row_evals += len(idx)
        if len(idx) == x.shape[0]:
            self._logp = logp
        else:
            if self._logp is None:
                self._logp = logp.new_zeros((x.shape[0],) + logp.shape[1:])
            else:
                self._logp = self._logp.clone()
            self._logp[idx] = logp
        if self.cached:  # only the cache compares with the last input
            self._x = x.clone()
        return self._logp


def check_sampling_args(n: int, length: int, steps: int, temperature: float):
    if n <= 0:
        raise UserError(f"the number of samples must be positive, got {n}")
    if length <= 0:
        raise UserError(f"the length must be positive, got {length}")
    if steps <= 0:
        raise UserError(f"the number of steps must be positive, got {steps}")
    if not (0.0 <= temperature <= 100.0) or math.isnan(temperature):
        raise UserError(f"temperature must be in [0, 100], got {temperature}")
