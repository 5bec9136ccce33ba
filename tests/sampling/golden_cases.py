"""The sampling runs whose tokens and NFE are pinned by tests/sampling/fixtures/golden.pt.

Every sampler of every family, on the toy oracle (exact, time-free) and on tiny randomly initialised
transformers whose weights are stored in the fixture (so a change of initialisation does not move them).
`run_case(name, weights)` -> (tokens (n, L) long, nfe int). Record with `python tests/sampling/record_golden.py`.
"""

from __future__ import annotations

import torch

from ddlm.config import ModelConfig, ProcessConfig
from ddlm.families import build_family
from ddlm.models.transformer import Transformer
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling import options
from ddlm.sampling.blockwise import PrefixKVBackbone
from ddlm.toys import ToyDistribution

SEEDS = (0, 1)
PLANNERS = ("random", "top_prob", "top_margin", "entropy", "confidence", "rdm")
V, L, N = 5, 8, 6  # transformer cases: vocabulary, length, samples
FAMILIES = ("mdlm", "d3pm-uniform", "d3pm-absorbing", "rdm-absorbing", "rdm-multinomial", "ar")
TIME_CONDITIONED = ("d3pm-uniform", "d3pm-absorbing", "rdm-multinomial")


def _fixed(n_states_len: int):
    """Positions 0 and 3 fixed to tokens 1 and 2: (1, L) long and (1, L) bool."""
    fixed = torch.zeros(1, n_states_len, dtype=torch.long)
    mask = torch.zeros(1, n_states_len, dtype=torch.bool)
    fixed[0, 0], fixed[0, 3] = 1, 2
    mask[0, 0] = mask[0, 3] = True
    return fixed, mask


def build_net(family_name: str, weights: dict | None = None, seed: int = 0):
    fam = build_family(ProcessConfig(name=family_name, steps=10), V)
    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, max_len=L,
                      time_conditioning=family_name in TIME_CONDITIONED)
    torch.manual_seed(seed)
    net = Transformer(cfg, fam.process.n_states, causal=fam.causal)
    if weights is not None:
        net.load_state_dict(weights)
    else:  # random init gives near-uniform outputs: sharpen them so that planners and routes make real choices
        with torch.no_grad():
            net.head.weight.mul_(40.0)
            for block in net.blocks:  # adaLN-Zero starts at zero: give t a say
                if getattr(block, "ada", None) is not None:
                    block.ada.weight.normal_(0.0, 0.3)
    return fam, net.eval()


def toy_cases():
    """(name, fn(generator) -> SampleOutput) on the toy oracle, V = 3, L = 4."""
    from ddlm.objectives.rdm import RDMProcess
    from ddlm.processes.d3pm import make_d3pm_process
    from ddlm.sampling.d3pm import sample_d3pm
    from ddlm.sampling.loop import sample_masked
    from ddlm.sampling.planners import get_planner
    from ddlm.sampling.rdm import sample_rdm

    toy = ToyDistribution(3, 4, seed=3)
    oracle = toy.oracle()
    proc = MaskingProcess(3, LogLinear())
    fixed, mask = _fixed(4)
    cases = {
        "toy/mdlm/ancestral": lambda g: sample_masked(oracle, proc, 16, 4, 6, generator=g),
        "toy/mdlm/ancestral_t0.7": lambda g: sample_masked(oracle, proc, 16, 4, 6, temperature=0.7, generator=g),
        "toy/mdlm/cached": lambda g: sample_masked(oracle, proc, 16, 4, 6, cached=True, generator=g),
        "toy/mdlm/ancestral_fixed": lambda g: sample_masked(oracle, proc, 16, 4, 6, fixed=fixed, fixed_mask=mask,
                                                            generator=g),
        "toy/mdlm/cached_fixed": lambda g: sample_masked(oracle, proc, 16, 4, 3, cached=True, fixed=fixed,
                                                         fixed_mask=mask, generator=g),
    }
    for p in PLANNERS:
        cases[f"toy/mdlm/planned_{p}"] = (
            lambda g, p=p: sample_masked(oracle, proc, 16, 4, 3, rule="planned", planner=get_planner(p), generator=g))
        cases[f"toy/mdlm/planned_{p}_fixed"] = (
            lambda g, p=p: sample_masked(oracle, proc, 16, 4, 2, rule="planned", planner=get_planner(p), cached=True,
                                         fixed=fixed, fixed_mask=mask, generator=g))
    cases["toy/mdlm/planned_top_margin_gumbel"] = lambda g: sample_masked(
        oracle, proc, 16, 4, 4, rule="planned", planner=get_planner("top_margin", gumbel=0.5), generator=g)
    cases["toy/mdlm/planned_rdm_t0.5"] = lambda g: sample_masked(
        oracle, proc, 16, 4, 4, rule="planned", planner=get_planner("rdm", temperature=0.5), generator=g)
    for kind in ("uniform", "absorbing"):
        dp = make_d3pm_process(kind, 3, 8)
        cases[f"toy/d3pm-{kind}/ancestral"] = lambda g, dp=dp: sample_d3pm(oracle, dp, 16, 4, steps=5, generator=g)
        cases[f"toy/d3pm-{kind}/ancestral_fixed"] = lambda g, dp=dp: sample_d3pm(
            oracle, dp, 16, 4, steps=8, temperature=0.8, fixed=fixed, fixed_mask=mask, generator=g)
    for noise in ("absorbing", "multinomial"):
        rp = RDMProcess(3, 10, noise)
        routes = [("deterministic", c) for c in ("cond", "uncond", "none")] + [("stochastic", "cond"),
                                                                               ("ancestral", "cond")]
        if noise == "absorbing":
            routes.append(("planned", "cond"))
        for route, cond in routes:
            cases[f"toy/rdm-{noise}/{route}_{cond}"] = lambda g, rp=rp, route=route, cond=cond: sample_rdm(
                oracle, rp, 16, 4, steps=4, route=route, condition=cond, routing_temperature=0.5, generator=g)
        cases[f"toy/rdm-{noise}/deterministic_fixed"] = lambda g, rp=rp: sample_rdm(
            oracle, rp, 16, 4, steps=3, route="deterministic", schedule="cosine", fixed=fixed, fixed_mask=mask,
            generator=g)
    return cases


