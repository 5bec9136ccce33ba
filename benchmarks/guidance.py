"""Steering a molecule model towards drug-likeness (QED): unguided, AR, best-of-N, SVDD and SMC side by side.

Every row samples --n molecules from the same seed; the cost is the network rows evaluated per molecule (row_evals /
n, which counts the value calls of SVDD and SMC and the N draws of best-of-N) and the seconds per molecule. Columns:
validity, uniqueness, novelty against the MOSES training set, internal diversity (IntDiv), median and
90th-percentile QED of the valid molecules, the fraction with QED > 0.9, NFE. `train_qed_p75` is the 75th-percentile
QED of a seeded random sample of the training set, the bar the issue sets for guided medians. Classifier-free
guidance needs a labelled model: with --cond-model DIR (a model trained on a moses -qed4 kind, e.g.
data.records=smiles-5k-qed4) the rows cfg-1 and cfg-3 sample it towards its top QED bin (qed-q4) at guidance scales
1 and 3. The `drakes` row samples a model fine-tuned by `ddlm finetune DIR --reward qed` (--drakes DIR) with the
same seed and steps; its molecules are decoded as `ddlm eval` decodes them (SMILES, or SELFIES turned into SMILES).
The `grpo` row does the same for a model fine-tuned by `ddlm finetune DIR --method grpo --reward qed` (--grpo DIR),
and `grpo+svdd` / `grpo+smc` decode that model with SVDD (M = --m) / SMC (K = --k): fine-tuning and reward-guided
decoding compose; --grpo-best-of N adds `grpo+svdd-best-of-N`, the best QED of N such SVDD draws per molecule (N
times the cost). Decoding order: `planned-top-margin` and `grpo+planned-top-margin` decode the base and the --grpo
model with the same steps in an adaptive order (--order, default top_margin: each step commits the positions whose
top-two probabilities are furthest apart, Kim et al. 2025; --order-gumbel noise on those scores, default 0.5), no
reward calls: the unguided cost.

Naturalness, `nll_base` (every row): the pretrained --model's bound on the row's valid molecules, in nats per
molecule: each valid molecule is written as the base model's training records were (RDKit's canonical SMILES,
as MOSES stores them, then SELFIES for a data.records=selfies-* model), laid out as a record row
`r_1..r_n <eos> <pad>...` with the model's data.padding, and scored by `eval.records.evaluate_records` (the
NELBO, 4 t-samples, the run's seed; a padding=skip model pays for its length as `ddlm eval` charges it). The
bound of one string bounds -log p(molecule) too. `nll_left_out` counts the valid molecules left out: longer
than the context, or with a token outside the base tokenizer's vocabulary. A steered row whose nll_base is far
above the unguided row's has left the model's distribution.

Reward against cost, --curve: the decoding methods alone, best-of-N (N = 1, 2, 4, 8), SVDD (M = 2, 4, 8) and
SMC (K = 2, 4, 8, --smc-alpha) on the same --n molecules and seed, one generate call each (runs whose settings
equal a row's above are reused, not sampled again); a second table (method, setting, nfe, rows_per_molecule,
validity, qed_median, qed_p90) and, with --json, a `curve` list in the JSON object. --plot PNG (with --curve;
needs matplotlib) draws QED median against rows per molecule for the three methods.

    python benchmarks/guidance.py --model DIR [--ar DIR] [--cond-model DIR] [--drakes DIR] [--grpo DIR
        [--grpo-best-of N]] [--n 200]
        [--steps 64] [--m 4] [--k 4] [--order top_margin|top_prob|entropy|none] [--order-gumbel 0.5]
        [--curve [--plot PNG]] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

NLL_T_SAMPLES = 4  # t-samples of the naturalness bound (each a fresh stratified t and mask per row)
BEST_OF = (1, 2, 4, 8)  # the --curve settings: best-of-N draws, SVDD candidates M, SMC particles K
SVDD_M = (2, 4, 8)
SMC_K = (2, 4, 8)


def qed_stats(texts):
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.tasks.molecules.metrics import to_mol

    qed, _ = resolve_reward("qed")
    valid = [t for t in texts if to_mol(t) is not None]
    q = np.asarray(qed(valid)) if valid else np.zeros(0)
    return q


def naturalness(model, smiles, *, t_samples: int = NLL_T_SAMPLES, seed: int = 0, batch_size: int = 32) -> dict:
    """The base `model`'s NELBO on the valid molecules of `smiles` (SMILES strings), re-encoded as its training
    records were: canonical SMILES, then SELFIES for a selfies-* model, one record row each.

    Returns nll_base (mean nats per scored molecule, None when none is scored), n_scored, n_invalid (not
    parsed by RDKit), n_long (longer than the context with <eos>), n_unknown (a token outside the vocabulary,
    or a SMILES the SELFIES encoder refuses); the last two are the valid molecules left out."""
    from ddlm.data.record_data import learns_padding, record_batch
    from ddlm.data.records import pack_records
    from ddlm.errors import UserError
    from ddlm.eval.records import evaluate_records, length_nats_for
    from ddlm.tasks.molecules.data import _selfies_of, is_selfies
    from ddlm.tasks.molecules.metrics import canonical

    cfg, tok = model.cfg, model.tokenizer
    valid = [c for c in map(canonical, smiles) if c is not None]  # MOSES records are canonical SMILES
    strings = [_selfies_of(c) for c in valid] if is_selfies(cfg.data) else valid  # "" where SELFIES refuses
    ids = []
    for s in strings:
        try:
            ids.append(tok.encode(s) if s else None)
        except UserError:  # a token the base model never saw: it has no row to score
            ids.append(None)
    known = [x for x in ids if x]
    fits = [x for x in known if len(x) < cfg.model.max_len]  # the record and its <eos> fit the context
    out = {"nll_base": None, "n_scored": len(fits), "n_invalid": len(smiles) - len(valid),
           "n_long": len(known) - len(fits), "n_unknown": len(ids) - len(known)}
    if not fits:
        return out
    # r_1..r_n <eos> <pad>...: no <bos> for any family (data/record_data.py), as in training
    tokens, mask, _ = pack_records(fits, cfg.model.max_len, None, tok.eos_id, tok.pad_id, "skip")  # (N, L) each
    data = record_batch(tokens, mask, learns_padding(cfg, tok.vocab_size))
    m = evaluate_records(model, data, mask, batch_size=batch_size, t_samples=t_samples, seed=seed,
                         length_nats=length_nats_for(model))
    out["nll_base"] = m["nats_per_record"]
    return out


def row(method, texts, nfe, row_evals, seconds, train_set, base, seed=0):
    from ddlm.tasks.molecules.metrics import molecule_metrics

    m = molecule_metrics(texts, train_set, with_properties=False)
    q = qed_stats(texts)
    nat = naturalness(base, texts, seed=seed)
    n = len(texts)
    return {"method": method, "validity": round(m["validity"], 4),
            "uniqueness": None if m["uniqueness"] is None else round(m["uniqueness"], 4),
            "novelty": None if m["novelty"] is None else round(m["novelty"], 4),
            # internal diversity (1 - mean Tanimoto similarity of the valid molecules' pairs): a reward that
            # raises QED by writing one kind of molecule shows here before uniqueness falls
            "int_div": None if m["int_div"] is None else round(m["int_div"], 4),
            "qed_median": round(float(np.median(q)), 4) if len(q) else None,
            "qed_p90": round(float(np.percentile(q, 90)), 4) if len(q) else None,
            "qed_gt_0.9": round(float((q > 0.9).mean()), 4) if len(q) else None,
            "nll_base": None if nat["nll_base"] is None else round(nat["nll_base"], 2),
            "nll_scored": nat["n_scored"], "nll_left_out": nat["n_long"] + nat["n_unknown"],
            "nfe": nfe, "rows_per_molecule": round(row_evals / n, 1), "s_per_molecule": round(seconds / n, 4)}


class Draws:
    """model.generate with the benchmark's options, each distinct call sampled once: the same call (model,
    settings, seed) gives the same rows, so the --curve points that equal a row above reuse its draw."""

    def __init__(self, kw: dict):
        self.kw, self._done = kw, {}

    def __call__(self, model, **extra):
        """(output, seconds) of model.generate(**kw, **extra)."""
        key = (id(model), tuple(sorted((k, repr(v)) for k, v in dict(self.kw, **extra).items())))
        if key not in self._done:
            t0 = time.perf_counter()
            out = model.generate(**dict(self.kw, **extra))
            self._done[key] = (out, time.perf_counter() - t0)
        return self._done[key]


def best_of(model, draw, n: int, N: int, **extra):
    """(texts (n,), output, seconds): N draws per molecule (one generate call of n * N rows with the options
    `extra`, plain when none; molecule i owns rows i*N..i*N+N-1), the one with the highest QED kept (the first of
    equals; invalid ones score 0)."""
    from ddlm.guidance.rewards import resolve_reward
    from ddlm.guidance.steer import texts_of

    out, seconds = draw(model, n=n * N, **extra)
    qed, _ = resolve_reward("qed")
    texts = texts_of(model, out.tokens)
    r = np.asarray(qed(texts)).reshape(n, N)  # (n, N)
    return [texts[i * N + int(j)] for i, j in enumerate(r.argmax(1))], out, seconds


def curve_point(method, setting, texts, out) -> dict:
    from ddlm.tasks.molecules.metrics import to_mol

    q = qed_stats(texts)
    return {"method": method, "setting": setting, "nfe": out.nfe,
            "rows_per_molecule": round(out.row_evals / len(texts), 1),
            "validity": round(sum(to_mol(t) is not None for t in texts) / len(texts), 4),
            "qed_median": round(float(np.median(q)), 4) if len(q) else None,
            "qed_p90": round(float(np.percentile(q, 90)), 4) if len(q) else None}


def curve(model, draw, n: int, smc_alpha: float, best_of_n=BEST_OF, svdd_m=SVDD_M, smc_k=SMC_K) -> list[dict]:
    """QED of the decoding methods against their cost on `n` molecules: best-of-N, SVDD with M candidates and
    SMC with K particles (alpha smc_alpha), one point per setting, in that order."""
    from ddlm.guidance.steer import texts_of

    points = []
    for N in best_of_n:
        texts, out, _ = best_of(model, draw, n, N)
        points.append(curve_point("best-of-N", N, texts, out))
    for M in svdd_m:
        out, _ = draw(model, reward="qed", svdd_candidates=M)
        points.append(curve_point("svdd-M", M, texts_of(model, out.tokens), out))
    for K in smc_k:
        out, _ = draw(model, reward="qed", smc_particles=K, smc_alpha=smc_alpha)
        points.append(curve_point("smc-K", K, texts_of(model, out.tokens), out))
    return points


def plot_curve(points: list[dict], path: Path, title: str) -> str:
    """QED median against rows per molecule, a line per method; a message for stderr."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (`pip install matplotlib`); the table above holds the same numbers"
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(p["method"] for p in points):
        pts = [p for p in points if p["method"] == method and p["qed_median"] is not None]
        if pts:
            ax.plot([p["rows_per_molecule"] for p in pts], [p["qed_median"] for p in pts], marker="o", ms=3,
                    label=method)
            for p in pts:
                ax.annotate(str(p["setting"]), (p["rows_per_molecule"], p["qed_median"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log", base=2)
    ax.set(title=title, xlabel="network rows per molecule", ylabel="QED median (valid molecules)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"


def print_table(rows: list[dict], cols: list[str]) -> None:
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r_ in rows:
        print("| " + " | ".join(str(r_[c]) for c in cols) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="an mdlm molecules run or model directory")
    p.add_argument("--ar", help="an ar molecules model for the AR row")
    p.add_argument("--drakes", help="a model fine-tuned by `ddlm finetune` for the drakes row")
    p.add_argument("--grpo", help="a model fine-tuned by `ddlm finetune --method grpo` for the grpo and grpo+svdd "
                   "rows")
    p.add_argument("--grpo-best-of", type=int, metavar="N", help="with --grpo: also the best of N SVDD draws of "
                   "the fine-tuned model per molecule")
    p.add_argument("--order", default="top_margin", choices=("top_prob", "top_margin", "entropy", "none"),
                   help="the adaptive decoding order of the planned-ORDER rows (the base model, and the --grpo model, "
                   "decoded in that order at the same steps; 'none': no such rows; default top_margin)")
    p.add_argument("--order-gumbel", type=float, default=0.5, help="Gumbel noise on the order's scores (0 = "
                   "deterministic; default 0.5)")
    p.add_argument("--cond-model", help="a model trained on a moses -qed4 kind for the cfg-1 and cfg-3 rows")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--length", type=int, help="tokens per sample (default: the context)")
    p.add_argument("--m", type=int, default=4, help="SVDD candidates per step")
    p.add_argument("--k", type=int, default=4, help="SMC particles per molecule")
    # SMC's target is p(x) exp(QED / alpha): QED differences are hundredths, so alpha must be small to tilt.
    # Measured on the 3000-step rotary+learned base (K = 4, 100 molecules, 60 steps, seed 0): median QED 0.742,
    # 0.810, 0.830, 0.838 at alpha 0.1, 0.03, 0.01, 0.003 (uniqueness 1.0 at each)
    p.add_argument("--smc-alpha", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve", action="store_true", help="also sweep best-of-N (N = 1, 2, 4, 8), SVDD (M = 2, 4, 8) "
                   "and SMC (K = 2, 4, 8): QED against cost")
    p.add_argument("--plot", metavar="PNG", help="with --curve: QED median against rows per molecule")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.grpo_best_of is not None and (not a.grpo or a.grpo_best_of < 2):
        p.error("--grpo-best-of N needs --grpo DIR and N >= 2")
    if a.plot and not a.curve:
        p.error("--plot draws the --curve sweep; add --curve")
    if not a.order_gumbel >= 0:
        p.error(f"--order-gumbel must be >= 0 (0 = deterministic), got {a.order_gumbel}")
    torch.set_num_threads(1)
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
    draw = Draws(kw)
    rows = []

    def add(method, texts, o, seconds, at=None):
        r_ = row(method, texts, o.nfe, o.row_evals, seconds, train_set, model, a.seed)
        rows.append(r_) if at is None else rows.insert(at, r_)

    out, s = draw(model)
    add("unguided", texts_of(model, out.tokens), out, s)
    planned, ordered = None, f"planned-{a.order.replace('_', '-')}"  # the rows' name
    if a.order != "none":  # the same network calls, the positions decoded most confident first (Kim et al.)
        planned = dict(sampler="planned", planner=a.order, planner_options={"gumbel": a.order_gumbel})
        o, s = draw(model, **planned)
        add(ordered, texts_of(model, o.tokens), o, s)
    if a.ar:
        ar = SequenceModel.from_pretrained(a.ar)
        t0 = time.perf_counter()
        o = ar.generate(n=a.n, length=a.length, seed=a.seed)
        add("ar", texts_of(ar, o.tokens), o, time.perf_counter() - t0)
    out, s = draw(model, reward="qed", svdd_candidates=a.m)
    add("svdd", texts_of(model, out.tokens), out, s)
    N = max(2, round(out.row_evals / a.n / rows[0]["rows_per_molecule"]))  # best-of-N at about SVDD's cost
    texts, many, s = best_of(model, draw, a.n, N)
    add(f"best-of-{N}", texts, many, s, at=1 + bool(a.ar))
    out, s = draw(model, reward="qed", smc_particles=a.k, smc_alpha=a.smc_alpha)
    add("smc", texts_of(model, out.tokens), out, s)
    if cm is not None:  # classifier-free guidance towards the top QED bin of the labelled model
        names = cm.cfg.model.class_names
        top = names[-1] if names else cm.cfg.model.n_classes - 1  # qed-q4 sorts last
        for w in (1, 3):
            o, s = draw(cm, cond=top, guidance=float(w))
            add(f"cfg-{w}", texts_of(cm, o.tokens), o, s)
    if a.drakes:  # DRAKES: the fine-tuned model sampled plainly
        from ddlm.tasks.molecules.score import sampled_smiles

        tuned = SequenceModel.from_pretrained(a.drakes)
        o, s = draw(tuned)
        add("drakes", sampled_smiles(tuned, o.tokens), o, s)
    if a.grpo:  # GRPO: the fine-tuned model sampled plainly, then with SVDD
        tuned = SequenceModel.from_pretrained(a.grpo)
        o, s = draw(tuned)
        add("grpo", texts_of(tuned, o.tokens), o, s)
        if planned is not None:
            o, s = draw(tuned, **planned)
            add(f"grpo+{ordered}", texts_of(tuned, o.tokens), o, s)
        o, s = draw(tuned, reward="qed", svdd_candidates=a.m)
        add("grpo+svdd", texts_of(tuned, o.tokens), o, s)
        o, s = draw(tuned, reward="qed", smc_particles=a.k, smc_alpha=a.smc_alpha)
        add("grpo+smc", texts_of(tuned, o.tokens), o, s)
        if a.grpo_best_of:
            texts, o, s = best_of(tuned, draw, a.n, a.grpo_best_of, reward="qed", svdd_candidates=a.m)
            add(f"grpo+svdd-best-of-{a.grpo_best_of}", texts, o, s)
    result = {"train_qed_p75": round(float(np.percentile(train_qed, 75)), 4), "n": a.n, "steps": a.steps,
              "svdd_candidates": a.m, "smc_particles": a.k, "smc_alpha": a.smc_alpha,
              "nll_t_samples": NLL_T_SAMPLES, "rows": rows}
    if a.curve:
        result["curve"] = curve(model, draw, a.n, a.smc_alpha)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"QED steering, {a.n} molecules per row, {a.steps} steps, seed {a.seed}; training set QED p75 "
              f"{result['train_qed_p75']}; nll_base: {a.model}'s NELBO in nats per valid molecule "
              f"({NLL_T_SAMPLES} t-samples)\n")
        print_table(rows, ["method", "validity", "uniqueness", "novelty", "int_div", "qed_median", "qed_p90",
                           "qed_gt_0.9", "nll_base", "nll_left_out", "nfe", "rows_per_molecule", "s_per_molecule"])
        if a.curve:
            print(f"\nQED against cost, {a.n} molecules per point, SMC alpha {a.smc_alpha}\n")
            print_table(result["curve"], ["method", "setting", "nfe", "rows_per_molecule", "validity",
                                          "qed_median", "qed_p90"])
    if a.plot:
        print(plot_curve(result["curve"], Path(a.plot), f"QED steering, {a.n} molecules, {a.steps} steps"),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
