"""ReMDM: masked-diffusion sampling that may send committed tokens back to MASK (Wang et al. 2025,
"Remasking Discrete Diffusion Models with Inference-Time Scaling", arXiv 2503.00307).

From t to s < t a committed (not fixed) token returns to MASK with probability sigma_t, and a masked
position unmasks with the probability that keeps the marginals q(z_t | x_0) of MDLM:

    p(unmask) = (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t),   0 <= sigma_t <= sigma_max_t,
    sigma_max_t = min(1, (1 - alpha_s) / alpha_t).

sigma_t = 0 is MDLM's ancestral step, token for token (the same uniforms decide both moves). Schedules:

  cap      sigma_t = min(eta, sigma_max_t)
  rescale  sigma_t = eta * sigma_max_t
  conf     committed token l re-masks with eta_l * sigma_max_t, eta_l = softmax(-psi) over the row's
           committed tokens, psi_l = the probability the model gave token l when it was committed (the least
           confident first); masked positions unmask with sigma_max_t
  loop     alpha runs 0 -> alpha_on over t in [1, t_on] (ancestral), stays at alpha_on over [t_on, t_off]
           while re-masking with rescale (sigma = eta * sigma_max), then runs alpha_on -> 1 over
           [t_off, 0] (ancestral): the plateau's steps correct instead of unmasking

With an exact denoiser and small steps cap, rescale and loop sample the data distribution (the moves keep
the marginals); conf makes re-masking depend on the tokens, so it does not. The network sees the grid's t.
The rule never stops early while it can still re-mask (every step is a network call and counts in NFE).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .core import Hooks, run
from .denoiser import SampleOutput, check_sampling_args
from .loop import MaskedRule

SCHEDULES = ("cap", "rescale", "conf", "loop")
DEFAULT_ETA = {"cap": 0.008, "rescale": 0.015, "conf": 1.0, "loop": 0.02}  # the paper's OpenWebText settings


def _number(value, what, lo, hi):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not lo <= x <= hi:
        raise UserError(f"{what} must be in [{lo}, {hi}], got {value!r}")
    return x


class RemaskRule(MaskedRule):
    """MDLM's reverse step with re-masking probability sigma_t (see the module docstring)."""

    name = "remask"
    options = ("schedule", "eta", "t_on", "t_off", "alpha_on")

    def __init__(self, process, schedule: str = "rescale", eta=None, temperature: float = 1.0, t_on=0.55,
                 t_off=0.05, alpha_on=0.9):
        super().__init__(process, "ancestral", None, temperature, cached=False)
        if schedule not in SCHEDULES:
            raise UserError(f"unknown re-masking schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        self.schedule = schedule
        self.eta = _number(DEFAULT_ETA[schedule] if eta is None else eta, "remask option eta", 0.0, 1.0)
        self.t_on = _number(t_on, "remask option t_on", 0.0, 1.0)
        self.t_off = _number(t_off, "remask option t_off", 0.0, 1.0)
        self.alpha_on = _number(alpha_on, "remask option alpha_on", 0.0, 1.0)
        if schedule == "loop" and not (0.0 < self.t_off < self.t_on < 1.0 and 0.0 < self.alpha_on < 1.0):
            raise UserError(f"the loop schedule needs 0 < t_off < t_on < 1 and 0 < alpha_on < 1, got t_on={t_on}, "
                            f"t_off={t_off}, alpha_on={alpha_on}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha at times t (B,) float64: the process's schedule, or the loop's three pieces."""
        if self.schedule != "loop":
            return self.process.schedule.alpha(t)
        a_on, t_on, t_off = self.alpha_on, self.t_on, self.t_off
        rise = a_on * (1.0 - t) / (1.0 - t_on)  # t in [t_on, 1]
        fall = a_on + (1.0 - a_on) * (t_off - t) / t_off  # t in [0, t_off]
        return torch.where(t >= t_on, rise, torch.where(t <= t_off, fall, torch.full_like(t, a_on)))

    def remasks(self, t: float) -> bool:
        """Can a step at time t re-mask (the loop re-masks only on its plateau)?"""
        return self.eta > 0 and (self.schedule != "loop" or self.t_off < t <= self.t_on)

    def finished(self, state):
        state.noisy = self.process.is_masked(state.x)
        return not state.noisy.any() and not any(self.remasks(t) for t, _ in self._grid[state.step:])

    def grid(self, steps):
        self._grid = super().grid(steps)
        return self._grid

    def active(self, state):
        return torch.ones_like(state.done)  # a row with no MASK left may still re-mask

    def step(self, ctx, state, logp):
        masked, n, dev = state.noisy, state.x.shape[0], ctx.device
        a_t = self.alpha(torch.full((n,), state.t, device=dev).double())[:, None]  # (B, 1)
        a_s = self.alpha(torch.full((n,), state.s, device=dev).double())[:, None]
        last = state.steps_left == 1
        committed = ~masked & ~state.fixed  # (B, L)
        sigma = torch.zeros_like(a_t)  # (B, 1), or (B, L) for conf: re-masking of committed tokens
        sigma_masked = sigma  # (B, 1): the sigma_t in a masked position's unmasking probability
        if not last and self.remasks(state.t):
            smax = torch.where(a_t > 0, (1.0 - a_s) / a_t.clamp_min(1e-300), torch.ones_like(a_t)).clamp_max(1.0)
            if self.schedule == "cap":
                sigma = sigma_masked = smax.clamp_max(self.eta)
            elif self.schedule in ("rescale", "loop"):
                sigma = sigma_masked = self.eta * smax
            else:  # conf: softmax(-psi) over the committed tokens of each row
                psi = state.memo.get("psi", torch.zeros_like(masked, dtype=torch.float64))
                w = torch.where(committed, -psi, torch.full_like(psi, -torch.inf)).softmax(-1).nan_to_num(0.0)
                sigma, sigma_masked = self.eta * w * smax, smax
        if last:
            p = torch.ones_like(a_t)  # t -> 0: everything left is revealed
        else:
            p = (a_s - (1 - sigma_masked) * a_t) / (1.0 - a_t).clamp_min(1e-12)  # (B, 1)
        # one uniform per position decides both moves (masked and committed positions are disjoint), so
        # sigma = 0 draws exactly what the ancestral step draws
        u = ctx.rand(masked.shape)
        unmask = masked & (u < p)
        remask = committed & (u < sigma)
        x = state.x
        if unmask.any():
            x = ctx.propose(logp, unmask, state, self.temperature)
            if self.schedule == "conf":
                psi = state.memo.get("psi", torch.zeros_like(masked, dtype=torch.float64))
                chosen = logp.gather(-1, x.clamp_max(logp.shape[-1] - 1)[..., None])[..., 0].double().exp()
                state.memo["psi"] = torch.where(unmask, chosen, psi)
        state.x = torch.where(remask, torch.full_like(x, self.process.mask_id), x)
        state.noisy = self.process.is_masked(state.x)
        state.memo["remasked"] = state.memo.get("remasked", 0) + int(remask.sum())


def remask_rule(process, temperature: float = 1.0, **options) -> RemaskRule:
    """A RemaskRule from user options (schedule, eta, t_on, t_off, alpha_on), an unknown one a UserError."""
    unknown = sorted(set(options) - set(RemaskRule.options))
    if unknown:
        raise UserError(f"the remask sampler does not take option(s) {', '.join(unknown)}; its options: "
                        f"{', '.join(RemaskRule.options)}")
    return RemaskRule(process, temperature=temperature, **options)


@torch.no_grad()
def sample_remask(backbone, process, n: int, length: int, steps: int, *, schedule: str = "rescale", eta=None,
                  t_on=0.55, t_off=0.05, alpha_on=0.9, temperature: float = 1.0, fixed=None, fixed_mask=None,
                  generator=None, progress: bool = False, hooks: Hooks | None = None) -> SampleOutput:
    """ReMDM sampling of n sequences of `length` tokens in `steps` steps (a masked-diffusion process)."""
    check_sampling_args(n, length, steps, temperature)
    rule = RemaskRule(process, schedule, eta, temperature, t_on, t_off, alpha_on)
    return run(rule, backbone, process, n, length, steps, temperature=temperature, fixed=fixed,
               fixed_mask=fixed_mask, generator=generator, hooks=hooks, progress=progress)
