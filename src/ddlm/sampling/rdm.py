"""RDM's routing sampler (Zheng et al. 2024, "A Reparameterized Discrete Diffusion Model for Text Generation",
section 4.3), for absorbing and multinomial noise.

The sampler tracks which tokens are noisy (b = 0) and walks K steps. At each step the denoiser proposes
x~_0 ~ p~(x_0 | x_t) with score s = log p~(x~_0 | x_t) per position, and a *route* decides which tokens are
noisy afterwards:

  ancestral      the model's own reverse process: each noisy token becomes clean with probability
                 (abar_s - abar_t) / (1 - abar_t) (positions chosen at random; what the bound scores)
  deterministic  the m lowest-scoring positions are noisy after the step, m = the number the schedule
                 (linear or cosine in the remaining fraction) leaves noisy; the rest are clean
  stochastic     the same with Gumbel-top-k: scores + routing_temperature * rate * G, rate = m / n (annealed)

Noisy tokens ranked above the cut take their proposal. A clean token ranked below it is re-noised
(`condition="uncond"`), only if the model now proposes the same token with a lower score than when it was
decoded (`"cond"`, RDM's conditioned variant), or never (`"none"`: only noisy positions are ranked, which is
the planned masked loop with the rdm planner). Noise is [MASK] (absorbing) or a fresh uniform token
(multinomial). Fixed positions (prompt, infilling) are clean from the start and never routed.

With an exact denoiser, one decoded token per step and a choice of positions that does not depend on the
proposed tokens (condition "none", stochastic routing at a temperature that swamps the scores, K = L), the
sampler draws exactly from the data distribution: it is a random-order autoregressive sampler. At low
temperature the choice depends on the proposals (confident first), which sharpens samples and is not exact.
Under "cond" and "uncond" clean tokens compete for the cut too; one that lands below it but is kept (cond)
leaves room for two decodes in one step, so those variants are not exact even with an oracle.

The step is `RoutingRule`, a step rule of the sampling core (`core.py`); `sample_rdm` runs it.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .core import Hooks, StepRule, expand_fixed, new_state, run
from .denoiser import SampleOutput, check_sampling_args
from .planners import gumbel_noise, top_k_masked, unmask_counts_batch

ROUTES = ("ancestral", "deterministic", "stochastic", "planned")
CONDITIONS = ("cond", "uncond", "none")


def check_routing(route: str, condition: str, schedule: str, routing_temperature: float) -> None:
    if route not in ROUTES:
        raise UserError(f"unknown RDM route {route!r}; choose one of {', '.join(ROUTES)}")
    if condition not in CONDITIONS:
        raise UserError(f"unknown process.routing_condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    if schedule not in ("linear", "cosine"):
        raise UserError(f"unknown process.routing_schedule {schedule!r}; choose linear or cosine")
    if not routing_temperature >= 0:
        raise UserError(f"process.routing_temperature must be >= 0, got {routing_temperature}")


class RoutingRule(StepRule):
    """One RDM step: propose x~_0, then route (ancestral, deterministic or stochastic) which tokens stay noisy."""

    name = "routing"

    def __init__(self, process, steps, route, routing_temperature, schedule, condition, temperature):
        self.process, self.steps, self.route = process, steps, route
        self.routing_temperature, self.schedule, self.condition = routing_temperature, schedule, condition
        self.temperature = temperature

    def start(self, ctx, n, length, fixed, fixed_mask):
        x = torch.zeros((n, length), dtype=torch.long, device=ctx.device)
        fixed, given = expand_fixed(ctx, n, length, fixed, fixed_mask)
        if fixed is not None:
            given = given.clone()
            x = torch.where(given, fixed, x)
        noisy = ~given  # (B, L) b = 0
        x = torch.where(noisy, self.process.noise_like(x, ctx.generator), x)
        state = new_state(x, noisy, given)
        state.memo["stored"] = torch.zeros((n, length), dtype=torch.float64, device=ctx.device)  # decoded scores
        # how many free positions stay noisy after each step: (B, K + 1), column j = after j steps
        counts = unmask_counts_batch(noisy.sum(-1).cpu(), self.steps, self.schedule).to(ctx.device)
        state.memo["remaining"] = noisy.sum(-1, keepdim=True) - torch.cat(
            [torch.zeros_like(counts[:, :1]), counts.cumsum(-1)], -1)
        return state

    def grid(self, steps):
        return [(k / steps, (k - 1) / steps) for k in range(steps, 0, -1)]

    def finished(self, state):
        return self.route == "ancestral" and not state.noisy.any()

    def active(self, state):
        return torch.ones_like(state.done)

    def step(self, ctx, state, logp):
        logp = logp.double()  # (B, L, V)
        x, noisy, given, stored = state.x, state.noisy, state.fixed, state.memo["stored"]
        remaining, steps, k = state.memo["remaining"], self.steps, self.steps - state.step
        n, device = x.shape[0], x.device
        t = torch.full((n,), state.t, device=device)
        proposal = ctx.propose(logp, None, state, self.temperature)  # (B, L), float64 Gumbel-max
        score = logp.gather(-1, proposal[..., None])[..., 0]  # (B, L)
        if self.route == "ancestral":
            p = self.process.reveal_prob(t.double(), torch.full_like(t, (k - 1) / steps).double())[:, None]  # (B, 1)
            u = torch.rand(noisy.shape, generator=ctx.generator, dtype=torch.float64, device=device)
            denoise, renoise = noisy & (u < p), torch.zeros_like(noisy)
        else:
            m = remaining[:, steps - k + 1]  # (B,) noisy after this step
            key = score
            if self.route == "stochastic" and self.routing_temperature > 0:
                rate = (m.double() / remaining[:, 0].clamp_min(1).double())[:, None]  # (B, 1), anneals to 0
                key = key + self.routing_temperature * rate * gumbel_noise(key.shape, ctx.generator, device)
            ranked = noisy if self.condition == "none" else ~given
            low = top_k_masked(-key, ranked, m)  # (B, L) the m lowest keys among the ranked positions
            clean = ~noisy & ~given
            if self.condition == "uncond":
                renoise = clean & low
            elif self.condition == "cond":
                renoise = clean & low & (proposal == x) & (score < stored)
            else:
                renoise = torch.zeros_like(noisy)
            denoise = noisy & ~low
        x = torch.where(denoise, proposal, x)
        state.memo["stored"] = torch.where(denoise, score, stored)
        state.noisy = (noisy & ~denoise) | renoise
        state.x = torch.where(state.noisy, self.process.noise_like(x, ctx.generator), x)  # noise carries nothing


@torch.no_grad()
def sample_rdm(backbone, process, n: int, length: int, *, steps: int, temperature: float = 1.0,
               route: str = "deterministic", routing_temperature: float = 1.0, schedule: str = "linear",
               condition: str = "cond", fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None,
               generator=None, progress: bool = False, hooks: Hooks | None = None) -> SampleOutput:
    """n sequences of `length` tokens from an RDM denoiser (`process` an RDMProcess) in `steps` network calls."""
    check_sampling_args(n, length, steps, temperature)
    check_routing(route, condition, schedule, routing_temperature)
    if route == "planned":
        return _planned(backbone, process, n, length, steps, temperature, routing_temperature, fixed, fixed_mask,
                        generator, progress, hooks)
    rule = RoutingRule(process, steps, route, routing_temperature, schedule, condition, temperature)
    return run(rule, backbone, process, n, length, steps, temperature=temperature, fixed=fixed,
               fixed_mask=fixed_mask, generator=generator, hooks=hooks, progress=progress)


def _planned(backbone, process, n, length, steps, temperature, routing_temperature, fixed, fixed_mask, generator,
             progress, hooks=None):
    """Absorbing RDM without re-noising and a linear k: the one masked loop with the rdm planner."""
    from .loop import sample_masked
    from .planners import get_planner

    if getattr(process, "noise", None) != "absorbing":
        raise UserError("--sampler planned needs [MASK] tokens (rdm-absorbing); use --sampler routing")
    return sample_masked(backbone, process, n, length, steps, rule="planned",
                         planner=get_planner("rdm", temperature=routing_temperature), temperature=temperature,
                         fixed=fixed, fixed_mask=fixed_mask, generator=generator, progress=progress, hooks=hooks)
