"""D3PM's hybrid objective L_vb + lambda * CE (Austin et al. 2021, eq. 5) and an exact evaluation of the bound.

The variational bound, in nats per sequence (paper eq. 1 with the x0-parameterisation of eq. 4):
    L_vb = L_T + sum_{t=2}^{T} E_q(x_t|x0) KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) + E_q(x_1|x0) [-log p~(x_0 | x_1)]
         = L_T + T * E_{t ~ U{1..T}} [ term_t ]                       (one-sample unbiased estimate)
with L_T = KL(q(x_T | x_0) || prior), a constant (0 when the schedule ends at the stationary distribution).
The auxiliary CE = E_t E_q [-log p~(x_0 | x_t)] sharpens the x0 predictions (lambda = 0.01 in the paper).
"""

from __future__ import annotations

import itertools

import torch

from ..data.batches import as_batch, counted, model_kwargs, per_token
from ..errors import check
from ..processes.d3pm import D3PMProcess, kl_categorical


def step_terms(process: D3PMProcess, logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position bound terms and cross-entropies (B, L) for steps t (B,) in 1..T.

    term = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) where t > 1, -log p~(x_0 | x_1) where t = 1."""
    logp0 = process.x0_log_probs(logits)  # (B, L, V)
    ce = -logp0.gather(-1, x0[..., None])[..., 0]  # (B, L)
    first = t == 1
    if bool(first.all()):
        return ce, ce
    t2 = t.clamp_min(2)  # rows with t = 1 are computed at t = 2 and then discarded
    log_q = process.log_q_posterior(x_t, torch.nn.functional.one_hot(x0, process.n_states), t2)
    log_p = process.log_q_posterior(x_t, logp0.exp(), t2)
    kl = kl_categorical(log_q.exp(), log_p)  # (B, L)
    return torch.where(first[:, None], ce, kl), ce


class D3PMObjective:
    """Hybrid loss L_vb + lambda * CE per token (Austin et al. 2021, eq. 5), with t ~ U{1..T} per sequence.

    Returns {"loss", "vb" (the bound estimate incl. L_T), "ce", "prior" (L_T)}, all nats per token."""

    def __init__(self, process: D3PMProcess, hybrid_lambda: float = 0.01):
        check(hybrid_lambda >= 0, f"hybrid_lambda must be >= 0, got {hybrid_lambda}")
        self.process, self.hybrid_lambda = process, float(hybrid_lambda)

    def __call__(self, model, batch, generator=None) -> dict:
        b = as_batch(batch)
        x0 = b.tokens
        B, L = x0.shape
        T = self.process.steps
        t = torch.randint(1, T + 1, (B,), generator=generator, device=x0.device)
        x_t = noised(self.process, b, t, generator)
        logits = model(x_t, t.float() / T, **model_kwargs(b))  # (B, L, S)
        terms, ce = step_terms(self.process, logits, x0, x_t, t)
        prior = prior_of(self.process, b)  # (B,) constant
        vb = per_token(T * counted(terms, b).sum(-1) + prior, b)
        ce = ce.mean() if b.mask is None else counted(ce, b).sum() / b.mask.sum().clamp_min(1)
        loss = vb + self.hybrid_lambda * ce
        return {"loss": loss.float(), "vb": vb.detach().float(), "ce": ce.detach().float(),
                "prior": per_token(prior, b).float()}


def noised(process: D3PMProcess, b, t: torch.Tensor, generator=None) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) (B, L); positions that do not count in the loss are context and stay x_0."""
    x_t = process.sample_xt(b.tokens, t, generator)
    return x_t if b.mask is None else torch.where(b.mask, x_t, b.tokens)


def prior_of(process: D3PMProcess, b) -> torch.Tensor:
    """L_T (B,) in nats per sequence over the counted positions. L_T is a sum of per-position terms that depend
    on x_0 alone, so the per-position values are the prior of each token as a sequence of one."""
    if b.mask is None:
        return process.prior_kl(b.tokens)
    per_position = process.prior_kl(b.tokens.reshape(-1, 1)).view(b.tokens.shape)  # (B, L)
    return counted(per_position, b).sum(-1)


def _stride_plan(T: int, stride: int) -> list[tuple[int, int]]:
    """(t, weight) pairs: t = 1 always (L_0 is large and special), then 2..T cut into consecutive blocks of
    `stride` steps, each represented by its first step and weighted by the block's length."""
    plan = [(1, 1)]
    for start in range(2, T + 1, stride):
        plan.append((start, min(stride, T + 1 - start)))
    return plan


@torch.no_grad()
def exact_vlb(model, process: D3PMProcess, x0: torch.Tensor, stride: int = 1, generator=None,
              enumerate_limit: int = 4096, chunk: int = 4096) -> torch.Tensor:
    """The D3PM bound L_vb in nats per sequence (B,), every step evaluated (no sampling of t).

    stride = 1 sums all T terms; stride > 1 evaluates t = 1 and the first step of each block of `stride`
    steps in 2..T, multiplying by the block length (a deterministic estimate of the sum). L_T is added.
    The expectation over x_t ~ q(x_t | x_0) is exact by enumeration when S ** L <= enumerate_limit
    (toy vocabularies: configurations of zero probability are skipped), otherwise one sample of x_t per
    step and sequence (the KL given x_t is still exact)."""
    check(stride >= 1, f"stride must be >= 1, got {stride}")
    B, L = x0.shape
    S, T = process.n_states, process.steps
    total = process.prior_kl(x0).clone()  # (B,)
    enumerate_xt = S**L <= enumerate_limit
    configs = torch.tensor(list(itertools.product(range(S), repeat=L)), device=x0.device) if enumerate_xt else None
    for t, weight in _stride_plan(T, stride):
        steps = torch.full((B,), t, device=x0.device, dtype=torch.long)
        if not enumerate_xt:
            x_t = process.sample_xt(x0, steps, generator)
            logits = model(x_t, steps.to(torch.float32) / T)
            total += weight * step_terms(process, logits, x0, x_t, steps)[0].sum(-1)
            continue
        probs = process.q_xt_given_x0(x0, steps)  # (B, L, S)
        # q(x_t = c | x_0) for every configuration c (N, L): (B, N)
        w = probs[:, torch.arange(L, device=x0.device), configs].prod(-1)
        rows, cols = torch.nonzero(w > 0, as_tuple=True)
        for i in range(0, rows.numel(), chunk):
            r, c = rows[i:i + chunk], cols[i:i + chunk]
            x_t = configs[c]
            st = steps[r]
            logits = model(x_t, st.to(torch.float32) / T)
            term = step_terms(process, logits, x0[r], x_t, st)[0].sum(-1)  # (M,)
            total.index_add_(0, r, weight * w[r, c] * term)
    return total
