"""The sampling core: one loop for every family, which calls the family's *step rule* once per step.

The loop owns the sampling state (tokens, which positions are still noisy, fixed positions, time, NFE, the
per-row cache of the denoiser, progress bar, timing, the generator); a step rule owns the mathematics:

    rule.start(ctx, n, length, fixed, fixed_mask) -> SamplingState   the prior draw (x_T)
    rule.grid(steps)        -> [(t, s), ...]                          the times it walks, t > s (or t = s)
    rule.finished(state)    -> bool                                   stop early (nothing left to decide)
    rule.denoise(ctx, state)-> logp (B, L', V)                        the model's log p(x_0 | x_t)
    rule.step(ctx, state, logp)                                       x_t -> x_s: updates state.x, state.noisy
    rule.output(state)      -> (B, L) tokens

Step rules: masked ancestral / planned / ReMDM re-masking (`loop.py`, `remask.py`), D3PM's posterior step
(`d3pm.py`), RDM's routing step (`rdm.py`) and AR's left-to-right step (`autoregressive.py`).

Hooks (`Hooks`, all optional, free when None):

    logits_transform(logp, state) -> logp   (B, L', V) log-probabilities of x_0 before the step (guidance)
    propose(logp, where, state, draw) -> tokens (B, L')
                                            draws the tokens a step commits: `draw(logp_rows) -> (N,) long`
                                            is the default sampler over rows (N, V); `where` (B, L') bool
                                            says which positions are read (None: all). The default returns
                                            draw(logp) (or scatters draw(logp[where]) into a copy of x), and
                                            a reward-guided proposer may call `draw` several times and choose
    stop(state) -> (B,) bool                rows that are finished (an end token); they stop changing and
                                            are no longer evaluated by the cached denoiser; the run ends
                                            when every row is finished
    observer(state) -> None                 every intermediate state after each step (read-only: clone
                                            what you keep)

L' is L for the diffusion rules and 1 for AR (the next position only).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .categorical import sample_categorical
from .denoiser import Denoiser, SampleOutput, check_sampling_args


@dataclass
class SamplingState:
    x: torch.Tensor  # (B, L) long current tokens x_t (AR: BOS + tokens, see its rule)
    noisy: torch.Tensor  # (B, L) bool positions still to be decided (masked, noisy, not yet generated)
    fixed: torch.Tensor  # (B, L) bool positions given in advance (prompt, infilling), never sampled
    done: torch.Tensor  # (B,) bool rows the stop hook has finished
    step: int = 0  # index into the rule's grid
    steps: int = 0  # length of the grid
    t: float = 1.0  # the current time of the rule's grid
    s: float = 0.0  # the time after this step
    nfe: int = 0  # network calls so far
    memo: dict = field(default_factory=dict)  # a step rule's own per-run state

    @property
    def steps_left(self) -> int:
        """Steps still to come, this one included (1 at the last step)."""
        return self.steps - self.step


@dataclass
class Hooks:
    logits_transform: Callable | None = None  # (logp, state) -> logp
    propose: Callable | None = None  # (logp, where, state, draw) -> tokens
    stop: Callable | None = None  # (state) -> (B,) bool
    observer: Callable | None = None  # (state) -> None


def default_propose(logp, where, state, draw):
    """One draw per position: draw(logp) (all positions) or draw(logp[where]) scattered into a copy of x."""
    if where is None:
        return draw(logp)
    tokens = state.x.clone() if state.x.shape == where.shape else torch.zeros(where.shape, dtype=torch.long,
                                                                              device=where.device)
    tokens[where] = draw(logp[where])
    return tokens


class StepRule:
    """Base of the step rules; subclasses set `start`, `grid` and `step` (see the module docstring)."""

    name = "rule"
    cached = False  # may the denoiser reuse the output of unchanged rows (time-free models only)

    def start(self, ctx: "Sampler", n: int, length: int, fixed, fixed_mask) -> SamplingState:
        raise NotImplementedError

    def grid(self, steps: int) -> list:
        """Masked-diffusion time: t = i / steps, s = (i - 1) / steps for i = steps..1."""
        return [(i / steps, (i - 1) / steps) for i in range(steps, 0, -1)]

    def finished(self, state: SamplingState) -> bool:
        return False

    def net_time(self, state: SamplingState) -> float:
        """The time the network sees (t in [0, 1])."""
        return state.t

    def active(self, state: SamplingState) -> torch.Tensor:
        """(B,) rows whose output may still be read (the cached denoiser skips the others)."""
        return state.noisy.any(-1)

    def denoise(self, ctx: "Sampler", state: SamplingState) -> torch.Tensor:
        n = state.x.shape[0]
        t = torch.full((n,), self.net_time(state), device=state.x.device)
        return ctx.denoiser(state.x, t, self.active(state) & ~state.done)

    def step(self, ctx: "Sampler", state: SamplingState, logp: torch.Tensor) -> None:
        raise NotImplementedError

    def output(self, state: SamplingState) -> torch.Tensor:
        return state.x


class Sampler:
    """One run of the core: backbone, process, generator and hooks, offered to the step rule as `ctx`."""

    def __init__(self, backbone, process, generator=None, hooks: Hooks | None = None, cached: bool = False):
        self.backbone, self.process, self.generator = backbone, process, generator
        self.hooks = hooks or Hooks()
        self.device = next(backbone.parameters()).device
        self.denoiser = Denoiser(backbone, process, cached)

    def propose(self, logp: torch.Tensor, where: torch.Tensor | None, state: SamplingState,
                temperature: float = 1.0) -> torch.Tensor:
        """Tokens (B, L') drawn from logp (B, L', V) at `where` (None: everywhere), through the propose hook."""
        def draw(rows):
            return sample_categorical(rows, temperature, self.generator)

        propose = self.hooks.propose or default_propose
        return propose(logp, where, state, draw)

    def rand(self, shape, dtype=torch.float64) -> torch.Tensor:
        """U[0, 1) draws from the run's generator, on its device."""
        return torch.rand(shape, generator=self.generator, dtype=dtype, device=self.device)


