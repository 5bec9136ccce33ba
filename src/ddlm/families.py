"""Model families: a name -> (process, objective, sampler) chosen once, at construction.

Shared code (training loop, evaluation, CLI) calls `family.objective(model, batch, generator)` (batch: a
`data.batches.Batch` or a bare (B, L) tensor), `family.objective.bound(model, batch, t, generator)`
and `family.sample(...)` and never branches on the family's name.

    mdlm             masked diffusion, continuous-time ELBO (Sahoo et al. 2024)
    d3pm-uniform     D3PM with uniform transitions, L_vb + lambda CE (Austin et al. 2021)
    d3pm-absorbing   D3PM with an absorbing [MASK] state
    d3pm-gaussian    D3PM with a discretised Gaussian over token ids (ordinal data: digits, quantised values)
    d3pm-nn          D3PM nearest-neighbour: a kNN graph over the token ids (code-point order for the char
                     tokenizer, so letters diffuse to nearby letters); the paper's embedding-space graph
                     would need the tokenizer, which a family is not given
    rdm-absorbing    reparameterised diffusion with [MASK] noise, reweighted CE, routing sampler (Zheng et al. 2024)
    rdm-multinomial  reparameterised diffusion with uniform noise
    ar               the autoregressive baseline on the same backbone
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable

import torch

from .config import ProcessConfig, RunConfig
from .errors import UserError
from .data.batches import as_batch, counted, model_kwargs
from .objectives.autoregressive import ARObjective
from .objectives.d3pm import D3PMObjective, noised, prior_of, step_terms
from .objectives.mdlm import MDLMObjective
from .objectives.progressive import progressive
from .objectives.rdm import RDMObjective, draw_steps
from .processes.autoregressive import ARProcess
from .processes.d3pm import make_d3pm_process
from .processes.masking import MaskingProcess
from .processes.rdm import RDMProcess
from .processes.schedules import get_schedule
from .sampling import causal_options, masked_options
from .sampling.autoregressive import sample_autoregressive
from .sampling.d3pm import sample_d3pm
from .sampling.loop import sample_masked
from .sampling.rdm import check_routing, sample_rdm


@dataclass
class Family:
    name: str
    process: object  # has vocab_size, n_states, log_probs(logits)
    objective: Callable  # objective(model, batch, generator) -> dict; objective.bound(model, batch) -> (B,) nats
    causal: bool  # the backbone's attention mask
    sample: Callable  # sample(backbone, process, n, length, **options) -> SampleOutput
    exact_likelihood: bool = False  # bound is the exact NLL (AR), not an upper bound
    samplers: tuple = ("ancestral", "cached", "planned")  # the --sampler names it accepts; the first is its own
    options: Callable = masked_options  # options(sampler, planner, steps, temperature) -> kwargs of `sample`


# ---- objectives that need t -------------------------------------------------------------------------------
class TimeConditioned:
    """Wraps an objective whose denoiser must see t: a clear error instead of silently ignoring the time."""

    def __init__(self, objective, family: str):
        self.objective, self.family = objective, family

    def _check(self, model):
        inner = getattr(model, "module", model)  # DDP
        if not getattr(inner, "time_conditioned", True):
            raise UserError(f"the {self.family} family needs a time-conditioned backbone; "
                            "set model.time_conditioning=true")

    def __call__(self, model, batch, generator=None):
        self._check(model)
        return self.objective(model, batch, generator)

    def bound(self, model, batch, t=None, generator=None):
        self._check(model)
        return self.objective.bound(model, batch, t, generator)

    def __getattr__(self, name):  # process, hybrid_lambda, ... of the wrapped objective
        if name == "objective":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.objective, name)


class D3PMBound(D3PMObjective):
    """D3PM's hybrid loss plus `bound`, an unbiased estimate of L_vb in nats per sequence (B,):
        L_T + term_1 + (T - 1) * term_t,   t ~ U{2..T} stratified over the batch
    The reconstruction term_1 = -log p~(x_0 | x_1) is evaluated every time (one more network call): it is
    large and rare, and a single draw of t in 1..T would make the estimate's variance grow with T.
    With t given (steps (B,) or times in (0, 1]) it is the plain one-sample estimate L_T + T * term_t."""

    def _terms(self, model, b, t, generator):
        x_t = noised(self.process, b, t, generator)
        logits = model(x_t, t.float() / self.process.steps, **model_kwargs(b))
        return counted(step_terms(self.process, logits, b.tokens, x_t, t)[0], b).sum(-1)  # (B,)

    def bound(self, model, batch, t=None, generator=None) -> torch.Tensor:
        b = as_batch(batch)
        x0 = b.tokens
        T, B = self.process.steps, x0.shape[0]
        prior = prior_of(self.process, b)  # (B,)
        if t is not None:
            t = torch.as_tensor(t, device=x0.device)
            if t.is_floating_point():
                t = torch.ceil(t * T).long().clamp(1, T)
            t = t.expand(B) if t.dim() == 0 else t
            return (T * self._terms(model, b, t, generator) + prior).float()
        first = self._terms(model, b, torch.ones(B, dtype=torch.long, device=x0.device), generator)
        if T == 1:
            return (first + prior).float()
        t = draw_steps(B, T - 1, generator, x0.device) + 1  # (B,) in 2..T
        return (first + (T - 1) * self._terms(model, b, t, generator) + prior).float()


# ---- builders ---------------------------------------------------------------------------------------------
def _mdlm(cfg: ProcessConfig, vocab_size: int) -> Family:
    process = MaskingProcess(vocab_size, get_schedule(cfg.schedule))
    objective = MDLMObjective(process, cfg.t_sampling, cfg.discrete_steps, cfg.t_eps, cfg.loss_weighting)
    return Family("mdlm", process, objective, causal=False, sample=sample_masked,
                  samplers=("ancestral", "cached", "planned", "remask"))


def _ar(cfg: ProcessConfig, vocab_size: int) -> Family:
    process = ARProcess(vocab_size)
    return Family("ar", process, ARObjective(process), causal=True, sample=sample_autoregressive,
                  exact_likelihood=True, samplers=(), options=causal_options)


def _d3pm_options(sampler, planner, steps, temperature, planner_options=None):
    if planner_options:
        raise UserError("D3PM's ancestral sampler takes no planner options")
    return {"steps": steps, "temperature": temperature}


def _d3pm_process(kind: str, vocab_size: int, steps: int, schedule: str | None):
    """A process of its own for each family (processes move between devices in place, so two models must
    never share one), copied from one built once per configuration."""
    return copy.deepcopy(_built_d3pm_process(kind, vocab_size, steps, schedule))


@functools.lru_cache(maxsize=8)
def _built_d3pm_process(kind: str, vocab_size: int, steps: int, schedule: str | None):
    """Built once per process: the nearest-neighbour mutual-information schedule bisects (T, V, V) matrix
    exponentials (minutes at T = 1000), and a run builds its family several times (train, eval, sample).
    Never handed out itself (see _d3pm_process)."""
    kwargs = {"schedule": schedule}
    if kind == "nearest_neighbour":
        kwargs["embedding"] = torch.arange(vocab_size, dtype=torch.float64)[:, None]
    return make_d3pm_process(kind, vocab_size, steps, **kwargs)


def _d3pm(kind: str, family: str):
    def build(cfg: ProcessConfig, vocab_size: int) -> Family:
        process = _d3pm_process(kind, vocab_size, cfg.steps, cfg.discrete_schedule or None)
        objective = TimeConditioned(D3PMBound(process, cfg.hybrid_lambda), family)
        return Family(family, process, objective, causal=False, sample=sample_d3pm, samplers=("ancestral",),
                      options=_d3pm_options)
    return build


def _rdm(noise: str, family: str):
    def build(cfg: ProcessConfig, vocab_size: int) -> Family:
        process = RDMProcess(vocab_size, cfg.steps, noise, cfg.discrete_schedule or "absorbing")
        objective = RDMObjective(process, cfg.rdm_weighting)
        if noise == "multinomial":  # noise hides among real tokens: only t tells how much of x_t is noise
            objective = TimeConditioned(objective, family)
        check_routing(cfg.routing, cfg.routing_condition, cfg.routing_schedule, cfg.routing_temperature)
        routed = {"deterministic": 0.0, "stochastic": cfg.routing_temperature}[cfg.routing]

        def options(sampler, planner, steps, temperature, planner_options=None):
            # `planner` is not asked: RDM ranks positions by the score of its own proposal
            if planner_options:
                raise UserError("RDM's samplers take no planner options (process.routing_* configure routing)")
            route = {"routing": cfg.routing, "ancestral": "ancestral", "planned": "planned"}[sampler]
            return {"steps": steps, "temperature": temperature, "route": route, "routing_temperature": routed,
                    "schedule": cfg.routing_schedule, "condition": cfg.routing_condition}

        samplers = ("routing", "ancestral", "planned") if noise == "absorbing" else ("routing", "ancestral")
        return Family(family, process, objective, causal=False, sample=sample_rdm, samplers=samplers,
                      options=options)
    return build


FAMILIES = {
    "mdlm": _mdlm,
    "d3pm-uniform": _d3pm("uniform", "d3pm-uniform"),
    "d3pm-absorbing": _d3pm("absorbing", "d3pm-absorbing"),
    "d3pm-gaussian": _d3pm("gaussian", "d3pm-gaussian"),
    "d3pm-nn": _d3pm("nearest_neighbour", "d3pm-nn"),
    "rdm-absorbing": _rdm("absorbing", "rdm-absorbing"),
    "rdm-multinomial": _rdm("multinomial", "rdm-multinomial"),
    "ar": _ar,
}

# config fields a family needs, applied by `configure` (the denoiser must see t where x_t does not tell it)
REQUIRES = {name: {"model.time_conditioning": True}
            for name in ("d3pm-uniform", "d3pm-absorbing", "d3pm-gaussian", "d3pm-nn", "rdm-multinomial")}


def build_family(cfg: ProcessConfig, vocab_size: int) -> Family:
    if cfg.name not in FAMILIES:
        raise UserError(f"unknown process {cfg.name!r}; choose one of {', '.join(FAMILIES)}")
    return progressive(FAMILIES[cfg.name](cfg, vocab_size), cfg)  # process.masking (PUMA) or as it is


def configure(cfg: RunConfig, overrides=()) -> RunConfig:
    """Switch on the config fields the chosen family needs (REQUIRES). A field the user set explicitly in
    `overrides` (strings `section.field=value`) to something else is a UserError rather than overruled."""
    import yaml

    from .config import apply_overrides

    if cfg.process.name not in FAMILIES:
        raise UserError(f"unknown process {cfg.process.name!r}; choose one of {', '.join(FAMILIES)}")
    explicit = {}
    for item in overrides:
        key, _, raw = item.partition("=")
        explicit[key.strip()] = raw
    d = cfg.to_dict()
    changes = []
    for key, value in REQUIRES.get(cfg.process.name, {}).items():
        section, name = key.split(".", 1)
        if d[section][name] == value:
            continue
        if key in explicit:
            raise UserError(f"the {cfg.process.name} family needs {key}={yaml.safe_dump(value).split()[0]}; "
                            f"drop {key}={explicit[key]}")
        changes.append(f"{key}={yaml.safe_dump(value).split()[0]}")
    return apply_overrides(cfg, changes) if changes else cfg
