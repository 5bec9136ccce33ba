"""Left-to-right sampling for the autoregressive baseline, as a step rule of the sampling core (`core.py`).

The state holds BOS followed by the L positions; each step feeds the tokens not yet seen by the network
through its KV cache (`_Incremental`) and draws the next position, one network call per token.
"""

from __future__ import annotations

import torch

from .core import Hooks, StepRule, new_state, run
from .denoiser import SampleOutput, check_sampling_args


class _Incremental(torch.nn.Module):
    """backbone(x, t) over the full state x (B, 1 + L) that runs only the positions not fed yet, up to `end`,
    through the backbone's KV caches: logits (B, l, S) of the fed positions."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.fed, self.end = backbone, 0, 0
        self.caches = [dict() for _ in backbone.blocks]

    def forward(self, x, t=None):
        inp, self.fed = x[:, self.fed: self.end], self.end
        return self.backbone(inp, kv_caches=self.caches)


class LeftToRightRule(StepRule):
    """Draw position `pos` from p(x_pos | x_<pos); the grid has one step per generated token."""

    name = "left_to_right"

    def __init__(self, process, wrapper: _Incremental, n_new: int, temperature: float = 1.0, prompt=None):
        self.process, self.wrapper, self.temperature, self.prompt = process, wrapper, temperature, prompt
        self.n_new = n_new  # positions to draw after the prompt

    def start(self, ctx, n, length, fixed, fixed_mask):
        x = torch.full((n, 1 + length), self.process.bos_id, dtype=torch.long, device=ctx.device)
        p = 0 if self.prompt is None else len(self.prompt)
        if p:
            x[:, 1: 1 + p] = self.prompt.to(ctx.device)
        fixed = torch.zeros_like(x, dtype=torch.bool)
        fixed[:, : 1 + p] = True
        state = new_state(x, ~fixed, fixed)
        state.memo["pos"] = 1 + p  # the next position to draw
        return state

    def grid(self, steps):
        return [(0.0, 0.0)] * self.n_new

    def denoise(self, ctx, state):
        self.wrapper.end = state.memo["pos"]
        return ctx.denoiser(state.x, torch.zeros(state.x.shape[0], device=state.x.device))[:, -1:]  # (B, 1, V)

    def step(self, ctx, state, logp):
        pos = state.memo["pos"]
        nxt = ctx.propose(logp, torch.ones(logp.shape[:2], dtype=torch.bool, device=logp.device), state,
                          self.temperature)  # (B, 1)
        x = state.x.clone()
        x[:, pos] = nxt[:, 0]
        state.x = x
        state.noisy = state.noisy.clone()
        state.noisy[:, pos] = False
        state.memo["pos"] = pos + 1

    def output(self, state):
        return state.x[:, 1:]


@torch.no_grad()
def sample_autoregressive(backbone, process, n: int, length: int, *, temperature: float = 1.0,
                          prompt: torch.Tensor | None = None, generator=None, progress: bool = False,
                          hooks: Hooks | None = None, **_unused) -> SampleOutput:
    """prompt: (P,) long prefix (optional). Returns n sequences of `length` tokens including the prompt.
    Unfinished positions of rows a `stop` hook ended hold BOS."""
    check_sampling_args(n, length, 1, temperature)
    n_new = length - (0 if prompt is None else len(prompt))
    if n_new <= 0:  # the prompt fills the length: nothing to draw, no network call
        x = prompt.expand(n, -1)[:, :length].clone()
        return SampleOutput(x, 0, 0, 0.0)
    wrapper = _Incremental(backbone)
    rule = LeftToRightRule(process, wrapper, n_new, temperature, prompt)
    return run(rule, wrapper, process, n, length, 1, temperature=temperature, generator=generator, hooks=hooks,
               progress=progress)
