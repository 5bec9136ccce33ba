"""How many masked positions a planned sampler commits per step: linear or MaskGIT's cosine schedule.

    unmask_counts(n, steps, schedule)           -> [k_0, ..., k_{steps-1}], summing to n
    unmask_counts_batch(n (B,), steps, schedule) -> (B, steps) long
    commit_counts(n_masked (B,), step, steps)   -> (B,) long, an online form for loops that re-count masks

The samplers validate steps and the schedule name before they call these, so a bad argument here is a bug
(ValueError with its traceback); a user's schedule is checked by planners.get_planner.
"""

from __future__ import annotations

import math

import torch


SCHEDULES = ("linear", "cosine")


def _check_schedule(steps: int, schedule: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown unmasking schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def unmask_counts_batch(n: torch.Tensor, steps: int, schedule: str = "linear") -> torch.Tensor:
    """Positions to commit per step for each row: n (B,) -> (B, steps) long, row b summing to n_b.

    linear: n // steps each, the first n % steps steps one more.
    cosine: MaskGIT (Chang et al. 2022): after step s, floor(n * cos(pi/2 * s / steps)) stay masked, so
            few commits early (when the model knows little) and more later.
    """
    _check_schedule(steps, schedule)
    n = torch.as_tensor(n)
    if n.dim() != 1 or n.is_floating_point() or n.dtype == torch.bool:
        raise ValueError(f"unmask counts need n as a (B,) integer tensor, got {n.dtype} {tuple(n.shape)}")
    if bool((n < 0).any()):
        raise ValueError(f"the number of positions to unmask must be >= 0, got {n.tolist()}")
    n = n.long()
    s = torch.arange(steps, device=n.device)  # (steps,)
    if schedule == "linear":
        return n[:, None] // steps + (s[None, :] < (n % steps)[:, None]).long()
    frac = torch.cos(math.pi / 2 * torch.arange(steps + 1, dtype=torch.float64, device=n.device) / steps)
    remaining = torch.floor(n[:, None].double() * frac[None, :]).long()  # (B, steps + 1), non-increasing
    remaining[:, 0], remaining[:, -1] = n, 0  # exact ends: cos(pi/2) is 6e-17, not 0
    return remaining[:, :-1] - remaining[:, 1:]


def unmask_counts(n: int, steps: int, schedule: str = "linear") -> list[int]:
    """How many of n masked positions to commit at each of `steps` steps: a list summing to n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"the number of positions to unmask must be an integer >= 0, got {n!r}")
    return unmask_counts_batch(torch.tensor([n]), steps, schedule)[0].tolist()


def commit_counts(n_masked: torch.Tensor, step: int, steps: int, schedule: str = "linear") -> torch.Tensor:
    """k for step `step` (0-based) of `steps`, from the positions still masked now: (B,) -> (B,) long.

    An online form of `unmask_counts` for loops that re-count the masks each step (prompts and fixed cells
    make n differ per row). linear: ceil(n_masked / steps_left), which reproduces unmask_counts exactly.
    cosine: keep floor(n_masked * cos(pi/2 (step+1)/steps) / cos(pi/2 step/steps)) masked. The last step
    commits everything left.
    """
    _check_schedule(steps, schedule)
    if not 0 <= step < steps:
        raise ValueError(f"step must be in [0, {steps}), got {step!r}")
    n = n_masked.long()
    left = steps - step
    if left == 1:
        return n.clone()
    if schedule == "linear":
        return torch.div(n + left - 1, left, rounding_mode="floor")
    ratio = math.cos(math.pi / 2 * (step + 1) / steps) / math.cos(math.pi / 2 * step / steps)
    return n - torch.floor(n.double() * ratio).long()
