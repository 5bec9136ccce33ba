"""Toy distributions with exact answers, for testing processes, objectives and samplers.

`ToyDistribution` is an explicit table p(x) over all V^L sequences (V, L small). Its `oracle()` is the exact
denoiser of masked diffusion: p(x_0^l | x_t) = sum over x consistent with the unmasked tokens of x_t,
which is time-free, so every sampler and bound can be checked against -log p(x) and p itself.
"""

from __future__ import annotations

import itertools

import torch


class ToyDistribution:
    def __init__(self, vocab_size: int, length: int, seed: int = 0, concentration: float = 0.5):
        self.V, self.L = vocab_size, length
        g = torch.Generator().manual_seed(seed)
        self.support = torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))  # (V^L, L)
        # heavy-tailed random weights, deterministic in the seed: a skewed, non-factorised distribution
        p = (-torch.log(torch.rand(len(self.support), generator=g, dtype=torch.float64))) ** (1 / concentration)
        self.p = p / p.sum()  # (V^L,)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Row index in `support` of sequences x (..., L)."""
        powers = self.V ** torch.arange(self.L - 1, -1, -1)
        return (x * powers).sum(-1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.p[self.index(x)])

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self.support[torch.multinomial(self.p, n, replacement=True, generator=generator)]

    def chi_square(self, samples: torch.Tensor) -> tuple[float, float]:
        """Pearson's statistic of samples (N, L) against p over the cells expected at least 5 times, and the
        upper 0.1% point of its chi-square distribution (Wilson-Hilferty approximation): (stat, critical)."""
        counts = torch.bincount(self.index(samples), minlength=len(self.p)).double()
        expected = self.p * len(samples)
        keep = expected >= 5
        stat = (((counts - expected) ** 2) / expected)[keep].sum().item()
        dof = int(keep.sum()) - 1
        crit = dof * (1 - 2 / (9 * dof) + 3.09 * (2 / (9 * dof)) ** 0.5) ** 3
        return stat, crit

    def posterior_marginals(self, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
        """p(x_0^l = v | x_t) for x_t (B, L) with MASK = mask_id: (B, L, V) float64."""
        known = xt != mask_id  # (B, L)
        agree = (self.support[None] == xt[:, None]) | ~known[:, None]  # (B, N, L)
        w = self.p[None] * agree.all(-1)  # (B, N)
        w = w / w.sum(-1, keepdim=True)
        onehot = torch.nn.functional.one_hot(self.support, self.V).double()  # (N, L, V)
        return torch.einsum("bn,nlv->blv", w, onehot)

    def oracle(self, mask_id: int | None = None) -> "OracleDenoiser":
        return OracleDenoiser(self, self.V if mask_id is None else mask_id)


class OracleDenoiser(torch.nn.Module):
    """Exact, time-free masked-diffusion denoiser for a ToyDistribution: logits (B, L, V + 1) whose softmax
    over the first V entries is the exact posterior marginal."""

    time_conditioned = False

    def __init__(self, toy: ToyDistribution, mask_id: int):
        super().__init__()
        self.toy, self.mask_id = toy, mask_id
        self._anchor = torch.nn.Parameter(torch.zeros(()))  # gives the samplers a device

    def forward(self, xt, t=None, **_):
        probs = self.toy.posterior_marginals(xt, self.mask_id)
        logits = torch.log(probs.clamp_min(1e-300))
        pad = torch.full(probs.shape[:-1] + (1,), -1e30, dtype=logits.dtype)
        return torch.cat([logits, pad], dim=-1)
