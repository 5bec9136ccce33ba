"""Noise schedules beta_t (t = 1..T) for the D3PM transition-matrix processes, and mutual information.

A schedule is a function `fn(steps, process=None, **kwargs) -> betas (steps,) float64` where betas[t - 1]
is beta_t, the parameter of the one-step matrix Q_t (Austin et al. 2021, "Structured Denoising Diffusion
Models in Discrete State-Spaces", section 3 and appendix A):

  absorbing           beta_t = 1 / (T - t + 1): each still-clean token is masked at a rate that leaves
                      x_T all [MASK] (alpha_bar_t = 1 - t/T). For the absorbing process this *is* the
                      mutual-information schedule.
  cosine              alpha_bar_t = cos((t/T + s) / (1 + s) * pi / 2), beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}
                      (as in D3PM's code, no square; the last step is exactly 1 so that x_T is fully noised).
  linear              beta_t linear from beta_start to beta_end (default 0.02 -> 1).
  mutual_information  beta_t chosen so that I(x_t; x_0) = (1 - t/T) H(x_0), x_0 ~ a unigram distribution
                      (uniform unless given). The process solves it (a closed form or a bisection over one
                      scalar per step), see `D3PMProcess.mutual_information_betas`.

The mutual-information helpers are exact for a unigram x_0 distribution p0 (V,) and a cumulative
matrix Q_bar (rows are from-states x_0, columns x_t).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

DTYPE = torch.float64


def absorbing_betas(steps: int, process=None) -> torch.Tensor:
    t = torch.arange(1, steps + 1, dtype=DTYPE)
    return 1.0 / (steps - t + 1.0)


def cosine_betas(steps: int, process=None, s: float = 0.008) -> torch.Tensor:
    t = torch.arange(0, steps + 1, dtype=DTYPE) / steps
    abar = torch.cos((t + s) / (1.0 + s) * math.pi / 2)
    abar[-1] = 0.0  # cos(pi/2) is 6e-17 in floating point; x_T must be exactly stationary
    return 1.0 - abar[1:] / abar[:-1]


def linear_betas(steps: int, process=None, beta_start: float = 0.02, beta_end: float = 1.0) -> torch.Tensor:
    if not (0.0 < beta_start and 0.0 < beta_end):
        raise UserError(f"linear schedule needs positive beta_start and beta_end, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, steps, dtype=DTYPE)


def mutual_information_betas(steps: int, process=None, unigram=None) -> torch.Tensor:
    """Betas so that I(x_t; x_0) falls linearly from H(x_0) to 0 (Austin et al. 2021, section 4)."""
    if process is None:
        # the process passes itself (D3PMProcess._make_betas): a bug, not a user's mistake
        raise ValueError("the mutual_information schedule needs the process it is built for")
    p0 = unigram_or_uniform(unigram, process.vocab_size)
    return process.mutual_information_betas(steps, p0)


def unigram_or_uniform(unigram, vocab_size: int) -> torch.Tensor:
    """A probability vector (V,) float64: the given unigram (normalised) or uniform."""
    if unigram is None:
        return torch.full((vocab_size,), 1.0 / vocab_size, dtype=DTYPE)
    p0 = torch.as_tensor(unigram, dtype=DTYPE).flatten()
    if p0.numel() != vocab_size or bool((p0 < 0).any()) or float(p0.sum()) <= 0:
        raise UserError(f"unigram must be {vocab_size} non-negative numbers with a positive sum")
    return p0 / p0.sum()


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def mutual_information(qbar: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
    """I(x_t; x_0) in nats for x_0 ~ p0 (V,) and q(x_t | x_0) = qbar[..., x_0, :] (..., S, S) -> (...)."""
    V = p0.shape[0]
    rows = qbar[..., :V, :]  # (..., V, S)
    pt = torch.einsum("v,...vs->...s", p0, rows)  # marginal of x_t
    ratio = torch.where(rows > 0, rows / pt[..., None, :].clamp_min(1e-300), torch.ones_like(rows))
    return torch.einsum("v,...vs->...", p0, rows * torch.log(ratio))


def rank_one_mutual_information(abar: torch.Tensor, m: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
    """I(x_t; x_0) for Q_bar = abar I + (1 - abar) 1 m^T (uniform, absorbing) without building S x S.

    abar (...,), m (S,) the stationary vector, p0 (V,) -> (...). Row x_0 = i is r_ij = abar d_ij + (1-abar) m_j,
    so I = sum_i p0_i [ sum_j c_j log(c_j / pt_j) - c_i log(c_i / pt_i) + r_ii log(r_ii / pt_i) ], c = (1-abar) m.
    """
    V = p0.shape[0]
    a = abar[..., None]  # (..., 1)
    p0s = torch.zeros_like(m)
    p0s[:V] = p0
    pt = a * p0s + (1 - a) * m  # (..., S)
    c = (1 - a) * m  # (..., S)

    def term(x, y):  # x log(x / y) with 0 log 0 = 0
        return torch.where(x > 0, x * torch.log(x.clamp_min(1e-300) / y.clamp_min(1e-300)), torch.zeros_like(x))

    common = term(c, pt).sum(-1, keepdim=True)  # (..., 1)
    diag = a + c[..., :V]
    per_i = common - term(c[..., :V], pt[..., :V]) + term(diag, pt[..., :V])  # (..., V)
    return (per_i * p0).sum(-1)


def bisect_decreasing(fn, target: torch.Tensor, lo: float, hi: float, iters: int = 60) -> torch.Tensor:
    """x in [lo, hi] with fn(x) = target for a decreasing fn, elementwise over target (clamps at the ends)."""
    lo_t = torch.full_like(target, lo)
    hi_t = torch.full_like(target, hi)
    for _ in range(iters):
        mid = 0.5 * (lo_t + hi_t)
        too_much_info = fn(mid) > target  # still above the target: need more noise
        lo_t = torch.where(too_much_info, mid, lo_t)
        hi_t = torch.where(too_much_info, hi_t, mid)
    return 0.5 * (lo_t + hi_t)


D3PM_SCHEDULES = {
    "absorbing": absorbing_betas,
    "cosine": cosine_betas,
    "linear": linear_betas,
    "mutual_information": mutual_information_betas,
}


def get_d3pm_schedule(name: str):
    if name not in D3PM_SCHEDULES:
        raise UserError(f"unknown D3PM schedule {name!r}; choose one of {', '.join(sorted(D3PM_SCHEDULES))}")
    return D3PM_SCHEDULES[name]
