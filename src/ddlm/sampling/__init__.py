"""Samplers: one masked-diffusion loop with step rules and planners, blockwise generation, AR sampling,
D3PM's ancestral sampler and RDM's routing sampler. Each family lists the --sampler names it accepts and
turns them into keyword options of its `sample` function (`Family.samplers`, `Family.options`)."""

from __future__ import annotations

from ..errors import UserError

SAMPLERS = ("ancestral", "cached", "planned", "routing", "remask")


def options(family, sampler: str, planner: str, steps: int, temperature: float,
            planner_options: dict | None = None) -> dict:
    """Keyword options of `family.sample` for a sampler name (validated here, once). planner_options: keyword
    options of the planner (e.g. {"gumbel": 0.5}) or of the remask step rule (schedule, eta, ...)."""
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if family.samplers and sampler not in family.samplers:
        raise UserError(f"the {family.name} family samples with --sampler {' or '.join(family.samplers)}, "
                        f"not {sampler!r}")
    if planner_options:
        return family.options(sampler, planner, steps, temperature, planner_options=planner_options)
    return family.options(sampler, planner, steps, temperature)


def sampler_names() -> tuple[str, ...]:
    """The --sampler names (for help texts)."""
    return SAMPLERS


def sampler_options_of(sampler: str) -> tuple[str, ...]:
    """The option names a step rule takes through planner_options (for help texts): remask's; () otherwise
    (planned takes its planner's: planners.planner_options_of)."""
    if sampler == "remask":
        from .remask import RemaskRule

        return RemaskRule.options
    return ()


def causal_options(sampler: str, planner: str, steps: int, temperature: float, planner_options=None) -> dict:
    """Autoregressive sampling: left to right, one token per call; only the temperature matters."""
    if planner_options:
        raise UserError("autoregressive sampling takes no planner options")
    return {"temperature": temperature}


def masked_options(sampler: str, planner: str, steps: int, temperature: float, planner_options=None) -> dict:
    """The masked-diffusion loop: ancestral, cached (ancestral reusing unchanged rows), planned or remask."""
    opts = {"steps": steps, "temperature": temperature, "rule": "ancestral", "cached": sampler == "cached"}
    if sampler == "planned":
        from .planners import get_planner

        opts.update(rule="planned", planner=get_planner(planner, **(planner_options or {})))
    elif sampler == "remask":
        from .remask import remask_rule

        remask_rule(None, **(planner_options or {}))  # a bad option fails here, before any sampling
        opts.update(rule="remask", remask=dict(planner_options or {}))
    elif planner_options:
        raise UserError(f"the {sampler} sampler takes no planner options; use --sampler planned or remask")
    return opts
