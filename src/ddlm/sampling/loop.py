"""The sampling loop of masked diffusion, written once.

A run starts from MASK everywhere except fixed positions (a prompt, infilling context, Sudoku givens) and
walks t from 1 to 0 in `steps` steps. Each step asks the denoiser for p_theta(x_0 | x_t) (B, L, V) and lets
a *step rule* decide which masked positions to commit:

  ancestral  MDLM's reverse process: each masked position unmasks with probability
             (alpha(s) - alpha(t)) / (1 - alpha(t)) and takes a token drawn from p_theta (Sahoo et al. 2024).
  planned    a planner (random, top_prob, top_margin, entropy, confidence, ...) picks which positions to
             commit, ceil(n_masked / steps_left) per row by default (Kim et al. 2025).

Caching: when the denoiser is time-free (no time conditioning) its output depends on x_t alone, so a row
whose tokens did not change since its last evaluation reuses its last output and the network runs on the
changed rows only. NFE counts network calls; `row_evals` counts rows evaluated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..errors import UserError
from .categorical import sample_categorical
from .planners import commit_counts


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # (B, L) long
    nfe: int  # network calls
    row_evals: int  # rows of the batch evaluated, summed over calls
    seconds: float
    texts: list | None = None


class Denoiser:
    """Wraps a backbone and a process into x_t -> log p_theta(x_0 | x_t) (B, L, V) with optional row caching."""

    def __init__(self, backbone, process, cached: bool = False):
        if cached and getattr(backbone, "time_conditioned", False):
            raise UserError("the cached sampler needs a time-free denoiser (model.time_conditioning=false); "
                            "use --sampler ancestral for this model")
        self.backbone, self.process, self.cached = backbone, process, cached
        self.nfe = self.row_evals = 0
        self._x = self._logp = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x_0 | x_t) (B, L, V). With caching, only rows that changed since their last evaluation and
        are still `active` (B,) (have masked positions) are evaluated; the others keep their last output."""
        rows = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        if self.cached:
            if self._x is not None:
                rows = (x != self._x).any(-1)  # (B,) rows that changed since their last evaluation
            if active is not None:
                rows &= active  # a finished row's output is never read again
            if not rows.any():
                return self._logp
        idx = rows.nonzero()[:, 0]
        if hasattr(self.backbone, "select_rows"):  # a backbone with per-row state (blockwise prefix KV cache)
            self.backbone.select_rows(idx)
        logp = self.process.log_probs(self.backbone(x[idx], t[idx]))  # (b, L, V)
        self.nfe += 1
        self.row_evals += len(idx)
        if len(idx) == x.shape[0]:
            self._logp = logp
        else:
            if self._logp is None:
                self._logp = logp.new_zeros((x.shape[0],) + logp.shape[1:])
            else:
                self._logp = self._logp.clone()
            self._logp[idx] = logp
        self._x = x.clone()
        return self._logp


def check_sampling_args(n: int, length: int, steps: int, temperature: float):
    if n <= 0:
        raise UserError(f"the number of samples must be positive, got {n}")
    if length <= 0:
        raise UserError(f"the length must be positive, got {length}")
    if steps <= 0:
        raise UserError(f"the number of steps must be positive, got {steps}")
    if not (0.0 <= temperature <= 100.0) or math.isnan(temperature):
        raise UserError(f"temperature must be in [0, 100], got {temperature}")


@torch.no_grad()
def sample_masked(backbone, process, n: int, length: int, steps: int, *, rule: str = "ancestral",
                  planner=None, temperature: float = 1.0, cached: bool = False, fixed: torch.Tensor | None = None,
                  fixed_mask: torch.Tensor | None = None, generator=None, progress: bool = False) -> SampleOutput:
    """Sample n sequences of `length` tokens with a masked-diffusion denoiser.

    fixed (B or 1, L) long and fixed_mask (B or 1, L) bool: positions given in advance (prompt, infilling).
    """
    check_sampling_args(n, length, steps, temperature)
    if rule not in STEP_RULES:
        raise UserError(f"unknown step rule {rule!r}; choose one of {', '.join(STEP_RULES)}")
    device = next(backbone.parameters()).device
    x = torch.full((n, length), process.mask_id, dtype=torch.long, device=device)
    if fixed is not None:
        fixed_mask = fixed_mask.to(device).expand(n, length)
        x = torch.where(fixed_mask, fixed.to(device).expand(n, length), x)
    denoise = Denoiser(backbone, process, cached)
    start = time.perf_counter()
    iterator = range(steps, 0, -1)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="sampling", leave=False)
    for i in iterator:
        masked = process.is_masked(x)
        if not masked.any():
            break
        t = torch.full((n,), i / steps, device=device)
        s = torch.full((n,), (i - 1) / steps, device=device)
        logp = denoise(x, t, masked.any(-1))  # (B, L, V)
        if getattr(planner, "needs_candidates", False):  # e.g. RDM routing scores the proposed tokens
            tokens = sample_categorical(logp, temperature, generator)  # (B, L), float64 Gumbel-max
            commit = STEP_RULES[rule](process, logp, masked, t, s, i, planner, tokens, generator) & masked
            x = torch.where(commit, tokens, x)
            continue
        commit = STEP_RULES[rule](process, logp, masked, t, s, i, planner, None, generator) & masked
        if commit.any():  # draw tokens only where they are committed: most ancestral steps commit nothing
            idx = commit.nonzero(as_tuple=True)
            x[idx] = sample_categorical(logp[idx], temperature, generator)
    return SampleOutput(x, denoise.nfe, denoise.row_evals, time.perf_counter() - start)


def ancestral_rule(process, logp, masked, t, s, steps_left, planner, tokens, generator):
    """Each masked position unmasks with probability (alpha(s) - alpha(t)) / (1 - alpha(t))."""
    a_t, a_s = process.schedule.alpha(t.double()), process.schedule.alpha(s.double())
    p = ((a_s - a_t) / (1.0 - a_t).clamp_min(1e-12))[:, None]  # (B, 1)
    if steps_left == 1:
        p = torch.ones_like(p)  # t -> 0: everything left is revealed
    u = torch.rand(masked.shape, generator=generator, dtype=torch.float64, device=masked.device)
    return masked & (u < p)


def planned_rule(process, logp, masked, t, s, steps_left, planner, tokens, generator):
    """A planner commits ceil(n_masked / steps_left) positions per row (a linear unmasking schedule)."""
    if planner is None:
        raise UserError("the planned sampler needs a planner (--planner)")
    if steps_left == 1:
        return masked  # the last step commits everything left (a threshold planner may lag behind)
    # the planners' online linear schedule, seen from now: step 0 of the steps_left still to come
    k = commit_counts(masked.sum(-1), 0, steps_left)  # (B,) = ceil(n_masked / steps_left)
    return planner(logp, masked, k, candidates=tokens, generator=generator)


STEP_RULES = {"ancestral": ancestral_rule, "planned": planned_rule}
