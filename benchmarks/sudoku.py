"""Planners x Sudoku test sets: solve rate, cell accuracy, NFE and time per puzzle, and solve rate against the
number of givens (a table, and a PNG plot when matplotlib is installed).

    python benchmarks/sudoku.py [--model DIR] [--limit N] [--stratify] [--data CSV ...] [--planners a,b]
                                [--json] [--plot PNG]

Defaults: the committed models/sudoku, the 20 example puzzles shipped with ddlm (src/ddlm/data/examples), one CPU
thread. For the published comparisons pass the public test sets, e.g. `--data satnet-test.csv rrn-validation.csv`
(SATNet test, RRN validation; both files are shuffled, so the first N are a fair sample), or puzzles written by
`ddlm sudoku generate --n N --givens K --out FILE.csv`.
Kim et al. (ICML 2025) report for a 6M MDM: random 6.9% / top-prob 18.5% / top-margin 89.5% (their test set).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddlm.data.sudoku import EXAMPLE_CSV, load_csv
from ddlm.errors import UserError
from ddlm.eval.sudoku import evaluate_sudoku
from ddlm.pipeline import SequenceModel

REPO = Path(__file__).resolve().parents[1]
PLANNERS = ("random", "top_prob", "top_margin", "entropy", "confidence")


def stratified(puzzles, solutions, limit: int):
    """The first ceil(limit / #counts) puzzles of each number of givens (at most `limit` in all, file order)."""
    givens = (puzzles != 0).sum(1)
    counts = np.unique(givens)
    per = -(-limit // len(counts))
    keep = np.concatenate([np.flatnonzero(givens == g)[:per] for g in counts])
    keep = np.sort(keep)[:limit] if len(keep) > limit else np.sort(keep)
    return puzzles[keep], solutions[keep]


def run(model, sets: dict, planners, limit: int | None, batch_size: int, progress: bool,
        stratify: bool = False, tries: int = 1, retry: str = "symmetry", views: int = 1) -> list[dict]:
    """One row per (planner, set): metrics plus solve counts per number of givens."""
    rows = []
    for set_name, path in sets.items():
        if stratify and limit:
            puzzles, solutions = stratified(*load_csv(path), limit)
        else:
            puzzles, solutions = load_csv(path, limit=limit)
        for planner in planners:
            rep = evaluate_sudoku(model, puzzles, solutions, planner=planner, batch_size=batch_size,
                                  tries=tries, retry=retry, views=views, progress=progress)
            by_givens = {}
            for g in np.unique(rep["givens"]):
                sel = rep["givens"] == g
                by_givens[int(g)] = [int(rep["solved_mask"][sel].sum()), int(sel.sum())]
            rows.append({"set": set_name, "planner": planner, "n": rep["n"], "solved": rep["solved"],
                         "solved_first_try": rep["solved_first_try"], "row_evals": rep["row_evals"],
                         "solve_rate": rep["solve_rate"], "solve_rate_first_try": rep["solve_rate_first_try"],
                         "cell_accuracy": rep["cell_accuracy"],
                         "nfe": rep["nfe"], "seconds": rep["seconds"],
                         "ms_per_puzzle": 1000 * rep["seconds_per_puzzle"], "by_givens": by_givens})
            if progress:
                print(f"  {set_name:8s} {planner:11s} {100 * rep['solve_rate']:6.1f}%", file=sys.stderr)
    return rows


def print_tables(rows: list[dict]) -> None:
    print(f"{'set':10s} {'planner':11s} {'n':>5s} {'solved':>7s} {'1st try':>8s} {'cell acc':>9s} {'NFE':>6s} "
          f"{'ms/puzzle':>10s}")
    for r in rows:
        print(f"{r['set']:10s} {r['planner']:11s} {r['n']:5d} {100 * r['solve_rate']:6.1f}% "
              f"{100 * r['solve_rate_first_try']:7.1f}% {100 * r['cell_accuracy']:8.2f}% {r['nfe']:6.1f} "
              f"{r['ms_per_puzzle']:10.1f}")
    for set_name in dict.fromkeys(r["set"] for r in rows):
        sub = [r for r in rows if r["set"] == set_name]
        counts = sorted({g for r in sub for g in r["by_givens"]})
        if len(counts) < 2:
            continue
        print(f"\nsolve rate (%) against the number of givens, {set_name} (puzzles per count in the last row)")
        print(f"{'givens':11s} " + " ".join(f"{g:>4d}" for g in counts))
        for r in sub:
            cells = [r["by_givens"].get(g) for g in counts]
            print(f"{r['planner']:11s} " + " ".join(f"{100 * s / n:4.0f}" if n else "   -" for s, n in
                                                      (c or (0, 0) for c in cells)))
        print(f"{'n':11s} " + " ".join(f"{sub[0]['by_givens'].get(g, (0, 0))[1]:4d}" for g in counts))


def plot(rows: list[dict], path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (f"no plot: matplotlib is not installed (`pip install matplotlib`); the table above holds the "
                f"same numbers")
    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        for r in (r for r in rows if r["set"] == set_name):
            g = sorted(r["by_givens"])
            ax.plot(g, [100 * r["by_givens"][k][0] / r["by_givens"][k][1] for k in g], marker="o", ms=3,
                    label=r["planner"])
        ax.set(title=f"{set_name}", xlabel="number of givens", ylabel="solved (%)", ylim=(-2, 102))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "models" / "sudoku"), help="model directory (default models/sudoku)")
    p.add_argument("--data", nargs="+", metavar="CSV", help="puzzle,solution CSV files, such as the public SATNet "
                   "test and RRN validation sets or `ddlm sudoku generate` output (default: the 20 example puzzles "
                   "shipped with ddlm)")
    p.add_argument("--limit", type=int, default=200, help="first N puzzles of each set (default 200; 0 = all)")
    p.add_argument("--stratify", action="store_true", help="take the N puzzles evenly over the numbers of givens "
                   "(representative only of a set uniform over them, such as RRN's 1,000 per count 17..34)")
    p.add_argument("--planners", default=",".join(PLANNERS), help=f"comma-separated (default {','.join(PLANNERS)})")
    p.add_argument("--tries", type=int, default=1, help="re-solve boards that break a rule, up to N tries in all "
                   "(default 1)")
    p.add_argument("--views", type=int, default=1, help="average the probabilities over N symmetric views (default 1)")
    p.add_argument("--retry", default="symmetry", choices=["symmetry", "gumbel"],
                   help="how a try differs: a random Sudoku symmetry of the puzzle (default) or Gumbel-perturbed scores")
    p.add_argument("--batch-size", type=int, default=200, help="puzzles per batch")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--plot", default="runs/sudoku-benchmark.png", help="PNG of solve rate against givens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        torch.set_num_threads(args.threads)
        sets = {Path(d).stem: Path(d) for d in args.data or [EXAMPLE_CSV]}
        model = SequenceModel.from_pretrained(args.model)
        start = time.perf_counter()
        rows = run(model, sets, [s for s in args.planners.split(",") if s], args.limit or None, args.batch_size,
                   progress=not args.json, stratify=args.stratify, tries=args.tries,
                   retry=args.retry, views=args.views)
        meta = {"model": str(args.model), "n_params": model.backbone.n_params(), "threads": args.threads,
                "limit": args.limit, "stratify": args.stratify, "tries": args.tries, "retry": args.retry, "views": args.views,
                "seconds": time.perf_counter() - start}
        if args.json:
            print(json.dumps({**meta, "rows": rows}))
        else:
            print(f"model {args.model} ({meta['n_params'] / 1e6:.2f}M parameters), {args.threads} thread(s), "
                  f"greedy tokens, one cell per step, {args.tries} tr{'y' if args.tries == 1 else 'ies'}"
                  f"{'' if args.tries == 1 else ' (retry: ' + args.retry + ')'}"
                  f"{'' if args.views == 1 else f', {args.views} symmetric views averaged'}\n")
            print_tables(rows)
        msg = plot(rows, Path(args.plot)) if args.plot else None
        if msg:
            print(msg, file=sys.stderr)
    except UserError as e:
        print(f"benchmarks/sudoku.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
