"""MDLM's objective: the continuous-time Rao-Blackwellised ELBO of masked diffusion, and its discrete-T form.

Continuous time (Sahoo et al. 2024, eq. 11):
    NELBO(x) = E_{t ~ U[0,1]} [ -alpha'(t) / (1 - alpha(t)) * sum_{l : x_t^l = MASK} -log p_theta(x^l | x_t) ]
With the log-linear schedule the weight is 1/t. Discrete time with T steps, t(i) = i/T, s = (i-1)/T:
    NELBO_T(x) = T * E_{i ~ U{1..T}} [ (alpha(s) - alpha(t)) / (1 - alpha(t)) * sum_{masked l} -log p_theta(x^l | x_t) ]
For an exact denoiser both equal -log p(x) in expectation (absorbing diffusion averages autoregressive
factorisations over random orders), which the tests check on a toy distribution.
"""

from __future__ import annotations

import torch

from ..data.batches import as_batch, counted, model_kwargs, per_token
from ..errors import UserError
from ..processes.masking import MaskingProcess


def draw_t(batch: int, how: str, generator=None, device=None) -> torch.Tensor:
    """t in [0, 1) for a batch: uniform, stratified (one shared offset, B strata: MDLM's low-discrepancy
    sampler) or antithetic (pairs u, 1 - u)."""
    if how == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    if how == "stratified":
        u = torch.rand(1, generator=generator, device=device)
        return (u + torch.arange(batch, device=device) / batch) % 1.0
    if how == "antithetic":
        u = torch.rand((batch + 1) // 2, generator=generator, device=device)
        return torch.cat([u, 1.0 - u])[:batch]
    raise UserError(f"unknown process.t_sampling {how!r}; choose uniform, stratified or antithetic")


class MDLMObjective:
    """Masked diffusion NELBO (or, with weighting='ce', the masked cross-entropy averaged over masked tokens,
    a common surrogate for reasoning tasks); `bound` is always the true NELBO estimate."""

    def __init__(self, process: MaskingProcess, t_sampling: str = "stratified", discrete_steps: int = 0,
                 t_eps: float = 1e-3, weighting: str = "elbo"):
        if weighting not in ("elbo", "ce"):
            raise UserError(f"unknown process.loss_weighting {weighting!r}; choose elbo or ce")
        if discrete_steps < 0:
            raise UserError(f"process.discrete_steps must be >= 0, got {discrete_steps}")
        if not 0.0 <= t_eps < 1.0:
            raise UserError(f"process.t_eps must be in [0, 1), got {t_eps}")
        draw_t(1, t_sampling)  # validate the name early
        self.process, self.t_sampling, self.T = process, t_sampling, discrete_steps
        self.t_eps, self.weighting = t_eps, weighting

    def sample_t(self, batch: int, generator=None, device=None) -> torch.Tensor:
        u = draw_t(batch, self.t_sampling, generator, device)
        if self.T:
            return torch.ceil(u * self.T).clamp_min(1) / self.T  # i/T with i in 1..T
        return self.t_eps + (1.0 - self.t_eps) * u

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sequence weight (B,) so that the bound is weight * sum of masked -log p."""
        sched = self.process.schedule
        if self.T:
            a_t, a_s = sched.alpha(t), sched.alpha(t - 1.0 / self.T)
            return self.T * (a_s - a_t) / (1.0 - a_t).clamp_min(1e-12)
        # the density of t is uniform on [t_eps, 1): the integral is (1 - t_eps) times the mean
        return (1.0 - self.t_eps) * sched.weight(t)

    def _masked_nll(self, model, b, t, generator):
        x0 = b.tokens
        xt = self.process.sample_xt(x0, t, generator)
        if b.mask is not None:  # positions that do not count are context: never masked
            xt = torch.where(b.mask, xt, x0)
        nll, masked, _ = self.scored(model, b, xt, t)
        return nll, masked

    def scored(self, model, b, xt, t):
        """-log p(x_0 | x_t) at the masked counted positions of a given x_t (B, L): (nll (B, L) zero elsewhere,
        masked (B, L) bool, logp (B, L, V)). Progressive masking (progressive.py) calls it with its own x_t."""
        logits = model(xt, t, **model_kwargs(b))  # (B, L, V + 1)
        logp = self.process.log_probs(logits)  # (B, L, V)
        nll = -logp.gather(-1, b.tokens[..., None])[..., 0]  # (B, L)
        masked = self.process.is_masked(xt)
        return counted(nll, b) * masked, masked, logp

    def loss_terms(self, nll, masked, t, b) -> dict:
        """The loss of the configured weighting from the masked NLL (B, L) at times t (B,)."""
        n_masked = masked.sum().clamp_min(1)
        ce = nll.sum() / n_masked
        nelbo = per_token(self.weight(t) * nll.sum(-1), b)  # nats per counted token
        loss = nelbo if self.weighting == "elbo" else ce
        return {"loss": loss, "nelbo": nelbo.detach(), "masked_ce": ce.detach()}

    def bound(self, model, batch, t: torch.Tensor | None = None, generator=None) -> torch.Tensor:
        """One-sample NELBO estimate in nats per sequence (over the counted positions), (B,)."""
        b = as_batch(batch)
        if t is None:
            t = self.sample_t(b.tokens.shape[0], generator, b.tokens.device)
        nll, _ = self._masked_nll(model, b, t, generator)
        return self.weight(t) * nll.sum(-1)

    def __call__(self, model, batch, generator=None) -> dict:
        b = as_batch(batch)
        t = self.sample_t(b.tokens.shape[0], generator, b.tokens.device)
        nll, masked = self._masked_nll(model, b, t, generator)
        return self.loss_terms(nll, masked, t, b)
