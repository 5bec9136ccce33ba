"""Planned decoding with self-correction: commit cells in a planner's order, and send committed tokens that a
`flag` callable marks as wrong (together with the least confident ones) back to MASK, then decode them again.

The rule stays task-agnostic: what "wrong" means comes from the caller as

    flag(x, fixed) -> (B, L) bool        x (B, L) long tokens (MASK where still masked), fixed (B, L) bool

(Sudoku: the committed cells whose digit repeats in a row, column or box; `eval/sudoku.py` builds it). A
re-masking round happens in a row when the flag marks one of its committed (not fixed) positions and it has
steps left to re-decode what it re-masks one position per step:

  when="full"   only once the row has no MASK left (the first pass runs unchanged to its end)
  when="early"  as soon as a flagged position appears (errors are repaired before more is built on them)

A round re-masks the flagged committed positions, the `extra` least confident other committed ones (psi = the
probability the model gave a token when it was committed, as in ReMDM's conf) and the `undo` most recent
commits, and forbids the least confident flagged token at its position for the next `ban` rounds (with a
deterministic planner and greedy tokens the same context would otherwise commit the same token again). A
flagged MASK (Sudoku: a blank with no digit left) puts its row in question without being re-masked itself.
The grid is the first pass's `steps` steps plus
`budget` correction steps; commits per step are ceil(masked / steps left), so with one position per step and
no flag the rule is plain planned decoding token for token, and budget=0 is plain planned decoding always.
Every step is a network call; with the row-caching denoiser a row is evaluated only while it has MASKs.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .loop import MaskedRule


class CorrectRule(MaskedRule):
    """Planned commits plus flag-driven re-masking rounds (see the module docstring)."""

    name = "correct"
    options = ("budget", "extra", "undo", "back", "when", "ban", "rounds")

    def __init__(self, process, planner, flag=None, *, budget: int = 0, extra: int = 0, undo: int = 0,
                 back: int = 0, when: str = "full", ban: int = 1, rounds: int | None = None,
                 temperature: float = 0.0, cached: bool = True):
        super().__init__(process, "planned", planner, temperature, cached)
        if planner is None:
            raise UserError("the correcting sampler needs a planner (--planner)")
        if when not in ("full", "early"):
            raise UserError(f"re-masking 'when' must be full or early, got {when!r}")
        for what, v in (("budget", budget), ("extra", extra), ("undo", undo), ("back", back), ("ban", ban),
                        ("rounds", 0 if rounds is None else rounds)):
            if int(v) != v or v < 0:
                raise UserError(f"re-masking option {what} must be a whole number >= 0, got {v!r}")
        self.flag, self.budget, self.extra, self.when, self.ban = flag, int(budget), int(extra), when, int(ban)
        self.undo, self.back, self.rounds = int(undo), int(back), rounds

    def grid(self, steps):
        # correction steps sit at the first pass's last time (t = 1 / steps -> 0): the network sees an almost
        # finished board, which is what it is shown (a time-free model ignores t)
        first = super().grid(steps)
        return first + [first[-1]] * self.budget

    def step(self, ctx, state, logp):
        masked, memo = state.noisy, state.memo
        n, length, vocab = state.x.shape[0], state.x.shape[1], logp.shape[-1]
        if "psi" not in memo:
            memo["psi"] = torch.ones(state.x.shape, dtype=torch.float64, device=state.x.device)  # (B, L)
            memo["banned"] = torch.zeros((n, length, vocab), dtype=torch.int32, device=state.x.device)
            memo["rounds"] = torch.zeros(n, dtype=torch.long, device=state.x.device)
            memo["order"] = torch.full((n, length), -1, dtype=torch.long, device=state.x.device)  # commit step
            memo["remasked"] = 0
        banned = memo["banned"]
        if bool((banned > 0).any()):  # a forbidden token keeps no mass (unless nothing else is left)
            cut = logp.masked_fill(banned > 0, -torch.inf)
            logp = torch.where(torch.isinf(cut).all(-1, keepdim=True), logp, cut)
        left = state.steps_left
        if left == 1:
            commit = masked  # the last step commits everything left
        else:
            k = -(-masked.sum(-1) // left)  # (B,) ceil(masked / steps left)
            commit = self.planner(logp, masked, k, candidates=None, generator=ctx.generator) & masked
        x = state.x
        if commit.any():
            x = ctx.propose(logp, commit, state, self.temperature)
            chosen = logp.gather(-1, x.clamp_max(vocab - 1)[..., None])[..., 0].double().exp()
            memo["psi"] = torch.where(commit, chosen, memo["psi"])
            memo["order"] = torch.where(commit, state.step, memo["order"])
        state.x = x
        state.noisy = self.process.is_masked(x)
        if self.flag is not None and self.budget > 0 and left > 1:
            self._remask(state, left - 1)

    def _remask(self, state, steps_after: int) -> None:
        """Start a re-masking round in the rows the flag marks, if they can re-decode in the steps left."""
        memo, x, fixed = state.memo, state.x, state.fixed
        committed = ~state.noisy & ~fixed  # (B, L)
        flagged = self.flag(x, fixed).to(x.device)  # (B, L): any flagged position puts the row in question
        rows = flagged.any(-1)
        if self.when == "full":
            rows &= ~state.noisy.any(-1)
        if self.rounds is not None:
            rows &= memo["rounds"] < self.rounds
        if not rows.any():
            return
        bad = flagged & committed
        chosen = bad.clone()
        inf = torch.full_like(memo["psi"], torch.inf)
        if self.extra > 0:  # the `extra` least confident other committed cells
            psi = torch.where(committed & ~bad, memo["psi"], inf)
            low, idx = psi.topk(min(self.extra, x.shape[1]), dim=-1, largest=False)
            chosen |= torch.zeros_like(bad).scatter_(1, idx, torch.isfinite(low))
        if self.undo > 0:  # the `undo` most recent commits (chronological backtracking)
            order = torch.where(committed, memo["order"].double(), -inf)
            last, idx = order.topk(min(self.undo, x.shape[1]), dim=-1)
            chosen |= torch.zeros_like(bad).scatter_(1, idx, torch.isfinite(last))
        if self.back:  # backtrack: the least confident commit and every commit made after it
            weakest = torch.where(committed, memo["psi"], inf).argmin(-1, keepdim=True)  # (B, 1)
            since = memo["order"].gather(1, weakest)  # (B, 1) the step it was committed at
            chosen |= committed & (memo["order"] >= since)
        chosen &= rows[:, None]
        chosen &= ((state.noisy | chosen).sum(-1) <= steps_after)[:, None]  # re-decodable one per step
        if not chosen.any():
            return
        # forbid one token per row: the least confident re-masked flagged one (of two cells in conflict one is
        # right, so not both), or the least confident re-masked one when no committed cell is flagged
        suspects = torch.where((bad & chosen).any(-1, keepdim=True), bad & chosen, chosen)
        weakest = torch.where(suspects, memo["psi"], inf).argmin(-1)  # (B,)
        blame = torch.zeros_like(chosen)
        blame[torch.arange(x.shape[0], device=x.device), weakest] = chosen.any(-1)
        banned = memo["banned"]
        banned.sub_((banned > 0).int() * chosen.any(-1)[:, None, None].int())  # one round older
        if self.ban > 0:
            ban = torch.zeros_like(banned).scatter_(2, x.clamp_max(banned.shape[-1] - 1)[..., None], self.ban)
            banned.copy_(torch.where(blame[..., None], torch.maximum(banned, ban), banned))
        state.x = torch.where(chosen, torch.full_like(x, self.process.mask_id), x)
        state.noisy = self.process.is_masked(state.x)
        memo["rounds"] += chosen.any(-1).long()
        memo["remasked"] += int(chosen.sum())
