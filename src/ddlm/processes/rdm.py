"""RDM's reparameterised forward process (Zheng et al. 2024): x_t = b_t x_0 + (1 - b_t) n_t per token, with
explicit routing latents b_t ~ Bernoulli(abar_t) and noise n_t ~ m (all [MASK], or uniform over the V tokens).
The objective that trains it is in objectives/rdm.py; the routing sampler in sampling/rdm.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .d3pm_schedules import DTYPE, get_d3pm_schedule

NOISES = ("absorbing", "multinomial")


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
