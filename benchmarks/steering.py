"""Steering on an exact toy: classifier-free guidance, best-of-N, SVDD and SMC side by side.

The model is the exact denoiser of a known distribution over V^L sequences (ddlm.guidance.toys), so every
number is about the steering method alone: mean reward, how natural the samples stay (their exact NLL under
the unsteered distribution p), and the network rows evaluated per sample (the cost; NFE counts calls of the
whole batch). The reward is the fraction of positions holding token 0; the reference row is the exact tilted
target p(x) exp(r(x) / alpha) / Z that SMC aims at. The guidance table samples class 0 of a two-class toy at
scales w and reports the exact log-odds log p_0(x) / p_1(x) of the samples.

    python benchmarks/steering.py [--n 1000] [--seed 0] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ddlm.guidance import ClassifierFreeGuidance, Conditioned, PredictedReward, SMCProposer, SVDDProposer
from ddlm.guidance.toys import build, tilted
from ddlm.sampling.core import Hooks
from ddlm.sampling.loop import sample_masked
from ddlm.sampling.planners import get_planner

V, L = 3, 6
SMC_ALPHA = 0.1


def reward_of(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens == 0).double().mean(-1)


def run(net, proc, rows, seed, hooks=None, backbone=None):
    g = torch.Generator().manual_seed(seed)
    for h in (hooks.propose if hooks else None,):
        if h is not None:
            h.generator = g
    return sample_masked(backbone or net, proc, rows, L, L, rule="planned", planner=get_planner("random"),
                         generator=g, hooks=hooks), g


def reward_rows(n, seed):
    net, proc = build(V, L)
    toy = net.mix
    out, rows = [], []

    def row(method, tokens, row_evals, nfe, seconds):
        r = reward_of(tokens)
        out.append({"method": method, "reward_mean": round(r.mean().item(), 4),
                    "nll_mean": round(toy.nll(tokens).mean().item(), 4),
                    "distinct": round(len(set(map(tuple, tokens.tolist()))) / len(tokens), 4),
                    "rows_per_sample": round(row_evals / n, 1), "nfe": nfe, "seconds": round(seconds, 2)})

    t0 = time.perf_counter()
    plain, _ = run(net, proc, n, seed)
    row("plain", plain.tokens, plain.row_evals, plain.nfe, time.perf_counter() - t0)
    for N in (4, 8):
        t0 = time.perf_counter()
        many, _ = run(net, proc, n * N, seed)
        r = reward_of(many.tokens).view(n, N)
        best = many.tokens.view(n, N, L)[torch.arange(n), r.argmax(-1)]
        row(f"best-of-{N}", best, many.row_evals, many.nfe, time.perf_counter() - t0)
    for M in (4, 8):
        t0 = time.perf_counter()
        value = PredictedReward(net, proc, reward_of)
        o, _ = run(net, proc, n, seed, Hooks(propose=SVDDProposer(value, M, 0.0)))
        row(f"svdd-{M}", o.tokens, o.row_evals + value.row_evals, o.nfe + value.nfe, time.perf_counter() - t0)
    for K in (4, 8):
        t0 = time.perf_counter()
        value = PredictedReward(net, proc, reward_of)
        smc = SMCProposer(value, K, SMC_ALPHA)
        o, g = run(net, proc, n * K, seed, Hooks(propose=smc))
        row(f"smc-{K}", smc.select(o.tokens), o.row_evals + value.row_evals, o.nfe + value.nfe,
            time.perf_counter() - t0)
    target = tilted(toy, reward_of(toy.support), SMC_ALPHA)
    out.append({"method": f"exact tilted target (alpha {SMC_ALPHA})",
                "reward_mean": round((target * reward_of(toy.support)).sum().item(), 4),
                "nll_mean": round((target * -torch.log(toy.p)).sum().item(), 4)})
    return out


def guidance_rows(n, seed):
    net, proc = build(V, L)
    out = []
    labels = torch.zeros(n, dtype=torch.long)
    for w in (0.0, 1.0, 2.0, 4.0):
        cfg = ClassifierFreeGuidance(net, proc, w)
        g = torch.Generator().manual_seed(seed)
        o = sample_masked(Conditioned(net, labels), proc, n, L, L, rule="planned", planner=get_planner("random"),
                          generator=g, hooks=Hooks(logits_transform=cfg))
        lo = (net.toys[1].nll(o.tokens) - net.toys[0].nll(o.tokens))  # log p_0(x) - log p_1(x)
        out.append({"w": w, "log_odds_mean": round(lo.mean().item(), 3),
                    "class0_share": round((lo > 0).double().mean().item(), 4),
                    "nll_class0": round(net.toys[0].nll(o.tokens).mean().item(), 4), "nfe": o.nfe + cfg.nfe})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="samples per row (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rewards, guidance = reward_rows(a.n, a.seed), guidance_rows(a.n, a.seed)
    if a.json:
        print(json.dumps({"toy": {"V": V, "L": L}, "n": a.n, "reward_rows": rewards, "guidance_rows": guidance}))
        return 0
    print(f"reward = fraction of token 0; toy V={V}, L={L}, {a.n} samples, one position per step\n")
    print("| method | mean reward | NLL under p (nats) | distinct | rows / sample | NFE |")
    print("|---|---|---|---|---|---|")
    for r in rewards:
        print(f"| {r['method']} | {r['reward_mean']} | {r['nll_mean']} | {r.get('distinct', '')} | "
              f"{r.get('rows_per_sample', '')} | {r.get('nfe', '')} |")
    print("\nclassifier-free guidance towards class 0 of a two-class toy\n")
    print("| w | mean log p_0/p_1 | share more likely under class 0 | NLL under p_0 | NFE |")
    print("|---|---|---|---|---|")
    for r in guidance:
        print(f"| {r['w']} | {r['log_odds_mean']} | {r['class0_share']} | {r['nll_class0']} | {r['nfe']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
