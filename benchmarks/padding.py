"""Which treatment of <pad> trains the better MDLM on records: data.padding=learn against data.padding=skip.

    python benchmarks/padding.py [--json] [--n 512] [--runs runs/padding] [--max-steps 1000] [--threads 1]

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
    no_eos       fraction of samples with no <eos> in the window

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


def table(args) -> dict:
    from lengths import BIN_WIDTH, measure, record_rows

    from ddlm.data.record_data import prepare_record_data
    from ddlm.eval.records import evaluate_records, length_nats_for

    rows = []
    for mode in MODES:
        model = padding_model(mode, args.runs, args.max_steps)
        _, _, (tokens, mask), _ = prepare_record_data(model.cfg, model.tokenizer, train=False)
        held = [model.decode(r[m]) for r, m in zip(tokens, mask)]  # the held-out verses that fit a row
        data, real = record_rows(model, held)
        row = measure(model, held, data, real, n=args.n, bin_width=BIN_WIDTH["kjv"], seed=args.seed)
        prior = length_nats_for(model)
        if prior is not None:  # skip: measure's bound is given the length; pay for the length too
            m = evaluate_records(model, data, real, t_samples=4, seed=args.seed, length_nats=prior)
            row.update(bpc_given_length=row["bpc"], bpc=round(m["bpc"], 4), length_bpc=round(m["length_bpc"], 4))
        out = model.generate(n=args.n, max_length=model.cfg.model.max_len, seed=args.seed, decode=False)
        row["no_eos"] = round(float((out.tokens == model.tokenizer.eos_id).any(-1).logical_not().double().mean()), 4)
        rows.append(dict(padding=mode, **row))
    return {"data": "kjv verses (held out, those a 128-token row holds)", "bin_width": BIN_WIDTH["kjv"],
            "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--n", type=int, default=512, help="samples per model (default 512)")
    p.add_argument("--runs", default=str(ROOT / "runs" / "padding"), help="run directories' prefix (RUNS-learn, "
                   "RUNS-skip; default runs/padding)")
    p.add_argument("--max-steps", type=int, default=1000, help="training steps of a model trained here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = table(args)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['data']}: length histograms in bins of {result['bin_width']} characters")
    print(f"{'padding':8} {'TV':>6} {'mean gen':>9} {'mean held':>10} {'no <eos>':>9} {'bpc':>16}")
    for r in result["rows"]:
        bpc = f"{r['bpc']:.3f} ± {r['bpc_ci95']:.3f}"
        print(f"{r['padding']:8} {r['tv']:6.3f} {r['mean_length']:9.1f} {r['mean_held']:10.1f} {r['no_eos']:9.3f} "
              f"{bpc:>16}" + (f"  ({r['bpc_given_length']:.3f} given the length)" if "bpc_given_length" in r else ""))
    for r in result["rows"]:
        for s in r["samples"]:
            print(f"  {r['padding']}: {s!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
