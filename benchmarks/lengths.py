"""Do generated records have the lengths of real ones? MDLM and AR trained on records, side by side.

    python benchmarks/lengths.py [--json] [--n 512] [--runs runs/lengths] [--max-steps 1000] [--threads 1]
                                 [--lines-only] [--lines-steps 400] [--infill-cost [--infill-n 4]]

KJV verses: three models trained with the same budget (the quick preset, `--records verses`, the same steps,
batch and seed): MDLM with data.padding=learn in `RUNS-mdlm`, MDLM with data.padding=skip (the default) in
`RUNS-mdlm-skip`, and AR in `RUNS-ar`; a run directory without a model is trained first with

    ddlm train --preset quick --corpus kjv --records verses --process FAMILY --out RUNS-... \
        --max-steps 1000 --quiet data.padding=PADDING train.threads=1 train.eval_every=0 train.ckpt_every=250

(about 20-25 minutes per model on a busy 2-core CPU). Each model generates `--n` samples with
`generate(max_length=context)` (they stop at <eos>), compared with the held-out verses that fit the
context (the validation split the training left out, those a 128-token row holds):

    tv           total-variation distance between the histograms of generated and held-out lengths in
                 characters, bins of BIN_WIDTH characters: 0.5 * sum over bins |p_gen - p_held|
                 (target <= 0.10; 512 against 819 draws of the held-out lengths
                 themselves give about 0.07: the noise floor)
    mean_length  mean generated length in characters (mean_held: the held-out mean)
    bpc          the bound per held-out record in bits per character (eval/records.py: the NELBO of MDLM
                 over 4 t-samples, the exact NLL of AR; <eos> scored, not counted as a character)

Lines: the same table for one-record-per-line on the test fixture tests/data/fixtures/lines.txt (48 short
lines), tiny models trained here for `--lines-steps` steps (seconds); the reference lengths and the bpc
are the file's own lines (in-sample: the file is all there is).

--infill-cost prints instead the NFE and seconds of infilling "In the beginning [MASK] earth." with span
lengths 1..32 (the marginal score and the fill-every-length score, ddlm/infill.py) against one infill of the
known length [MASK:30], on the KJV MDLMs (data.padding=skip and learn).

--json prints one object: {"data": ..., "bin_width": ..., "rows": [{"family", "padding", "tv", "tv_floor",
"mean_length", "mean_held", "no_eos", "bpc", "bpc_ci95", "bpc_given_length", "length_bpc", "n", "nfe", "seconds",
"samples"}, ...], "lines": {the same for the fixture}}
(with --lines-only, the fixture's table is the top level).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LINES = ROOT / "tests" / "data" / "fixtures" / "lines.txt"
ARMS = (("mdlm", "learn"), ("mdlm", "skip"), ("ar", "learn"))  # (family, data.padding); AR skips <pad> anyway
BIN_WIDTH = {"kjv": 8, "lines": 4}  # characters per histogram bin: 16 bins over a 128-token verse row
KJV_TRAIN = ["train.eval_every=0", "train.ckpt_every=250", "train.seed=0"]
LINES_TRAIN = ["model.max_len=80", "train.batch_size=16", "train.lr=3e-3", "train.warmup_steps=20",
               "train.eval_every=0", "train.ckpt_every=0", "train.log_every=1000000", "train.seed=0",
               "train.ema=0.98", "data.val_fraction=0.1"]


def histogram(lengths: torch.Tensor, bin_width: int, top: int) -> torch.Tensor:
    """Probabilities (ceil((top + 1) / bin_width),) float64 of lengths (N,) in bins [0, w), [w, 2w), ...;
    lengths above `top` fall in the last bin."""
    n_bins = -(-(top + 1) // bin_width)
    bins = (lengths.long().clamp(0, top) // bin_width).clamp_max(n_bins - 1)
    counts = torch.bincount(bins, minlength=n_bins).double()
    return counts / counts.sum().clamp_min(1)


def total_variation(a: torch.Tensor, b: torch.Tensor, bin_width: int, top: int) -> float:
    """Total-variation distance between the length histograms of a (N,) and b (M,): 0.5 sum |p - q|."""
    return 0.5 * float((histogram(a, bin_width, top) - histogram(b, bin_width, top)).abs().sum())


def record_rows(model, records: list[str]):
    """(data as the model was trained on it, real mask (N, L)) of `records` packed one per row (long ones
    skipped, as in training)."""
    from ddlm.data.record_data import learns_padding, record_batch
    from ddlm.data.records import encode_records, pack_flat

    tok = model.tokenizer
    flat, lengths = encode_records(tok, records)
    tokens, mask, _ = pack_flat(flat, lengths, model.cfg.model.max_len, None, tok.eos_id, tok.pad_id, "skip")
    return record_batch(tokens, mask, learns_padding(model.cfg, tok.vocab_size)), mask


def noise_floor(ref: torch.Tensor, n: int, bin_width: int, top: int, draws: int = 20, seed: int = 0) -> float:
    """Mean TV between n held-out lengths drawn at random (with replacement) and all of them: what a model
    with exactly the held-out length distribution would score with n samples."""
    g = torch.Generator().manual_seed(seed)
    tvs = [total_variation(ref[torch.randint(len(ref), (n,), generator=g)], ref, bin_width, top) for _ in range(draws)]
    return sum(tvs) / draws


def measure(model, held: list[str], data, real_mask, *, n: int, bin_width: int, seed: int = 0,
            t_samples: int = 4, batch_size: int = 64, n_show: int = 3) -> dict:
    """One row of the table: generate n records (stopping at <eos>) and compare with `held` texts."""
    from ddlm.eval.records import evaluate_records, length_nats_for
    from ddlm.sampling.stops import unended

    tok, context = model.tokenizer, model.cfg.model.max_len
    out = model.generate(n=n, max_length=context, seed=seed, batch_size=batch_size)
    gen = torch.tensor([len(t) for t in out.texts])
    ref = torch.tensor([len(t) for t in held])
    ended = ~unended(out.tokens, tok.eos_id, tok.pad_id)  # (n,) rows that ended themselves
    # a data.padding=skip model is told each record's length by its key-padding mask: pay for the length, as
    # `ddlm eval` does (None for learn and AR models, whose bound already holds it)
    m = evaluate_records(model, data, real_mask, batch_size=32, t_samples=t_samples, seed=seed,
                         length_nats=length_nats_for(model))
    return {"family": model.family.name, "padding": "-" if model.family.causal else model.cfg.data.padding,
            "tv": round(total_variation(gen, ref, bin_width, context), 4),
            "tv_floor": round(noise_floor(ref, n, bin_width, context, seed=seed), 4),
            "mean_length": round(float(gen.double().mean()), 2), "mean_held": round(float(ref.double().mean()), 2),
            "no_eos": round(1.0 - float(ended.double().mean()), 4),
            "bpc": round(m["bpc"], 4), "bpc_ci95": round(m["bpc_ci95"], 4),
            "bpc_given_length": round(m["bpc"] - m["length_bpc"], 4), "length_bpc": round(m["length_bpc"], 4),
            "n": n, "n_held": len(held), "nfe": out.nfe, "seconds": round(out.seconds, 2),
            "samples": out.texts[:n_show]}


def _fit(cfg, out):
    """Train cfg into `out`, the trainer's lines on stderr (stdout holds the table or the JSON)."""
    from ddlm.train.loop import Trainer

    return Trainer(cfg, out, overwrite=True, progress=False,
                   log=lambda *a, **k: print(*a, **dict(k, file=sys.stderr))).run()