def net_cases():
    """(name, family name, sampler, planner, extra kwargs) for the tiny transformers, via family.options."""
    cases = [("net/mdlm/ancestral", "mdlm", "ancestral", "random", {}),
             ("net/mdlm/cached", "mdlm", "cached", "random", {}),
             ("net/mdlm/cached_fixed", "mdlm", "cached", "random", {"fixed": True}),
             ("net/mdlm/ancestral_prefixkv", "mdlm", "cached", "random", {"fixed": True, "prefix_kv": 4})]
    cases += [(f"net/mdlm/planned_{p}", "mdlm", "planned", p, {}) for p in PLANNERS]
    cases += [(f"net/mdlm/planned_{p}_fixed", "mdlm", "planned", p, {"fixed": True}) for p in PLANNERS]
    cases += [(f"net/{f}/ancestral", f, "ancestral", "random", {}) for f in ("d3pm-uniform", "d3pm-absorbing")]
    cases += [("net/d3pm-uniform/ancestral_fixed", "d3pm-uniform", "ancestral", "random", {"fixed": True})]
    for f in ("rdm-absorbing", "rdm-multinomial"):
        cases += [(f"net/{f}/routing", f, "routing", "random", {}), (f"net/{f}/ancestral", f, "ancestral", "random", {}),
                  (f"net/{f}/routing_fixed", f, "routing", "random", {"fixed": True})]
    cases += [("net/rdm-absorbing/planned", "rdm-absorbing", "planned", "random", {})]
    cases += [("net/ar/ancestral", "ar", "ancestral", "random", {}),
              ("net/ar/prompt", "ar", "ancestral", "random", {"prompt": True}),
              ("net/ar/t0.5", "ar", "ancestral", "random", {"temperature": 0.5})]
    return cases


def run_net_case(case, weights, generator):
    name, family, sampler, planner, extra = case
    fam, net = build_net(family, weights)
    opts = options(fam, sampler, planner, 5, extra.get("temperature", 1.0))
    if fam.causal:
        prompt = torch.tensor([1, 2]) if extra.get("prompt") else None
        return fam.sample(net, fam.process, N, L, prompt=prompt, generator=generator, **opts)
    kw = {}
    if extra.get("fixed"):
        kw["fixed"], kw["fixed_mask"] = _fixed(L)
        if extra.get("prefix_kv"):
            kw["fixed_mask"] = torch.arange(L)[None] < extra["prefix_kv"]
            kw["fixed"] = torch.arange(L)[None] % V
            net = PrefixKVBackbone(net, extra["prefix_kv"], N)
    return fam.sample(net, fam.process, N, L, generator=generator, **kw, **opts)


def run_all(weights: dict | None = None) -> tuple[dict, dict]:
    """{case/seed: (tokens, nfe)} for every case and seed, and the transformer weights used."""
    torch.set_num_threads(1)
    if weights is None:
        weights = {f: {k: v.clone() for k, v in build_net(f)[1].state_dict().items()} for f in FAMILIES}
    results = {}
    for name, fn in toy_cases().items():
        for seed in SEEDS:
            out = fn(torch.Generator().manual_seed(seed))
            results[f"{name}/seed{seed}"] = (out.tokens.cpu().clone(), int(out.nfe))
    for case in net_cases():
        for seed in SEEDS:
            out = run_net_case(case, weights[case[1]], torch.Generator().manual_seed(seed))
            results[f"{case[0]}/seed{seed}"] = (out.tokens.cpu().clone(), int(out.nfe))
    return results, weights
