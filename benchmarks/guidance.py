"""Steering a molecule model towards drug-likeness (QED): unguided, AR, best-of-N, SVDD and SMC side by side.

Every row samples --n molecules from the same seed; the cost is the network rows evaluated per molecule
(row_evals / n, which counts the value calls of SVDD and SMC and the N draws of best-of-N) and the seconds per
molecule. Columns: validity, uniqueness, novelty against the MOSES training set, median and 90th-percentile
QED of the valid molecules, the fraction with QED > 0.9, NFE. `train_qed_p75` is the 75th-percentile QED of a
seeded random sample of the training set, the bar the issue sets for guided medians. Classifier-free guidance
needs a labelled model: with --cond-model DIR (a model trained on a moses -qed4 kind, e.g. data.records=
smiles-5k-qed4) the rows cfg-1 and cfg-3 sample it towards its top QED bin (qed-q4) at guidance scales 1 and 3.
The `drakes` row samples a model fine-tuned by `ddlm finetune DIR --reward qed` (--drakes DIR) with the same
seed and steps; its molecules are decoded as `ddlm eval` decodes them (SMILES, or SELFIES turned into SMILES).

    python benchmarks/guidance.py --model DIR [--ar DIR] [--cond-model DIR] [--drakes DIR] [--n 200] [--steps 64]
        [--m 4] [--k 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def qed_stats(texts):
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.tasks.molecules.metrics import to_mol

    qed, _ = resolve_reward("qed")
    valid = [t for t in texts if to_mol(t) is not None]
    q = np.asarray(qed(valid)) if valid else np.zeros(0)
    return q


def row(method, texts, nfe, row_evals, seconds, train_set):
    from ddlm.tasks.molecules.metrics import molecule_metrics

    m = molecule_metrics(texts, train_set, with_properties=False)
    q = qed_stats(texts)
    n = len(texts)
    return {"method": method, "validity": round(m["validity"], 4),
            "uniqueness": None if m["uniqueness"] is None else round(m["uniqueness"], 4),
            "novelty": None if m["novelty"] is None else round(m["novelty"], 4),
            "qed_median": round(float(np.median(q)), 4) if len(q) else None,
            "qed_p90": round(float(np.percentile(q, 90)), 4) if len(q) else None,
            "qed_gt_0.9": round(float((q > 0.9).mean()), 4) if len(q) else None,
            "nfe": nfe, "rows_per_molecule": round(row_evals / n, 1), "s_per_molecule": round(seconds / n, 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an mdlm molecules run or model directory")
    p.add_argument("--ar", help="an ar molecules model for the AR row")
    p.add_argument("--drakes", help="a model fine-tuned by `ddlm finetune` for the drakes row")
    p.add_argument("--cond-model", help="a model trained on a moses -qed4 kind for the cfg-1 and cfg-3 rows")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--length", type=int, help="tokens per sample (default: the context)")
    p.add_argument("--m", type=int, default=4, help="SVDD candidates per step")
    p.add_argument("--k", type=int, default=4, help="SMC particles per molecule")
    p.add_argument("--smc-alpha", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.guidance.steer import texts_of
    from ddlm.pipeline import SequenceModel
    from ddlm.tasks.molecules.data import load_sample, load_smiles

    train_set = set(load_smiles("train"))
    train_qed = qed_stats(load_sample("train", 2000, seed=a.seed))
    model = SequenceModel.from_pretrained(a.model)
    cm = SequenceModel.from_pretrained(a.cond_model) if a.cond_model else None
    if cm is not None and cm.cfg.model.n_classes < 2:  # said before minutes of sampling
        p.error(f"--cond-model {a.cond_model} has no labels; train it on a moses -qed4 kind")
    kw = dict(n=a.n, steps=a.steps, length=a.length, seed=a.seed, sampler="ancestral")
    rows = []

    def timed(method, **extra):
        t0 = time.perf_counter()
        out = model.generate(**kw, **extra)
        return out, time.perf_counter() - t0

    out, s = timed("unguided")
    rows.append(row("unguided", texts_of(model, out.tokens), out.nfe, out.row_evals, s, train_set))
    if a.ar:
        ar = SequenceModel.from_pretrained(a.ar)
        t0 = time.perf_counter()
        o = ar.generate(n=a.n, length=a.length, seed=a.seed)
        rows.append(row("ar", texts_of(ar, o.tokens), o.nfe, o.row_evals, time.perf_counter() - t0, train_set))
    out, s = timed("svdd", reward="qed", svdd_candidates=a.m)
    rows.append(row("svdd", texts_of(model, out.tokens), out.nfe, out.row_evals, s, train_set))
    svdd_rows = out.row_evals / a.n
    N = max(2, round(svdd_rows / (rows[0]["rows_per_molecule"])))  # best-of-N at about SVDD's cost
    t0 = time.perf_counter()
    many = model.generate(**dict(kw, n=a.n * N))
    qed, _ = resolve_reward("qed")
    texts = texts_of(model, many.tokens)
    r = np.asarray(qed(texts)).reshape(a.n, N)
    best = [texts[i * N + int(j)] for i, j in enumerate(r.argmax(1))]
    rows.insert(1 + bool(a.ar), row(f"best-of-{N}", best, many.nfe, many.row_evals, time.perf_counter() - t0,
                                    train_set))
    out, s = timed("smc", reward="qed", smc_particles=a.k, smc_alpha=a.smc_alpha)
    rows.append(row("smc", texts_of(model, out.tokens), out.nfe, out.row_evals, s, train_set))
    if cm is not None:  # classifier-free guidance towards the top QED bin of the labelled model
        names = cm.cfg.model.class_names
        top = names[-1] if names else cm.cfg.model.n_classes - 1  # qed-q4 sorts last
        for w in (1, 3):
            t0 = time.perf_counter()
            o = cm.generate(**kw, cond=top, guidance=float(w))
            rows.append(row(f"cfg-{w}", texts_of(cm, o.tokens), o.nfe, o.row_evals, time.perf_counter() - t0,
                            train_set))
    if a.drakes:  # DRAKES: the fine-tuned model sampled plainly
        from ddlm.tasks.molecules.score import sampled_smiles

        tuned = SequenceModel.from_pretrained(a.drakes)
        t0 = time.perf_counter()
        o = tuned.generate(**kw)
        rows.append(row("drakes", sampled_smiles(tuned, o.tokens), o.nfe, o.row_evals, time.perf_counter() - t0,
                        train_set))
    result = {"train_qed_p75": round(float(np.percentile(train_qed, 75)), 4), "n": a.n, "steps": a.steps,
              "svdd_candidates": a.m, "smc_particles": a.k, "smc_alpha": a.smc_alpha, "rows": rows}
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"QED steering, {a.n} molecules per row, {a.steps} steps, seed {a.seed}; training set QED p75 "
          f"{result['train_qed_p75']}\n")
    cols = ["method", "validity", "uniqueness", "novelty", "qed_median", "qed_p90", "qed_gt_0.9", "nfe",
            "rows_per_molecule", "s_per_molecule"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r_ in rows:
        print("| " + " | ".join(str(r_[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
