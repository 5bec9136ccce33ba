"""Conditional toy oracles and exact steering targets, for the guidance tests and benchmarks/steering.py.

`ConditionalOracle`: two classes with different known distributions p_c over V^L sequences (ToyDistribution
tables); label -1 (or none) is their mixture p = sum_c pi_c p_c, so the exact unconditional denoiser is the
mixture's. `soft_value` is the exact value alpha log E[exp(r(x_0) / alpha) | x_t] of a reward on a toy.
"""

from __future__ import annotations

import torch

from ..processes.masking import MaskingProcess
from ..processes.schedules import LogLinear
from ..toys import ToyDistribution


def mixture(toys, weights) -> ToyDistribution:
    mix = ToyDistribution(toys[0].V, toys[0].L, seed=0)
    mix.p = sum(w * t.p for w, t in zip(weights, toys))
    return mix


def table(p: torch.Tensor, V: int, L: int) -> ToyDistribution:
    """A ToyDistribution whose table is p (V^L,) (for its chi_square and index)."""
    toy = ToyDistribution(V, L, seed=0)
    toy.p = p / p.sum()
    return toy


class ConditionalOracle(torch.nn.Module):
    """Exact denoiser of p_c for rows labelled c, of the mixture for label -1 / no label; logits (B, L, V + 1)."""

    time_conditioned = False

    def __init__(self, toys, weights=(0.5, 0.5)):
        super().__init__()
        self.toys, self.mix = toys, mixture(toys, weights)
        self.V, self.L = toys[0].V, toys[0].L
        self._anchor = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x, t=None, cond=None, **_):
        self.calls += 1
        cond = torch.full((x.shape[0],), -1) if cond is None else cond
        probs = torch.empty(x.shape + (self.V,), dtype=torch.float64)
        for c, toy in [(-1, self.mix)] + list(enumerate(self.toys)):
            rows = cond == c
            if rows.any():
                probs[rows] = toy.posterior_marginals(x[rows], self.V)
        logits = torch.log(probs.clamp_min(1e-300))
        return torch.cat([logits, torch.full(probs.shape[:-1] + (1,), -1e30, dtype=logits.dtype)], -1)


def build(V=3, L=3, seeds=(1, 2)):
    toys = [ToyDistribution(V, L, seed=s) for s in seeds]
    return ConditionalOracle(toys), MaskingProcess(V, LogLinear())


def soft_value(toy: ToyDistribution, reward: torch.Tensor, alpha: float, mask_id: int):
    """value(x (N, L), s) -> (N,): alpha log sum_{x_0 consistent with x} p(x_0 | x) exp(r(x_0) / alpha), exactly;
    reward (V^L,) over toy.support."""
    def value(x, s=None, rows=None):
        known = x != mask_id  # (N, L)
        agree = ((toy.support[None] == x[:, None]) | ~known[:, None]).all(-1)  # (N, S)
        w = toy.p[None] * agree
        w = w / w.sum(-1, keepdim=True)
        return alpha * torch.log((w * torch.exp(reward / alpha)[None]).sum(-1))
    return value


def tilted(toy: ToyDistribution, reward: torch.Tensor, alpha: float) -> torch.Tensor:
    q = toy.p * torch.exp(reward / alpha)
    return q / q.sum()


def frequencies(toy: ToyDistribution, samples: torch.Tensor) -> torch.Tensor:
    return torch.bincount(toy.index(samples), minlength=len(toy.p)).double() / len(samples)
