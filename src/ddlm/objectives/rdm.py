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
import torch.nn.functional as F

from ..errors import UserError
from ..processes.d3pm_schedules import DTYPE, get_d3pm_schedule

NOISES = ("absorbing", "multinomial")
WEIGHTINGS = ("linear", "reciprocal", "none", "elbo")


class RDMProcess:
    """The reparameterised forward process over V real tokens: absorbing (S = V + 1 states, [MASK] = V) or
    multinomial (S = V, uniform noise), T discrete steps with abar_t from a D3PM beta schedule."""

    def __init__(self, vocab_size: int, steps: int, noise: str = "absorbing", schedule: str = "absorbing"):
        if noise not in NOISES:
            raise UserError(f"unknown RDM noise {noise!r}; choose one of {', '.join(NOISES)}")
        if not isinstance(steps, int) or steps < 1:
            raise UserError(f"process.steps must be a positive integer, got {steps!r}")
        if schedule == "mutual_information":
            # I(x_t; x_0) needs the process and the data's unigram; the closed forms below cover RDM's use
            raise UserError("RDM supports the absorbing, cosine and linear schedules (process.discrete_schedule)")
        betas = torch.as_tensor(get_d3pm_schedule(schedule)(steps), dtype=DTYPE)  # (T,)
        self.vocab_size, self.steps, self.noise, self.schedule_name = vocab_size, steps, noise, schedule
        self.abar = torch.cat([torch.ones(1, dtype=DTYPE), torch.cumprod(1.0 - betas, 0)])  # (T + 1,)
        if float(self.abar[-1]) != 0.0:
            raise UserError(f"the {schedule} schedule leaves abar_T = {float(self.abar[-1]):.3g} > 0; RDM needs "
                            "x_T to be pure noise (use the absorbing or cosine schedule, or linear ending at 1)")
        self.n_states = vocab_size + 1 if noise == "absorbing" else vocab_size
        if noise == "absorbing":
            self.mask_id = vocab_size  # the masked-diffusion loop and planners find [MASK] here

    # ---- the forward process ------------------------------------------------------------------------------
    def abar_at(self, t: torch.Tensor) -> torch.Tensor:
        """abar at integer steps t (...) long, or at continuous times t in [0, 1] (linear interpolation)."""
        abar = self.abar.to(t.device)
        if not t.is_floating_point():
            return abar[t]
        u = t.double().clamp(0.0, 1.0) * self.steps
        lo = u.floor().long().clamp_max(self.steps - 1)
        frac = u - lo
        return (1 - frac) * abar[lo] + frac * abar[lo + 1]

    def reveal_prob(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """P(noisy at t -> clean at s < t) = (abar_s - abar_t) / (1 - abar_t); 1 at s = 0."""
        a_t, a_s = self.abar_at(t), self.abar_at(s)
        return ((a_s - a_t) / (1.0 - a_t).clamp_min(1e-300)).clamp(0.0, 1.0)

    def noise_like(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Fresh noise tokens n ~ m with the shape of x: all [MASK], or uniform over the V tokens."""
        if self.noise == "absorbing":
            return torch.full_like(x, self.mask_id)
        return torch.randint(0, self.vocab_size, x.shape, generator=generator, device=x.device)

    def route(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (x_t, noisy) for x0 (B, L) at integer steps t (B,): noisy = (b_t == 0), each token independently
        with probability 1 - abar_t; x_t = noise there, x0 elsewhere."""
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=DTYPE)
        noisy = u >= self.abar_at(t)[:, None]  # (B, L)
        return torch.where(noisy, self.noise_like(x0, generator), x0), noisy

    # ---- what the logits mean ------------------------------------------------------------------------------
    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """x0-parameterisation: log p~(x_0 | x_t) over the V real tokens, (B, L, S) -> (B, L, V)."""
        return F.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)

    def is_masked(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise != "absorbing":
            raise UserError("only the absorbing RDM has [MASK] tokens; multinomial noise is hidden in plain tokens")
        return x == self.mask_id

    def __repr__(self) -> str:
        return f"RDMProcess(V={self.vocab_size}, T={self.steps}, noise={self.noise!r}, schedule={self.schedule_name!r})"


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

    def _noisy_nll(self, model, x0, t, generator):
        x_t, noisy = self.process.route(x0, t, generator)
        logits = model(x_t, t.float() / self.process.steps)  # (B, L, S)
        nll = -self.process.log_probs(logits).gather(-1, x0[..., None])[..., 0]  # (B, L)
        return (nll * noisy).sum(-1)  # (B,)

    def bound(self, model, x0: torch.Tensor, t=None, generator=None) -> torch.Tensor:
        t = self._steps(x0, t, generator)
        return self.bound_weight(t).float() * self._noisy_nll(model, x0, t, generator)

    def __call__(self, model, x0: torch.Tensor, generator=None) -> dict:
        t = self._steps(x0, None, generator)
        nll = self._noisy_nll(model, x0, t, generator)  # (B,)
        L = x0.shape[1]
        loss = (self.train_weight(t).float() * nll).mean() / L
        nelbo = (self.bound_weight(t).float() * nll).mean() / L
        return {"loss": loss, "nelbo": nelbo.detach()}
