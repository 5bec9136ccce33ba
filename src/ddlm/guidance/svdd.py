"""Soft value-based decoding (SVDD, Li et al. 2024, arXiv 2408.08252) as a `propose` hook of the core.

At every step, from x_t draw M candidate next states x_s^(1..M) ~ p_theta(x_s | x_t) with the sampler's own
draw, value each by v(x_s) (the reward of its predicted clean sequence, `value.PredictedReward`), and keep

    m* ~ softmax_m( v(x_s^(m)) / alpha )        (alpha = 0: m* = argmax_m v, the paper's default limit)

which, as M grows, samples the tilted transition p(x_s | x_t) exp(v(x_s) / alpha) / Z: with the exact soft
value v(x_s) = alpha log E[exp(r(x_0) / alpha) | x_s], the run then samples p(x) exp(r(x) / alpha) / Z.
No retraining; the cost is M draws and one value call (M rows per sample) per step.
"""

from __future__ import annotations

import torch

from ..sampling.categorical import gumbel_like
from ..sampling.core import default_propose


def candidate_state(tokens: torch.Tensor, where, state) -> torch.Tensor:
    """The next state (B, L) a proposal makes: the proposal itself when it was scattered into x (`where`
    given), else the proposed tokens at the still-noisy positions (a rule that commits a subset later)."""
    if tokens.shape != state.x.shape:
        raise ValueError(f"reward-guided decoding needs proposals of the whole sequence {tuple(state.x.shape)}, got "
                         f"{tuple(tokens.shape)} (an autoregressive rule proposes one position)")
    if where is not None:
        return tokens
    return torch.where(state.noisy, tokens, state.x)


def gumbel(v: torch.Tensor, generator) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like v, drawn (float64) on the generator's device, returned on v's."""
    device = generator.device if generator is not None else v.device
    return gumbel_like(v.to(device, torch.float64), generator).to(v.device)


class SVDDProposer:
    """`propose(logp, where, state, draw)` hook: M candidates per row, one kept by softmax(value / alpha).

    value(x (N, L), s, rows=) -> (N,): the candidates' values (PredictedReward; rows (N,) = the run's row of each
    candidate); generator: the run's generator
    (the choice among candidates draws from it). M = 1 is one draw: exactly the plain sampler, no value call."""

    def __init__(self, value, candidates: int, alpha: float = 0.0, generator=None):
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be a positive int, got {candidates!r}")
        self.value, self.M, self.alpha, self.generator = value, candidates, float(alpha), generator

    def __call__(self, logp, where, state, draw) -> torch.Tensor:
        if self.M == 1:
            return default_propose(logp, where, state, draw)
        cands = torch.stack([default_propose(logp, where, state, draw) for _ in range(self.M)])  # (M, B, L')
        M, B = cands.shape[:2]
        nxt = torch.stack([candidate_state(c, where, state) for c in cands])  # (M, B, L)
        rows = torch.arange(B, device=nxt.device).repeat(M)  # candidate m of row b is row m * B + b
        v = self.value(nxt.reshape(M * B, -1), state.s, rows=rows).reshape(M, B).to(torch.float64)  # (M, B)
        if self.alpha == 0.0:
            pick = v.argmax(0)  # (B,) the first best on ties
        else:
            pick = (v / self.alpha + gumbel(v, self.generator)).argmax(0)  # Gumbel-max: a softmax draw
        pick = pick.to(cands.device)
        return cands[pick, torch.arange(B, device=cands.device)]