def kjv_model(family: str, runs: str, max_steps: int, padding: str = "learn"):
    """The KJV-verses model of `family` in RUNS-FAMILY (RUNS-FAMILY-skip for data.padding=skip), trained first
    when the directory has none."""
    import ddlm
    from ddlm.families import configure

    out = Path(f"{runs}-{family}" + ("-skip" if padding == "skip" else ""))
    if not (out / "model" / "config.json").is_file():
        print(f"training {family} (data.padding={padding}) on KJV verses into {out} ({max_steps} steps)",
              file=sys.stderr)
        ov = [f"process.name={family}", "data.source=kjv", "data.records=verses", f"train.max_steps={max_steps}",
              f"data.padding={padding}", "train.threads=1"] + KJV_TRAIN
        cfg = configure(ddlm.apply_overrides(ddlm.load_preset("quick"), ov), ov)
        _fit(cfg, out)
    return ddlm.SequenceModel.from_pretrained(out)


def kjv_table(args) -> dict:
    from ddlm.data.record_data import prepare_record_data

    rows = []
    for family, padding in ARMS:
        model = kjv_model(family, args.runs, args.max_steps, padding)
        _, _, (tokens, mask), _ = prepare_record_data(model.cfg, model.tokenizer, train=False)
        held = [model.decode(r[m]) for r, m in zip(tokens, mask)]  # the held-out verses that fit a row
        data, real = record_rows(model, held)
        rows.append(measure(model, held, data, real, n=args.n, bin_width=BIN_WIDTH["kjv"], seed=args.seed))
    return {"data": "kjv verses (held out)", "bin_width": BIN_WIDTH["kjv"], "rows": rows}


