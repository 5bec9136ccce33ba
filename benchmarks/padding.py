"""Which treatment of <pad> trains the better MDLM on records: data.padding=learn against data.padding=skip.

    python benchmarks/padding.py [--json] [--n 128] [--runs runs/padding] [--max-steps 1000] [--threads 1]

Two MDLMs of the quick preset on KJV verses with the same budget and seed, differing only in data.padding;
a run directory without a model (RUNS-learn, RUNS-skip) is trained first with

    ddlm train --preset quick --corpus kjv --records verses --out RUNS-MODE --max-steps 1000 --quiet \
        data.padding=MODE train.threads=1 train.eval_every=0 train.ckpt_every=500

(about 20 minutes each on a busy 2-core CPU). For each, on the held-out verses that fit a 128-token row
(lengths.py's measurement, same bins and definitions):

    tv           total-variation distance between generated and held-out length histograms (8-character bins)
                 of `--n` samples from generate(max_length=128) (cut at the first <eos>)
    mean_length  mean generated length in characters (mean_held: held-out)
    bpc          bound per held-out record in bits per character; for skip it includes the length's cost
                 under the training lengths (the model is told the length by its key-padding mask), and
                 `bpc_given_length` is the bound without it
    tv_floor     the TV that `--n` lengths drawn from the held-out verses themselves score (sampling noise)
    no_eos       fraction of samples with no <eos> (nor <pad>) in the window

--json prints {"data", "bin_width", "rows": [{"padding", "tv", "mean_length", "mean_held", "bpc", ...}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("learn", "skip")
TRAIN = ["train.eval_every=0", "train.ckpt_every=500", "train.seed=0", "train.threads=1"]


def padding_model(mode: str, runs: str, max_steps: int):
    """The KJV-verses MDLM with data.padding=MODE in RUNS-MODE, trained first when the directory has none."""
    import ddlm

    out = Path(f"{runs}-{mode}")
    if not (out / "model" / "config.json").is_file():
        print(f"training mdlm (data.padding={mode}) on KJV verses into {out} ({max_steps} steps)", file=sys.stderr)
        ov = ["data.source=kjv", "data.records=verses", f"data.padding={mode}", f"train.max_steps={max_steps}",
              *TRAIN]
        ddlm.fit(ddlm.apply_overrides(ddlm.load_preset("quick"), ov), out, overwrite=True, progress=False)
    return ddlm.SequenceModel.from_pretrained(out)


def noise_floor(ref: torch.Tensor, n: int, bin_width: int, top: int, draws: int = 20, seed: int = 0) -> float:
    """Mean TV between n held-out lengths drawn at random (with replacement) and all of them: what a model
    with exactly the held-out length distribution would score with n samples."""
    from lengths import total_variation

    g = torch.Generator().manual_seed(seed)
    tvs = [total_variation(ref[torch.randint(len(ref), (n,), generator=g)], ref, bin_width, top) for _ in range(draws)]
    return sum(tvs) / draws


def measure_mode(mode: str, args) -> dict:
    """One row: n samples of generate(max_length=context) against the held-out verses, and the bound."""
    from lengths import BIN_WIDTH, record_rows, total_variation

    from ddlm.data.record_data import prepare_record_data
    from ddlm.eval.records import evaluate_records, length_nats_for

    model = padding_model(mode, args.runs, args.max_steps)
    tok, context, width = model.tokenizer, model.cfg.model.max_len, BIN_WIDTH["kjv"]
    _, _, (tokens, mask), _ = prepare_record_data(model.cfg, tok, train=False)
    held = [model.decode(r[m]) for r, m in zip(tokens, mask)]  # the held-out verses that fit a row
    out = model.generate(n=args.n, max_length=context, seed=args.seed, batch_size=64)
    gen = torch.tensor([len(t) for t in out.texts])
    ref = torch.tensor([len(t) for t in held])
    ended = ((out.tokens == tok.eos_id) | (out.tokens == tok.pad_id)).any(-1)  # (n,) rows that ended themselves
    data, real = record_rows(model, held)
    prior = length_nats_for(model)
    m = evaluate_records(model, data, real, t_samples=4, seed=args.seed, length_nats=prior)
    return {"padding": mode, "tv": round(total_variation(gen, ref, width, context), 4),
            "tv_floor": round(noise_floor(ref, args.n, width, context, seed=args.seed), 4),
            "mean_length": round(float(gen.double().mean()), 2), "mean_held": round(float(ref.double().mean()), 2),
            "no_eos": round(1.0 - float(ended.double().mean()), 4), "bpc": round(m["bpc"], 4),
            "bpc_ci95": round(m["bpc_ci95"], 4), "bpc_given_length": round(m["bpc"] - m["length_bpc"], 4),
            "length_bpc": round(m["length_bpc"], 4), "n": args.n, "n_held": len(held), "nfe": out.nfe,
            "seconds": round(out.seconds, 2), "samples": out.texts[:3]}


def table(args) -> dict:
    from lengths import BIN_WIDTH

    return {"data": "kjv verses (held out, those a 128-token row holds)", "bin_width": BIN_WIDTH["kjv"],
            "rows": [measure_mode(mode, args) for mode in args.modes.split(",")]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n", type=int, default=128, help="samples per model (default 128: ~5 minutes on a busy CPU)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "padding"), help="run directories' prefix (RUNS-learn, "
                   "RUNS-skip; default runs/padding)")
    p.add_argument("--max-steps", type=int, default=1000, help="training steps of a model trained here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help="data.padding values to measure (default learn,skip)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = table(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['data']}: length histograms in bins of {result['bin_width']} characters")
    print(f"{'padding':8} {'TV':>6} {'floor':>6} {'mean gen':>9} {'mean held':>10} {'no <eos>':>9} {'bpc':>16} "
          f"{'given length':>13}")
    for r in result["rows"]:
        bpc = f"{r['bpc']:.3f} ± {r['bpc_ci95']:.3f}"
        print(f"{r['padding']:8} {r['tv']:6.3f} {r['tv_floor']:6.3f} {r['mean_length']:9.1f} {r['mean_held']:10.1f} "
              f"{r['no_eos']:9.3f} {bpc:>16} {r['bpc_given_length']:13.3f}")
    for r in result["rows"]:
        for s in r["samples"]:
            print(f"  {r['padding']}: {s!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