def _bar(iterator, progress: bool):
    """A tqdm bar on stderr, only when asked for and stderr is a terminal (no bars in logs and pipes)."""
    if not (progress and sys.stderr.isatty()):
        return iterator
    from tqdm import tqdm

    return tqdm(iterator, desc="sampling", leave=False)


@torch.no_grad()
def run(rule: StepRule, backbone, process, n: int, length: int, steps: int, *, temperature: float = 1.0,
        fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None, generator=None,
        hooks: Hooks | None = None, progress: bool = False) -> SampleOutput:
    """Sample n sequences of `length` tokens with `rule` in at most len(rule.grid(steps)) steps.

    fixed (B or 1, L) long and fixed_mask (B or 1, L) bool: positions given in advance (prompt, infilling).
    """
    check_sampling_args(n, length, steps, temperature)
    ctx = Sampler(backbone, process, generator, hooks, rule.cached)
    hooks = ctx.hooks
    state = rule.start(ctx, n, length, fixed, fixed_mask)
    grid = rule.grid(steps)
    state.steps = len(grid)
    start = time.perf_counter()
    for i in _bar(range(len(grid)), progress):
        state.step, (state.t, state.s) = i, grid[i]
        if rule.finished(state):
            break
        logp = rule.denoise(ctx, state)
        state.nfe = ctx.denoiser.nfe
        if hooks.logits_transform is not None:
            logp = hooks.logits_transform(logp, state)
        if hooks.stop is None:
            rule.step(ctx, state, logp)
        else:
            before, noisy = state.x.clone(), state.noisy.clone()
            rule.step(ctx, state, logp)
            keep = state.done[:, None]  # finished rows do not change any more
            state.x = torch.where(keep, before, state.x)
            state.noisy = torch.where(keep, noisy, state.noisy)
            state.done = state.done | hooks.stop(state).to(state.done.device)
        if hooks.observer is not None:
            hooks.observer(state)
        if hooks.stop is not None and bool(state.done.all()):
            break
    state.nfe = ctx.denoiser.nfe
    return SampleOutput(rule.output(state), ctx.denoiser.nfe, ctx.denoiser.row_evals, time.perf_counter() - start)


def new_state(x: torch.Tensor, noisy: torch.Tensor, fixed: torch.Tensor) -> SamplingState:
    return SamplingState(x=x, noisy=noisy, fixed=fixed, done=torch.zeros(x.shape[0], dtype=torch.bool,
                                                                            device=x.device))


def expand_fixed(ctx: Sampler, n: int, length: int, fixed, fixed_mask):
    """(fixed tokens (n, L) long or None, fixed mask (n, L) bool) on the run's device."""
    if fixed is None:
        return None, torch.zeros((n, length), dtype=torch.bool, device=ctx.device)
    return fixed.to(ctx.device).expand(n, length), fixed_mask.to(ctx.device).expand(n, length)