def lines_table(args) -> dict:
    import ddlm
    from ddlm.data.records import load_records
    from ddlm.families import configure

    lines = load_records(str(LINES), "lines")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, padding in ARMS:
            ov = [f"process.name={family}", f"data.source={LINES}", "data.records=lines", f"data.padding={padding}",
                  f"train.max_steps={args.lines_steps}", "train.threads=1"] + LINES_TRAIN
            cfg = configure(ddlm.apply_overrides(ddlm.load_preset("tiny"), ov), ov)
            model = _fit(cfg, Path(tmp) / f"{family}-{padding}")
            data, real = record_rows(model, lines)
            rows.append(measure(model, lines, data, real, n=args.n, bin_width=BIN_WIDTH["lines"], seed=args.seed))
    return {"data": f"{LINES.relative_to(ROOT)} (in-sample)", "bin_width": BIN_WIDTH["lines"], "rows": rows}


INFILL = ("In the beginning [MASK] earth.", "In the beginning [MASK:30] earth.")  # the true span: 30 characters


def infill_cost(args) -> dict:
    """NFE and wall time of infilling a span of unknown length (1..32, by the marginal score and by filling
    every length) against one fixed-length infill, on the KJV MDLMs (skip and learn), n samples in one batch."""
    import time

    from ddlm.infill import generate_infill

    rows = []
    for padding in ("skip", "learn"):  # a skip model's span lengths also pay -log p(n) (ddlm/infill.py)
        model = kjv_model("mdlm", args.runs, args.max_steps, padding)
        for name, template, score in [("fixed [MASK:30]", INFILL[1], None),
                                      ("marginal 1:32", INFILL[0], "marginal"), ("fill 1:32", INFILL[0], "fill")]:
            start = time.perf_counter()
            out = generate_infill(model, template, "1:32", n=args.infill_n, seed=args.seed, score=score)
            rows.append({"padding": padding, "method": name, "nfe": out.nfe,
                         "seconds": round(time.perf_counter() - start, 2),
                         "span_lengths": None if out.span_lengths is None else out.span_lengths.tolist(),
                         "samples": out.texts})
    return {"template": INFILL[0], "n": args.infill_n, "rows": rows}


def print_table(table: dict) -> None:
    print(f"\n{table['data']}: length histograms in bins of {table['bin_width']} characters")
    print(f"{'family':8} {'padding':8} {'TV':>6} {'floor':>6} {'mean gen':>9} {'mean held':>10} {'bpc':>14} "
          f"{'n':>5} {'NFE':>7} {'s':>7}")
    for r in table["rows"]:
        bpc = f"{r['bpc']:.3f} ± {r['bpc_ci95']:.3f}"
        print(f"{r['family']:8} {r['padding']:8} {r['tv']:6.3f} {r['tv_floor']:6.3f} {r['mean_length']:9.1f} "
              f"{r['mean_held']:10.1f} {bpc:>14} {r['n']:5d} {r['nfe']:7d} {r['seconds']:7.1f}")
    for r in table["rows"]:
        for s in r["samples"]:
            print(f"  {r['family']} ({r['padding']}): {s!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n", type=int, default=512, help="samples per family (default 512)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "lengths"), help="KJV run directories' prefix "
                   "(RUNS-mdlm, RUNS-ar; default runs/lengths)")
    p.add_argument("--max-steps", type=int, default=1000, help="training steps of a KJV model trained here")
    p.add_argument("--lines-only", action="store_true", help="only the lines fixture's table (seconds)")
    p.add_argument("--lines-steps", type=int, default=400, help="training steps of the fixture's tiny models")
    p.add_argument("--infill-cost", action="store_true", help="only the cost of unknown-length infilling on the "
                   "KJV MDLM (NFE, seconds) against one fixed-length infill")
    p.add_argument("--infill-n", type=int, default=4, help="samples of --infill-cost (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.infill_cost:
        cost = infill_cost(args)
        if args.json:
            print(json.dumps(cost))
            return 0
        print(f"infilling {cost['template']!r}, {cost['n']} samples:")
        for r in cost["rows"]:
            print(f"  {r['padding']:5} {r['method']:16} NFE {r['nfe']:5d}  {r['seconds']:7.1f} s  "
                  f"span lengths {r['span_lengths']}")
            for t in r["samples"]:
                print(f"      {t!r}")
        return 0
    lines = lines_table(args)
    result = lines if args.lines_only else dict(kjv_table(args), lines=lines)
    if args.json:
        print(json.dumps(result))
        return 0
    if not args.lines_only:
        print_table(result)
    print_table(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
