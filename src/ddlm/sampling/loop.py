"""Masked diffusion's step rules on the sampling core (`core.py`).

A run starts from MASK everywhere except fixed positions (a prompt, infilling context, Sudoku givens) and
walks t from 1 to 0 in `steps` steps. Each step asks the denoiser for p_theta(x_0 | x_t) (B, L, V) and a
*commit rule* decides which masked positions to commit:

  ancestral  MDLM's reverse process: each masked position unmasks with probability
             (alpha(s) - alpha(t)) / (1 - alpha(t)) and takes a token drawn from p_theta (Sahoo et al. 2024).
  planned    a planner (random, top_prob, top_margin, entropy, confidence, ...) picks which positions to
             commit, ceil(n_masked / steps_left) per row by default (Kim et al. 2025).

`remask.py` adds ReMDM's re-masking rule. Row caching (`cached=True`) is the core's Denoiser.
"""

from __future__ import annotations

import torch

from .core import Hooks, StepRule, expand_fixed, new_state, run
from .denoiser import Denoiser, SampleOutput, check_sampling_args  # noqa: F401  (re-exported)
from .counts import commit_counts, unmask_counts_batch


class MaskedRule(StepRule):
    """Commit some masked positions per step (COMMIT_RULES[rule]) and draw their tokens from p_theta."""

    name = "masked"

    def __init__(self, process, rule: str = "ancestral", planner=None, temperature: float = 1.0,
                 cached: bool = False):
        if rule not in COMMIT_RULES:
            # masked_options names the rule; a user's --sampler is checked there
            raise ValueError(f"unknown step rule {rule!r}; choose one of {', '.join(COMMIT_RULES)}, remask")
        self.process, self.commit, self.planner = process, COMMIT_RULES[rule], planner
        self.temperature, self.cached = temperature, cached

    def start(self, ctx, n, length, fixed, fixed_mask):
        x = torch.full((n, length), self.process.mask_id, dtype=torch.long, device=ctx.device)
        fixed, given = expand_fixed(ctx, n, length, fixed, fixed_mask)
        if fixed is not None:
            x = torch.where(given, fixed, x)
        return new_state(x, self.process.is_masked(x), given)

    def finished(self, state):
        state.noisy = self.process.is_masked(state.x)
        return not state.noisy.any()

    def step(self, ctx, state, logp):
        masked, n = state.noisy, state.x.shape[0]
        t = torch.full((n,), state.t, device=ctx.device)
        s = torch.full((n,), state.s, device=ctx.device)
        # a planner's non-linear commit schedule: k from the whole run's counts (the linear default keeps the
        # online ceil(n_masked / steps_left) of planned_rule)
        extra = {} if getattr(self.planner, "schedule", "linear") == "linear" else {"k": self._scheduled_k(state)}
        if getattr(self.planner, "needs_candidates", False):  # e.g. RDM routing scores the proposed tokens
            tokens = ctx.propose(logp, None, state, self.temperature)  # (B, L), float64 Gumbel-max
            commit = self.commit(self.process, logp, masked, t, s, state.steps_left, self.planner, tokens,
                                 ctx.generator, **extra) & masked
            state.x = torch.where(commit, tokens, state.x)
        else:
            commit = self.commit(self.process, logp, masked, t, s, state.steps_left, self.planner, None,
                                 ctx.generator, **extra) & masked
            if commit.any():  # draw tokens only where they are committed: most ancestral steps commit nothing
                state.x = ctx.propose(logp, commit, state, self.temperature)
        state.noisy = self.process.is_masked(state.x)

    def _scheduled_k(self, state) -> torch.Tensor:
        """(B,) positions to commit now so that after this step as many stay masked as `unmask_counts(n0, steps,
        planner.schedule)` leaves, n0 = the row's masked positions at the first step (an exact planner commits
        exactly unmask_counts; one that commits more, e.g. confidence, is not asked for what it did early)."""
        left = state.memo.get("left_after")  # (B, steps): masked positions left after each step
        if left is None:
            n0 = state.noisy.sum(-1).cpu()
            counts = unmask_counts_batch(n0, state.steps, self.planner.schedule)  # (B, steps)
            left = state.memo["left_after"] = (n0[:, None] - counts.cumsum(-1)).to(state.noisy.device)
        return (state.noisy.sum(-1) - left[:, state.step]).clamp_min(0)


@torch.no_grad()
def sample_masked(backbone, process, n: int, length: int, steps: int, *, rule: str = "ancestral",
                  planner=None, temperature: float = 1.0, cached: bool = False, fixed: torch.Tensor | None = None,
                  fixed_mask: torch.Tensor | None = None, generator=None, progress: bool = False,
                  hooks: Hooks | None = None, remask: dict | None = None) -> SampleOutput:
    """Sample n sequences of `length` tokens with a masked-diffusion denoiser.

    rule: ancestral, planned (with `planner`) or remask (ReMDM, `remask` = its options: schedule, eta, ...).
    fixed (B or 1, L) long and fixed_mask (B or 1, L) bool: positions given in advance (prompt, infilling).
    hooks: the core's hooks (guidance, proposals, stop, observer; see core.py).
    """
    check_sampling_args(n, length, steps, temperature)
    if rule == "remask":
        from .remask import remask_rule

        if cached:
            # masked_options never asks for it (--sampler cached is ancestral): only a direct call gets here
            raise ValueError("the remask sampler re-evaluates every row each step; it has no cached variant")
        step_rule = remask_rule(process, temperature, **(remask or {}))
    else:
        step_rule = MaskedRule(process, rule, planner, temperature, cached)
    return run(step_rule, backbone, process, n, length, steps, temperature=temperature, fixed=fixed,
               fixed_mask=fixed_mask, generator=generator, hooks=hooks, progress=progress)


def ancestral_rule(process, logp, masked, t, s, steps_left, planner, tokens, generator):
    """Each masked position unmasks with probability (alpha(s) - alpha(t)) / (1 - alpha(t))."""
    a_t, a_s = process.schedule.alpha(t.double()), process.schedule.alpha(s.double())
    p = ((a_s - a_t) / (1.0 - a_t).clamp_min(1e-12))[:, None]  # (B, 1)
    if steps_left == 1:
        p = torch.ones_like(p)  # t -> 0: everything left is revealed
    u = torch.rand(masked.shape, generator=generator, dtype=torch.float64, device=masked.device)
    return masked & (u < p)


def planned_rule(process, logp, masked, t, s, steps_left, planner, tokens, generator, k=None):
    """A planner commits k (B,) positions per row; by default ceil(n_masked / steps_left), the linear schedule."""
    if planner is None:  # get_planner always gives one: only a direct call can get here
        raise ValueError("planned_rule needs a planner (MaskedRule(rule='planned', planner=get_planner(...)))")
    if steps_left == 1:
        return masked  # the last step commits everything left (a threshold planner may lag behind)
    if k is None:  # the planners' online linear schedule, seen from now: step 0 of the steps_left still to come
        k = commit_counts(masked.sum(-1), 0, steps_left)  # (B,) = ceil(n_masked / steps_left)
    return planner(logp, masked, k, candidates=tokens, generator=generator)


COMMIT_RULES = {"ancestral": ancestral_rule, "planned": planned_rule}
STEP_RULES = COMMIT_RULES  # the older name
