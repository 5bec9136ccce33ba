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
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..processes.d3pm_schedules import DTYPE
from .categorical import sample_categorical
from .loop import SampleOutput, check_sampling_args


def time_grid(T: int, steps: int) -> list[int]:
    """K + 1 distinct integer times from T down to 0, evenly spaced (K = min(steps, T))."""
    K = min(steps, T)
    return sorted({round(k * T / K) for k in range(K + 1)}, reverse=True)


def _push(process, probs: torch.Tensor, s: int) -> torch.Tensor:
    """probs Q_bar_s: (B, L, S) -> (B, L, S)."""
    if hasattr(process, "Qbar"):
        return probs @ process.Qbar[s]
    a = process.abar[s]
    return a * probs + (1 - a) * probs.sum(-1, keepdim=True) * process.m


def _columns(process, x_t: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """q(x_t | x_s = j) over j: (B, L) -> (B, L, S)."""
    if hasattr(process, "Q"):
        Q = process.Q[s + 1]
        for i in range(s + 2, t + 1):
            Q = Q @ process.Q[i]  # (S, S) Q_{s->t}
        return Q.T[x_t]
    a_s = process.abar[s]
    r = process.abar[t] / a_s if a_s > 0 else torch.zeros((), dtype=DTYPE)
    return r * F.one_hot(x_t, process.n_states).to(DTYPE) + (1 - r) * process.m[x_t][..., None]


def reverse_probs(process, logp0: torch.Tensor, x_t: torch.Tensor, s: int, t: int) -> torch.Tensor:
    """p(x_s | x_t) (B, L, S) float64 from log p~(x_0 | x_t) (B, L, V), 1 <= s < t <= T."""
    p0 = F.pad(logp0.exp().to(DTYPE), (0, process.n_states - process.vocab_size))
    w = _columns(process, x_t, s, t) * _push(process, p0, s)
    return w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(DTYPE).tiny)


@torch.no_grad()
def sample_d3pm(backbone, process, n: int, length: int, *, steps: int, temperature: float = 1.0,
                fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None, generator=None,
                progress: bool = False) -> SampleOutput:
    """n sequences of `length` tokens in min(steps, T) network calls (`process` a D3PMProcess)."""
    check_sampling_args(n, length, steps, temperature)
    device = next(backbone.parameters()).device
    process.to(device)
    T = process.steps
    prior = process.prior().to(device)
    x = torch.multinomial(prior.float().expand(n * length, -1), 1, replacement=True,
                          generator=generator).view(n, length)  # (B, L) ~ prior
    given = None
    if fixed is not None:
        given = fixed_mask.to(device).expand(n, length)
        fixed = fixed.to(device).expand(n, length)
        x = torch.where(given, process.sample_xt(fixed, T, generator), x)
    grid = time_grid(T, steps)
    nfe, start = 0, time.perf_counter()
    pairs = list(zip(grid[:-1], grid[1:]))
    if progress:
        from tqdm import tqdm
        pairs = tqdm(pairs, desc="sampling", leave=False)
    for t, s in pairs:
        tt = torch.full((n,), t / T, device=device)
        logp0 = process.x0_log_probs(backbone(x, tt))  # (B, L, V) float64
        nfe += 1
        if temperature != 1.0:
            logp0 = torch.log_softmax(logp0 / temperature, -1) if temperature > 0 else \
                torch.log(F.one_hot(logp0.argmax(-1), process.vocab_size).to(DTYPE))
        if s == 0:
            x = sample_categorical(logp0, 1.0, generator)
        else:
            x = sample_categorical(torch.log(reverse_probs(process, logp0, x, s, t)), 1.0, generator)
        if given is not None:
            x = torch.where(given, fixed if s == 0 else process.sample_xt(fixed, s, generator), x)
    return SampleOutput(x, nfe, nfe * n, time.perf_counter() - start)
