"""Samplers: one masked-diffusion loop with step rules and planners, blockwise generation, AR sampling,
D3PM's ancestral sampler and RDM's routing sampler. Each family lists the --sampler names it accepts and
turns them into keyword options of its `sample` function (`Family.samplers`, `Family.options`)."""

from __future__ import annotations

from ..errors import UserError

SAMPLERS = ("ancestral", "cached", "planned", "routing")


def options(family, sampler: str, planner: str, steps: int, temperature: float) -> dict:
    """Keyword options of `family.sample` for a sampler name (validated here, once)."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if family.samplers and sampler not in family.samplers:
        raise UserError(f"the {family.name} family samples with --sampler {' or '.join(family.samplers)}, "
                        f"not {sampler!r}")
    return family.options(sampler, planner, steps, temperature)


def causal_options(sampler: str, planner: str, steps: int, temperature: float) -> dict:
    """Autoregressive sampling: left to right, one token per call; only the temperature matters."""
    return {"temperature": temperature}


def masked_options(sampler: str, planner: str, steps: int, temperature: float) -> dict:
    """The masked-diffusion loop: ancestral, cached (ancestral reusing unchanged rows) or planned."""
    opts = {"steps": steps, "temperature": temperature, "rule": "ancestral", "cached": sampler == "cached"}
    if sampler == "planned":
        from .planners import get_planner

        opts.update(rule="planned", planner=get_planner(planner))
    return opts
