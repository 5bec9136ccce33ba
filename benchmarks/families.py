"""Every model family side by side: same backbone, data (char-level KJV), steps, seed and validation blocks.

    python benchmarks/families.py [--quick] [--json] [--families mdlm,ar] [--steps N] [--threads 1]

Prints one row per family: the likelihood bound in bits per character on the same validation blocks (the
exact NLL for AR, an upper bound for the diffusion families, with a 95% interval over the t-samples), the
training wall time, and the network calls (NFE) and seconds to sample. `--json` prints a JSON list of
objects instead (family, bpc, ci95_bpc, exact, recon_bpc, train_s, setup_s, nfe, sample_s, steps); setup_s
is the data and process set-up (D3PM-nn's mutual-information schedule takes minutes at T = 1000). Wall times depend on what
else the machine runs; on shared cores they are noisy.

What the papers report (text8, bpc): AR about 1.23 (Transformer-XL class models), MDLM <= 1.40,
D3PM-absorbing 1.45, D3PM-uniform 1.61 (Austin et al. 2021; Sahoo et al. 2024). Small, short runs need not
reproduce that ordering; nothing here is tuned per family.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

FAMILY_ORDER = ["ar", "mdlm", "d3pm-absorbing", "d3pm-uniform", "d3pm-gaussian", "d3pm-nn", "rdm-absorbing",
                "rdm-multinomial"]

# (overrides, validation blocks, t-samples, sampling steps)
SETTINGS = {
    "quick": (["model.n_layers=2", "model.d_model=128", "model.n_heads=4", "model.max_len=64",
               "train.max_steps=400", "train.batch_size=16", "train.lr=2e-3", "train.warmup_steps=20",
               "train.ema=0.98"], 48, 4, 64),
    "full": (["model.n_layers=4", "model.d_model=192", "model.n_heads=4", "model.max_len=128",
              "train.max_steps=1500", "train.batch_size=32", "train.lr=2e-3", "train.warmup_steps=100",
              "train.ema=0.995"], 128, 8, 128),
}
COMMON = ["data.source=kjv", "data.tokenizer=char", "train.seed=0", "train.eval_every=0", "train.eval_batches=1",
          "train.ckpt_every=0", "train.log_every=1000000", "process.steps=1000"]


def run_family(name: str, overrides: list[str], out: Path, n_val: int, t_samples: int, sample_steps: int) -> dict:
    from ddlm.config import apply_overrides, load_preset
    from ddlm.eval.elbo import evaluate_nll
    from ddlm.families import build_family, configure
    from ddlm.train.loop import Trainer, prepare_data

    ov = overrides + [f"process.name={name}"]
    cfg = configure(apply_overrides(load_preset("quick"), ov), ov)
    start = time.perf_counter()
    tokenizer, _, _ = prepare_data(cfg)
    build_family(cfg.process, tokenizer.vocab_size)  # D3PM's matrices and schedules, cached for the run
    setup_s = time.perf_counter() - start
    trainer = Trainer(cfg, out / name, overwrite=True, progress=False, log=lambda *a, **k: None)
    start = time.perf_counter()
    model = trainer.run()
    train_s = time.perf_counter() - start
    _, _, val = prepare_data(cfg, model.tokenizer)
    m = evaluate_nll(model, val[:n_val], batch_size=16, t_samples=t_samples, seed=0)
    recon = reconstruction_bpc(model, val[:n_val], m["chars_per_token"])
    sampler = "routing" if "routing" in model.family.samplers else "ancestral"
    s = model.generate(n=4, length=cfg.model.max_len, steps=sample_steps, sampler=sampler, seed=0)
    return {"family": name, "bpc": m["bpc"], "ci95_bpc": m["ci95"] / math.log(2) / m["chars_per_token"],
            "exact": m["exact"], "recon_bpc": recon, "train_s": round(train_s, 1), "setup_s": round(setup_s, 1),
            "nfe": s.nfe, "sample_s": round(s.seconds, 2),
            "sampler": sampler, "steps": cfg.train.max_steps, "val_tokens": m["n_tokens"],
            "example": s.texts[0][:60]}


@torch.no_grad()
def reconstruction_bpc(model, blocks, chars_per_token) -> float | None:
    """D3PM only: the part of the bound that is L_1 = -log p~(x_0 | x_1), the reconstruction of (almost) clean
    text, in bpc. The x0-parameterisation must learn to copy every unmasked token here (MDLM's SUBS copies them
    by construction), so a short run pays for it in the bound."""
    terms = getattr(model.family.objective, "_terms", None)
    if terms is None:
        return None
    model.backbone.eval()
    g = torch.Generator().manual_seed(0)
    total = sum(float(terms(model.backbone, b, torch.ones(len(b), dtype=torch.long), g).sum())
                for b in blocks.split(16))
    return total / blocks.numel() / math.log(2) / chars_per_token


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small model and 400 steps (<= 15 minutes on 2 cores)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--families", help=f"comma-separated subset of {','.join(FAMILY_ORDER)}")
    p.add_argument("--steps", type=int, help="training steps (overrides the setting)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", help="directory for the runs (default: a temporary directory)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides, n_val, t_samples, sample_steps = SETTINGS["quick" if args.quick else "full"]
    overrides = COMMON + overrides + [f"train.threads={args.threads}"]
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    families = args.families.split(",") if args.families else FAMILY_ORDER
    unknown = set(families) - set(FAMILY_ORDER)
    if unknown:
        p.error(f"unknown families {sorted(unknown)}; choose from {','.join(FAMILY_ORDER)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for name in families:
            rows.append(run_family(name, overrides, out, n_val, t_samples, sample_steps))
            if not args.json:
                print(f"  done {name}: {rows[-1]['bpc']:.3f} bpc in {rows[-1]['train_s']:.0f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'family':16s} {'bpc bound':>24s} {'of it L_1':>9s} {'train s':>8s} {'setup s':>8s} {'NFE':>5s} {'sample s':>9s}  sampler")
    for r in rows:
        bpc = f"{r['bpc']:.3f} ± {r['ci95_bpc']:.3f}" + (" (exact)" if r["exact"] else "")
        recon = "" if r["recon_bpc"] is None else f"{r['recon_bpc']:.3f}"
        print(f"{r['family']:16s} {bpc:>24s} {recon:>9s} {r['train_s']:8.1f} {r['setup_s']:8.1f} {r['nfe']:5d} {r['sample_s']:9.2f}  "
              f"{r['sampler']}")
    print(f"({rows[0]['steps']} training steps each, {rows[0]['val_tokens']} validation tokens, same seed; "
          "wall times are noisy on shared cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
