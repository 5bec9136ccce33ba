"""NFE and wall time of ancestral vs cached sampling (and the planned sampler), side by side.

    python benchmarks/sampling.py [--model DIR] [--repeats 3] [--json]

Without --model, a randomly initialised model of the `quick` preset's shape is used: the network's cost
does not depend on its weights, and the cache's savings depend only on how often tokens change, which for
the ancestral sampler is set by the schedule, not the weights. Medians of --repeats runs after a warm-up,
all in one process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ddlm  # noqa: E402
from ddlm.data.tokenizers import CharTokenizer  # noqa: E402

SHAPES = [(1, 128, 1024), (8, 128, 128)]  # (batch, length, steps)


def load(model_dir):
    if model_dir:
        return ddlm.SequenceModel.from_pretrained(model_dir)
    tok = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    torch.manual_seed(0)
    return ddlm.SequenceModel(ddlm.load_preset("quick"), tok).eval()


def run(model, n, length, steps, sampler, repeats, seed=0):
    model.generate(n=n, length=length, steps=min(steps, 16), sampler=sampler, seed=seed, decode=False)  # warm-up
    outs = [model.generate(n=n, length=length, steps=steps, sampler=sampler, seed=seed + r, decode=False)
            for r in range(repeats)]
    return statistics.median(o.nfe for o in outs), statistics.median(o.seconds for o in outs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a trained model or run directory (default: random weights, quick shape)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model)
    rows, result = [], {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    for n, length, steps in SHAPES:
        nfe_a, t_a = run(model, n, length, steps, "ancestral", args.repeats)
        nfe_c, t_c = run(model, n, length, steps, "cached", args.repeats)
        rows.append((f"{n} x {length} x {steps}", nfe_a, t_a, nfe_c, t_c, t_a / t_c))
        result[f"cached_speedup_b{n}"] = t_a / t_c
        result[f"b{n}"] = {"ancestral_nfe": nfe_a, "ancestral_s": t_a, "cached_nfe": nfe_c, "cached_s": t_c}
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}; model {model.backbone.n_params() / 1e6:.2f}M parameters; "
          f"median of {args.repeats}")
    print(f"{'batch x length x steps':24s} {'ancestral NFE':>14s} {'time s':>8s} {'cached NFE':>11s} "
          f"{'time s':>8s} {'speed-up':>9s}")
    for shape, nfe_a, t_a, nfe_c, t_c, sp in rows:
        print(f"{shape:24s} {nfe_a:14.0f} {t_a:8.2f} {nfe_c:11.0f} {t_c:8.2f} {sp:8.1f}x")


if __name__ == "__main__":
    main()
