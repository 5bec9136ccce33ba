"""Reparameterised discrete diffusion (RDM; Zheng et al. 2024, "A Reparameterized Discrete Diffusion Model
for Text Generation"): the forward process with explicit routing latents and the reweighted objective.

Every discrete diffusion whose one-step matrix is Q_t = (1 - beta_t) I + beta_t 1 m^T (absorbing: m = [MASK],
multinomial: m = uniform) can be written per token as
    x_t = b_t x_0 + (1 - b_t) n_t,      b_t ~ Bernoulli(abar_t),  n_t ~ m,     abar_t = prod_{s<=t} (1 - beta_s)
with b_t = 1 ("clean") for a token not yet noised. Going backwards, a noisy token becomes clean between t and
t - 1 with probability lambda_{t-1} = (abar_{t-1} - abar_t) / (1 - abar_t), and then equals x_0; everything
else needs no model (clean stays clean; noisy stays noise, a fresh draw of m). With p~(x_0 | x_t) the bound is

    -log p(x_0) <= sum_{t=1}^{T} E_q [ lambda_{t-1} sum_{n : b_t^n = 0} -log p~(x_0^n | x_t) ]        (RDM eq. 8)
                 = T * E_{t ~ U{1..T}} [ ... ]          (L_T = 0: the schedules end at abar_T = 0)

For the absorbing noise this is exactly D3PM-absorbing's L_vb and MDLM's discrete-time ELBO. RDM trains instead
with a reweighted cross-entropy on the noisy tokens, w_t * sum_{b=0} -log p~, where (t = 1..T)
    linear      w_t = 1 - (t - 1) / T        (the paper's default)
    reciprocal  w_t = 1 / t                  (the bound's weight T * lambda_{t-1} / T for abar_t = 1 - t/T)
    none        w_t = 1
    elbo        w_t = T * lambda_{t-1}       (trains the bound itself)
`bound` always returns the true bound, whatever the training weights.
"""

from __future__ import annotations

import torch

from ..data.batches import as_batch, counted, model_kwargs, per_token
from ..errors import UserError
from ..processes.d3pm_schedules import DTYPE
from ..processes.rdm import NOISES, RDMProcess  # noqa: F401  (RDMProcess lived here: old imports keep working)

WEIGHTINGS = ("linear", "reciprocal", "none", "elbo")


def draw_steps(batch: int, T: int, generator=None, device=None) -> torch.Tensor:
    """Stratified integer steps (B,) in 1..T: one shared uniform offset, B strata (each t is marginally U{1..T})."""
    u = (torch.rand(1, generator=generator, device=device, dtype=DTYPE)
         + torch.arange(batch, device=device, dtype=DTYPE) / batch) % 1.0
    return (u * T).floor().long().clamp_max(T - 1) + 1


class RDMObjective:
    """RDM's reweighted noisy-token cross-entropy (Zheng et al. 2024, eq. 8 with the weights w_t of the module
    docstring), t ~ U{1..T} stratified over the batch. Returns {"loss", "nelbo"} in nats per token;
    `bound(model, x0)` is the one-sample estimate of the true bound in nats per sequence (B,)."""

    def __init__(self, process: RDMProcess, weighting: str = "linear"):
        if weighting not in WEIGHTINGS:
            raise UserError(f"unknown process.rdm_weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        self.process, self.weighting = process, weighting

    def train_weight(self, t: torch.Tensor) -> torch.Tensor:
        """w_t (B,) float64 for integer steps t (B,) in 1..T."""
        T, t64 = self.process.steps, t.to(DTYPE)
        if self.weighting == "linear":
            return 1.0 - (t64 - 1.0) / T
        if self.weighting == "reciprocal":
            return 1.0 / t64
        if self.weighting == "none":
            return torch.ones_like(t64)
        return self.bound_weight(t)

    def bound_weight(self, t: torch.Tensor) -> torch.Tensor:
        """T * lambda_{t-1} (B,) float64: the bound's weight of the noisy-token NLL at step t."""
        return self.process.steps * self.process.reveal_prob(t, t - 1)

    def _steps(self, x0, t, generator):
        T = self.process.steps
        if t is None:
            return draw_steps(x0.shape[0], T, generator, x0.device)
        t = torch.as_tensor(t, device=x0.device)
        if t.is_floating_point():  # a time in (0, 1] -> its step
            t = torch.ceil(t * T).long()
        t = t.expand(x0.shape[0]) if t.dim() == 0 else t
        if bool(((t < 1) | (t > T)).any()):
            raise UserError(f"RDM steps must lie in 1..{T}")
        return t

    def _noisy_nll(self, model, b, t, generator):
        x0 = b.tokens
        x_t, noisy = self.process.route(x0, t, generator)
        if b.mask is not None:  # positions that do not count are context: never noised
            noisy = noisy & b.mask
            x_t = torch.where(b.mask, x_t, x0)
        logits = model(x_t, t.float() / self.process.steps, **model_kwargs(b))  # (B, L, S)
        nll = -self.process.log_probs(logits).gather(-1, x0[..., None])[..., 0]  # (B, L)
        return (counted(nll, b) * noisy).sum(-1)  # (B,)

    def bound(self, model, batch, t=None, generator=None) -> torch.Tensor:
        b = as_batch(batch)
        t = self._steps(b.tokens, t, generator)
        return self.bound_weight(t).float() * self._noisy_nll(model, b, t, generator)

    def __call__(self, model, batch, generator=None) -> dict:
        b = as_batch(batch)
        t = self._steps(b.tokens, None, generator)
        nll = self._noisy_nll(model, b, t, generator)  # (B,)
        loss = per_token(self.train_weight(t).float() * nll, b)
        nelbo = per_token(self.bound_weight(t).float() * nll, b)
        return {"loss": loss, "nelbo": nelbo.detach()}
