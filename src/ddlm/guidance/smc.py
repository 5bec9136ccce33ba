"""Sequential Monte Carlo steering: K particles per requested sample, reweighted by the change of their
value and resampled when their weights degenerate (a bootstrap particle filter with twisting potentials,
as in the twisted diffusion sampler of Wu et al. 2023, "Practical and Asymptotically Exact Conditional
Sampling in Diffusion Models", and the SMC steering of discrete and language models).

Target: p(x_0) exp(r(x_0) / alpha) / Z. The model proposes x_s ~ p_theta(x_s | x_t) for every particle; its
log-weight grows by

    log w += (v(x_s) - v(x_t)) / alpha            v = the value of a partial sequence (value.PredictedReward)

so that at the end, where v(x_0) = r(x_0), a particle's weight is exp(r(x_0) / alpha) times a telescoping
product of ratios. When the effective sample size (sum w)^2 / sum w^2 of a group falls below K / 2 the group
is resampled (systematic resampling) and its weights reset. The output keeps one particle per group, drawn
with probability proportional to its final weight. With the exact soft value v(x_t) = alpha log
E[exp(r / alpha) | x_t] the weighted particles are asymptotically (K -> inf) exact for the target.
"""

from __future__ import annotations

import torch

from ..sampling.core import default_propose
from .svdd import candidate_state

FLOOR = -1e30  # values below (-inf: impossible) are clamped, so -inf - -inf never makes a NaN weight


def systematic(weights: torch.Tensor, u: torch.Tensor, k: int) -> torch.Tensor:
    """Systematic resampling: weights (G, K) summing to 1 per row, u (G,) in [0, 1) -> (G, k) ancestor
    indices; ancestor j appears floor or ceil of k * w_j times."""
    positions = (u[:, None] + torch.arange(k, dtype=torch.float64)) / k  # (G, k)
    cdf = weights.cumsum(-1)
    cdf[:, -1] = 1.0  # rounding must not leave a position beyond the last particle
    return torch.searchsorted(cdf, positions, right=True).clamp_max(weights.shape[1] - 1)


class SMCProposer:
    """`propose(logp, where, state, draw)` hook over a batch of G * K rows (K consecutive rows per group, every
    row of a group starting from the same state): one draw per particle, reweighting, resampling; then
    `select(tokens (G * K, L)) -> (G, L)`. K = 1 is exactly the plain sampler (no value call, no draw).

    value(x (N, L), s) -> (N,); alpha > 0 the temperature of the target; generator: the run's generator."""

    def __init__(self, value, particles: int, alpha: float, generator=None, ess: float = 0.5):
        if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
            raise ValueError(f"particles must be a positive int, got {particles!r}")
        if not alpha > 0:
            raise ValueError(f"SMC needs alpha > 0 (the target is p exp(r / alpha)), got {alpha!r}")
        self.value, self.K, self.alpha, self.generator, self.ess = value, particles, float(alpha), generator, ess
        self.logw = self.v = None  # (G * K,) float64 on the CPU
        self.resamples = 0  # groups resampled, summed over steps

    def _uniform(self, n: int) -> torch.Tensor:
        device = self.generator.device if self.generator is not None else "cpu"
        return torch.rand(n, generator=self.generator, dtype=torch.float64, device=device).cpu()

    def __call__(self, logp, where, state, draw) -> torch.Tensor:
        tokens = default_propose(logp, where, state, draw)
        if self.K == 1:
            return tokens
        if where is None:  # the rule would commit a subset of the proposal for the ancestor's old row
            raise ValueError("SMC resamples whole next states; it needs a rule that proposes with `where`")
        nxt = candidate_state(tokens, where, state)  # (B, L)
        B = nxt.shape[0]
        if B % self.K:
            raise ValueError(f"{B} rows are not groups of {self.K} particles")
        if self.logw is None:
            self.logw = torch.zeros(B, dtype=torch.float64)
            self.v = torch.zeros(B, dtype=torch.float64)  # x_T is shared within a group: a constant cancels
        v = self.value(nxt, state.s).to(torch.float64).cpu().clamp_min(FLOOR)  # (B,)
        self.logw += (v - self.v) / self.alpha
        self.v = v
        G, K = B // self.K, self.K
        w = torch.softmax(self.logw.view(G, K), -1)  # (G, K)
        low = (1.0 / (w ** 2).sum(-1)) < self.ess * K  # (G,) groups whose ESS fell below K / 2
        if not bool(low.any()):
            return tokens
        anc = torch.arange(B).view(G, K).clone()
        anc[low] = systematic(w[low], self._uniform(int(low.sum())), K) + (torch.arange(G)[low] * K)[:, None]
        idx = anc.reshape(-1)
        self.v = self.v[idx]
        self.logw = self.logw.view(G, K).masked_fill(low[:, None], 0.0).reshape(-1)
        self.resamples += int(low.sum())
        return tokens[idx.to(tokens.device)]

    def select(self, tokens: torch.Tensor) -> torch.Tensor:
        """One particle per group (G, L), drawn in proportion to the final weights (uniform if none were set)."""
        if self.K == 1:
            return tokens
        G = tokens.shape[0] // self.K
        if self.logw is None:
            w = torch.full((G, self.K), 1.0 / self.K, dtype=torch.float64)
        else:
            w = torch.softmax(self.logw.view(G, self.K), -1)
        pick = systematic(w, self._uniform(G), 1)[:, 0] + torch.arange(G) * self.K  # (G,)
        return tokens[pick.to(tokens.device)]
