"""Model families: a name -> (process, objective, sampler) chosen once, at construction.

Shared code (training loop, evaluation, CLI) calls `family.objective(model, x0)`, `family.objective.bound(...)`
and `family.sample(...)` and never branches on the family's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import ProcessConfig
from .errors import UserError
from .objectives.autoregressive import ARObjective, ARProcess
from .objectives.mdlm import MDLMObjective
from .processes.masking import MaskingProcess
from .processes.schedules import get_schedule
from .sampling.autoregressive import sample_autoregressive
from .sampling.loop import sample_masked


@dataclass
class Family:
    name: str
    process: object  # has vocab_size, n_states, log_probs(logits)
    objective: Callable  # objective(model, x0, generator) -> dict; objective.bound(model, x0) -> (B,) nats
    causal: bool  # the backbone's attention mask
    sample: Callable  # sample(backbone, process, n, length, **options) -> SampleOutput
    exact_likelihood: bool = False  # bound is the exact NLL (AR), not an upper bound


def _mdlm(cfg: ProcessConfig, vocab_size: int) -> Family:
    process = MaskingProcess(vocab_size, get_schedule(cfg.schedule))
    objective = MDLMObjective(process, cfg.t_sampling, cfg.discrete_steps, cfg.t_eps, cfg.loss_weighting)
    return Family("mdlm", process, objective, causal=False, sample=sample_masked)


def _ar(cfg: ProcessConfig, vocab_size: int) -> Family:
    process = ARProcess(vocab_size)
    return Family("ar", process, ARObjective(process), causal=True, sample=sample_autoregressive,
                  exact_likelihood=True)


FAMILIES = {"mdlm": _mdlm, "ar": _ar}


def build_family(cfg: ProcessConfig, vocab_size: int) -> Family:
    if cfg.name not in FAMILIES:
        raise UserError(f"unknown process {cfg.name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[cfg.name](cfg, vocab_size)
