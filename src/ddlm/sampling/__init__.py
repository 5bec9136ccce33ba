"""Samplers: one masked-diffusion loop with step rules and planners, blockwise generation, AR sampling."""

from __future__ import annotations

from ..errors import UserError

SAMPLERS = ("ancestral", "cached", "planned")


def options(family, sampler: str, planner: str, steps: int, temperature: float) -> dict:
    """Keyword options of `family.sample` for a sampler name (validated here, once)."""
    if family.causal:
        return {"temperature": temperature}
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    opts = {"steps": steps, "temperature": temperature, "rule": "ancestral", "cached": sampler == "cached"}
    if sampler == "planned":
        from .planners import get_planner

        opts.update(rule="planned", planner=get_planner(planner))
    return opts
