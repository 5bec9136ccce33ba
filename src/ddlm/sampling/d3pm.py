"""Ancestral sampling of D3PM (Austin et al. 2021) from the prior, in K <= T steps.

Start from x_T ~ prior (all [MASK] for absorbing, uniform otherwise) and walk a grid T = t_K > ... > t_0 = 0.
From t to s < t the x0-parameterised reverse step is (paper eq. 4 with a skip, as in D3PM's strided sampling)

    p(x_s | x_t)  ∝  q(x_t | x_s) * sum_{x_0} q(x_s | x_0) p~(x_0 | x_t)  =  (x_t Q_{s->t}^T) ⊙ (p~ Q_bar_s)

with Q_{s->t} = Q_{s+1} ... Q_t; for K = T this is `process.reverse_log_probs`. The last step (s = 0) draws
x_0 from p~ itself. Rank-one processes (uniform, absorbing) have Q_{s->t} = r I + (1 - r) 1 m^T with
r = abar_t / abar_s; matrix processes (Gaussian, nearest-neighbour) multiply their stored Q's.
The token temperature tempers p~ before it is pushed through the posterior. Fixed positions (prompt,
infilling) are replaced at every step by a draw of q(x_s | x_0 = fixed) (the replacement method), and by the
fixed tokens themselves at the end.

The step is `D3PMRule`, a step rule of the sampling core (`core.py`); `sample_d3pm` runs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..processes.d3pm_schedules import DTYPE
from .core import Hooks, StepRule, expand_fixed, new_state, run
from .denoiser import SampleOutput


def time_grid(T: int, steps: int) -> list[int]:
    """K + 1 distinct integer times from T down to 0, evenly spaced (K = min(steps, T))."""
    K = min(steps, T)
    return sorted({round(k * T / K) for k in range(K + 1)}, reverse=True)


def _push(process, probs: torch.Tensor, s: int) -> torch.Tensor:
    """probs Q_bar_s: (B, L, S) -> (B, L, S)."""
    return process.apply_cumulative(probs, s)


def _columns(process, x_t: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """q(x_t | x_s = j) over j: (B, L) -> (B, L, S)."""
    return process.skip_columns(x_t, s, t)


def reverse_probs(process, logp0: torch.Tensor, x_t: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """p(x_s | x_t) (B, L, S) float64 from log p~(x_0 | x_t) (B, L, V), 1 <= s < t <= T."""
    p0 = F.pad(logp0.exp().to(DTYPE), (0, process.n_states - process.vocab_size))
    w = _columns(process, x_t, s, t) * _push(process, p0, s)
    return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(DTYPE).tiny)


class D3PMRule(StepRule):
    """x_t -> x_s by the x0-parameterised posterior; the grid is integer steps (t, s) of `time_grid`."""

    name = "d3pm"

    def __init__(self, process, temperature: float = 1.0):
        self.process, self.temperature = process, temperature

    def start(self, ctx, n, length, fixed, fixed_mask):
        process = self.process.to(ctx.device)
        prior = process.prior().to(ctx.device)
        x = torch.multinomial(prior.float().expand(n * length, -1), 1, replacement=True,
                              generator=ctx.generator).view(n, length)  # (B, L) ~ prior
        fixed, given = expand_fixed(ctx, n, length, fixed, fixed_mask)
        if fixed is not None:
            x = torch.where(given, process.sample_xt(fixed, process.steps, ctx.generator), x)
        state = new_state(x, ~given, given)
        state.memo["fixed"] = fixed
        return state

    def grid(self, steps):
        g = time_grid(self.process.steps, steps)
        return list(zip(g[:-1], g[1:]))

    def net_time(self, state):
        return state.t / self.process.steps

    def step(self, ctx, state, logp0):
        t, s = state.t, state.s
        if self.temperature != 1.0:
            logp0 = torch.log_softmax(logp0 / self.temperature, -1) if self.temperature > 0 else \
                torch.log(F.one_hot(logp0.argmax(-1), self.process.vocab_size).to(DTYPE))
        if s == 0:
            x = ctx.propose(logp0, None, state, 1.0)
        else:
            x = ctx.propose(torch.log(reverse_probs(self.process, logp0, state.x, s, t)), None, state, 1.0)
        fixed = state.memo["fixed"]
        if fixed is not None:
            x = torch.where(state.fixed, fixed if s == 0 else self.process.sample_xt(fixed, s, ctx.generator), x)
        state.x = x


@torch.no_grad()
def sample_d3pm(backbone, process, n: int, length: int, *, steps: int, temperature: float = 1.0,
                fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None, generator=None,
                progress: bool = False, hooks: Hooks | None = None) -> SampleOutput:
    """n sequences of `length` tokens in min(steps, T) network calls (`process` a D3PMProcess)."""
    return run(D3PMRule(process, temperature), backbone, process, n, length, steps, temperature=temperature,
               fixed=fixed, fixed_mask=fixed_mask, generator=generator, hooks=hooks, progress=progress)
