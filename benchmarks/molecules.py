"""MOSES metrics of trained molecule models beside the MOSES paper's CharRNN row and a random training sample.

    python benchmarks/molecules.py [--run LABEL=DIR ...] [--n 1000] [--seed 0] [--no-fcd] [--json]

Each run (default: runs/molecules-{mdlm,ar,mdlm-char,mdlm-selfies} where they exist, trained with `ddlm train
--preset molecules [--process ar | --tokenizer char | --records selfies-100k]`) samples --n molecules with --seed and
is scored by `ddlm.tasks.molecules.score` against the same references: novelty against the 1.58M MOSES training
SMILES, FCD, SNN, Frag and Scaf against 5,000 random MOSES test molecules (seed 0). Two reference rows frame them:

    moses-train   --n random training molecules (seed 1): what a model that reproduces the training
                  distribution scores at this sample size (novelty 0 by construction; its FCD is the floor
                  FCD reaches with --n samples against a 5,000-molecule reference)
    charrnn-paper the MOSES paper's CharRNN (Polykovskiy et al. 2020, Table 2; 30,000 samples, FCD against
                  the whole test set, far more compute): an external anchor, not measured here

With --json it prints one object: {"n", "seed", "fcd_ref", "test_ref", "rows": [{"label", "family", "tokenizer",
"validity", "unique@1000", "unique@10000", "unique@10000_on", "novelty", "int_div", "fcd", "snn", "frag",
"scaf", "qed_mean", "sa_mean", "nfe" (network calls in all), "nfe_per_sample" (calls each sample went through:
nfe / batches), "seconds_per_molecule", ...}]}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

CHARRNN = {"label": "charrnn-paper", "family": "ar (LSTM)", "tokenizer": "char", "validity": 0.975,
           "unique@1000": 1.0, "unique@10000": 0.999, "unique@10000_on": 10000, "novelty": 0.842, "int_div": 0.856,
           "fcd": 0.073, "snn": 0.6015, "frag": 0.9998, "scaf": 0.9242,
           "source": "MOSES paper, Table 2 (Polykovskiy et al. 2020)"}
DEFAULT_RUNS = ("mdlm=runs/molecules-mdlm", "ar=runs/molecules-ar", "mdlm-char=runs/molecules-mdlm-char",
                "mdlm-selfies=runs/molecules-mdlm-selfies")
COLUMNS = (("validity", "valid"), ("unique@1000", "uniq@1k"), ("unique@10000", "uniq@10k"), ("novelty", "novel"),
           ("int_div", "IntDiv"), ("fcd", "FCD/Test"), ("snn", "SNN"), ("frag", "Frag"),
           ("scaf", "Scaf"), ("qed_mean", "QED"), ("sa_mean", "SA"))


def _runs(given: list[str] | None) -> list[tuple[str, Path]]:
    pairs = []
    for spec in given or DEFAULT_RUNS:
        label, _, path = spec.partition("=")
        if not path:
            sys.exit(f"molecules.py: error: --run takes LABEL=DIR, got {spec!r}")
        if (Path(path) / "model").is_dir() or (Path(path) / "config.json").is_file():
            pairs.append((label, Path(path)))
        elif given:
            sys.exit(f"molecules.py: error: {path} holds no trained model; train it with `ddlm train --preset molecules`")
    return pairs


def measure_run(label: str, path: Path, n: int, seed: int, refs, fcd: bool, batch_size: int) -> dict:
    from ddlm.pipeline import SequenceModel
    from ddlm.tasks.molecules.data import is_selfies
    from ddlm.tasks.molecules.score import sampled_smiles, score_smiles

    model = SequenceModel.from_pretrained(path, map_location="cpu")
    start = time.perf_counter()
    out = model.generate(n, seed=seed, batch_size=batch_size, decode=False, max_length=model.cfg.model.max_len)
    seconds = time.perf_counter() - start
    m = score_smiles(sampled_smiles(model, out.tokens), fcd=fcd, refs=refs)
    tokenizer = "selfies" if is_selfies(model.cfg.data) else model.tokenizer.kind
    m.update(label=label, run=str(path), family=model.family.name, tokenizer=tokenizer,
             nfe=out.nfe, nfe_per_sample=out.nfe / math.ceil(n / batch_size), seconds_per_molecule=seconds / n, steps=model.cfg.sample.steps,
             train_steps=model.cfg.train.max_steps)
    return m


def _cell(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", metavar="LABEL=DIR", help="a trained model (repeatable)")
    p.add_argument("--n", type=int, default=1000, help="molecules sampled per model (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=100, help="samples per batch (default 100)")
    p.add_argument("--no-fcd", action="store_true", help="skip FCD")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a shared machine; sampling small models is not faster with more threads

    from ddlm.tasks.molecules.data import load_sample
    from ddlm.tasks.molecules.metrics import fcd_available
    from ddlm.tasks.molecules.score import references, score_smiles

    fcd = not args.no_fcd and fcd_available()
    refs = references()
    rows = []
    for label, path in _runs(args.run):
        rows.append(measure_run(label, path, args.n, args.seed, refs, fcd, args.batch_size))
    floor = score_smiles(load_sample("train", args.n, seed=1), fcd=fcd, refs=refs)
    floor.update(label="moses-train", family="-", tokenizer="-", nfe=None, nfe_per_sample=None,
                 seconds_per_molecule=None)
    rows += [floor, CHARRNN]
    if args.json:
        print(json.dumps({"n": args.n, "seed": args.seed, "fcd_ref": len(refs[1]) if fcd else None,
                          "test_ref": len(refs[1]), "rows": rows}))
        return 0
    print(f"{args.n} samples per model (seed {args.seed}); novelty vs 1.58M MOSES training SMILES; "
          f"{'FCD, ' if fcd else ''}SNN, Frag, Scaf vs {len(refs[1])} random test molecules; charrnn-paper: "
          "30k samples, whole test set")
    head = f"{'model':14s} {'tok':6s} " + " ".join(f"{h:>8s}" for _, h in COLUMNS) + f" {'NFE':>6s} {'s/mol':>7s}"
    print(head)
    for r in rows:
        nfe = "-" if r.get("nfe_per_sample") is None else f"{r['nfe_per_sample']:.1f}"
        spm = "-" if r.get("seconds_per_molecule") is None else f"{r['seconds_per_molecule']:.3f}"
        print(f"{r['label']:14s} {r['tokenizer']:6s} " + " ".join(f"{_cell(r.get(k)):>8s}" for k, _ in COLUMNS)
              + f" {nfe:>6s} {spm:>7s}")
    short = [r["label"] for r in rows if r.get("unique@10000_on", 10000) < 10000]
    if short:
        print(f"uniq@10k of {', '.join(short)}: on fewer than 10,000 valid samples (all of them; --n 10000 for the "
              "full measure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
