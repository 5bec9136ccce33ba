"""Planners x Sudoku test sets: solve rate, cell accuracy, NFE and time per puzzle, and solve rate against the
number of givens (a table, and a PNG plot when matplotlib is installed).

    python benchmarks/sudoku.py [--model DIR] [--limit N] [--stratify] [--data CSV ...] [--planners a,b]
                                [--json] [--plot PNG]
    python benchmarks/sudoku.py --curve --data rrn-validation.csv [--limit 500] [--runs RUN ...] [--every N]

Defaults: the committed models/sudoku, the 20 example puzzles shipped with ddlm (src/ddlm/tasks/sudoku/examples), one CPU
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

from ddlm.tasks.sudoku.board import EXAMPLE_CSV, load_csv
from ddlm.errors import UserError
from ddlm.tasks.sudoku.solve import evaluate_sudoku
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


def remask_sweep(model, sets: dict, limit: int | None, batch_size: int, budgets, tries: int, options: dict,
                 conf_budgets, conf_limit: int | None, progress: bool) -> list[dict]:
    """First-try solve rate against NFE per puzzle: top-margin, symmetry retries (after each try), the conflict
    re-masker at each budget and ReMDM's conf. Puzzles the single pass solves never break a rule, so the
    conflict re-masker leaves them untouched (token for token, tests/test_sudoku_remask.py): each budget runs
    on the single pass's failures only, and their cost is added to the solved puzzles' single-pass cost."""
    rows = []
    for set_name, path in sets.items():
        puzzles, solutions = load_csv(path, limit=limit)
        n = len(puzzles)
        rep = evaluate_sudoku(model, puzzles, solutions, batch_size=batch_size, tries=tries)
        for k, (solved, nfe) in enumerate(zip(rep["solved_by_try"], rep["nfe_by_try"])):
            rows.append({"set": set_name, "method": "top_margin" if k == 0 else "retries", "budget": k + 1,
                         "n": n, "solved": solved, "nfe": nfe})
        fails = np.flatnonzero(~rep["first_try_mask"])
        ok_cost = rep["nfe_by_try"][0] * n - (puzzles[fails] == 0).sum()  # the first try's cost of the others
        for b in budgets:
            r = evaluate_sudoku(model, puzzles[fails], solutions[fails], batch_size=batch_size, sampler="remask",
                                remask={**options, "budget": b}) if len(fails) else {"solved": 0, "row_evals": 0}
            rows.append({"set": set_name, "method": "remask conflict", "budget": b, "n": n,
                         "solved": int(rep["solved_first_try"] + r["solved"]),
                         "nfe": float((ok_cost + r["row_evals"]) / n)})
            if progress:
                print(f"  {set_name} conflict budget {b}: {rows[-1]['solved']}/{n}", file=sys.stderr)
        sub_p, sub_s = puzzles[:conf_limit], solutions[:conf_limit]
        for b in conf_budgets:
            r = evaluate_sudoku(model, sub_p, sub_s, batch_size=batch_size, sampler="remask",
                                remask={"schedule": "conf", "budget": b})
            rows.append({"set": set_name, "method": "remask ReMDM conf", "budget": b, "n": r["n"],
                         "solved": r["solved"], "nfe": r["nfe"]})
    return rows


def print_remask(rows: list[dict]) -> None:
    print(f"{'set':16s} {'method':18s} {'tries/budget':>12s} {'n':>5s} {'solved':>7s} {'1st try':>8s} {'NFE':>6s}")
    for r in rows:
        print(f"{r['set']:16s} {r['method']:18s} {r['budget']:12d} {r['n']:5d} {r['solved']:7d} "
              f"{100 * r['solved'] / r['n']:7.1f}% {r['nfe']:6.1f}")


def plot_remask(rows: list[dict], path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed; the table above holds the same numbers"
    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        sub = [r for r in rows if r["set"] == set_name]
        curves = {"retries (symmetry)": [r for r in sub if r["method"] in ("top_margin", "retries")],
                  "re-mask conflicts": [r for r in sub if r["method"] == "remask conflict"],
                  "ReMDM conf": [r for r in sub if r["method"] == "remask ReMDM conf"]}
        for label, pts in curves.items():
            if pts:
                ax.plot([r["nfe"] for r in pts], [100 * r["solved"] / r["n"] for r in pts], marker="o", ms=3,
                        label=label)
        base = sub[0]
        ax.axvline(2 * base["nfe"], color="grey", ls=":", lw=1, label="2x single pass")
        ax.set(title=set_name, xlabel="NFE per puzzle", ylabel="solved (%)", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"


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
    p.add_argument("--remask", action="store_true", help="first-try solve rate against NFE: top-margin, retries "
                   "(--tries, default 16 here), the conflict re-masker at --budgets and ReMDM conf")
    p.add_argument("--budgets", default="7,14,28,56,112", help="--remask: correction steps (comma-separated)")
    p.add_argument("--conf-budgets", default="0,56", help="--remask: ReMDM conf budgets (comma-separated; "
                   "empty = none)")
    p.add_argument("--conf-limit", type=int, default=100, help="--remask: ReMDM conf on the first N puzzles only "
                   "(every row is evaluated at every step; default 100)")
    p.add_argument("--remask-option", action="append", default=[], metavar="KEY=VALUE",
                   help="--remask: options of the conflict schedule (default: the library's)")
    p.add_argument("--curve", action="store_true", help="first-try solve rate against training minutes and steps "
                   "for the runs in --runs (checkpoints kept by benchmarks/sudoku_curve.py --keep RUN): a table of "
                   "the steps and minutes each needs to reach 50%%, 70%% and its final value, and a PNG")
    p.add_argument("--runs", nargs="+", default=["runs/curve-uniform", "runs/curve-puma"], metavar="RUN",
                   help="--curve: run directories, one per arm (default runs/curve-uniform runs/curve-puma)")
    p.add_argument("--every", type=int, default=1, help="--curve: evaluate the kept checkpoints at multiples of N "
                   "steps and the run's last (default 1: all)")
    p.add_argument("--targets", default="0.5,0.7", help="--curve: solve rates whose first step and minute the table "
                   "gives (comma-separated fractions, default 0.5,0.7)")
    args = p.parse_args(argv)
    if args.curve:
        return main_curve(args)
    if args.remask:
        return main_remask(args)
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


def main_remask(args) -> int:
    from ddlm.tasks.sudoku.solve import REMASK_DEFAULTS

    try:
        torch.set_num_threads(args.threads)
        sets = {Path(d).stem: Path(d) for d in args.data or [EXAMPLE_CSV]}
        model = SequenceModel.from_pretrained(args.model)
        options = dict(REMASK_DEFAULTS)
        for item in args.remask_option:
            key, _, value = item.partition("=")
            options[key] = value if key in ("schedule", "when") else int(value)
        ints = lambda text: [int(b) for b in text.split(",") if b]  # noqa: E731
        tries = args.tries if args.tries > 1 else 16
        start = time.perf_counter()
        rows = remask_sweep(model, sets, args.limit or None, args.batch_size, ints(args.budgets), tries, options,
                            ints(args.conf_budgets), args.conf_limit or None, progress=not args.json)
        meta = {"model": str(args.model), "threads": args.threads, "limit": args.limit, "tries": tries,
                "remask": options, "seconds": time.perf_counter() - start}
        if args.json:
            print(json.dumps({**meta, "rows": rows}))
        else:
            print(f"model {args.model}, first {args.limit} puzzles, greedy top-margin, one cell per step; "
                  f"conflict re-masker {options}\n")
            print_remask(rows)
        if args.plot:
            print(plot_remask(rows, Path(args.plot).with_name(Path(args.plot).stem + "-remask.png")),
                  file=sys.stderr)
    except UserError as e:
        print(f"benchmarks/sudoku.py: error: {e}", file=sys.stderr)
        return 2
    return 0


def main_curve(args) -> int:
    """Solve rate at the first try (top_margin, greedy) against training time, one curve per run (issue 14)."""
    if str(Path(__file__).parent) not in sys.path:  # the helper module beside this file
        sys.path.insert(0, str(Path(__file__).parent))
    from sudoku_curve import curve_points, curve_table, format_table, plot_curve

    try:
        torch.set_num_threads(args.threads)
        if not args.data or len(args.data) != 1:
            raise UserError("--curve needs one puzzle file, e.g. --data rrn-validation.csv")
        data = Path(args.data[0])
        runs = [Path(r) for r in args.runs]
        for r in runs:
            if not (r / "snapshots").is_dir():
                raise UserError(f"{r} has no snapshots/; train it while `python benchmarks/sudoku_curve.py --keep "
                                f"{r}` keeps its checkpoints")
        start = time.perf_counter()
        names = [r.name.removeprefix("curve-") for r in runs]
        curves = {n: curve_points(r, data, args.limit or None, args.every, args.batch_size, not args.json)
                  for n, r in zip(names, runs)}
        rows = curve_table(curves, tuple(float(x) for x in args.targets.split(",") if x))
        meta = {"data": str(data), "limit": args.limit, "threads": args.threads,
                "seconds": time.perf_counter() - start}
        if args.json:
            print(json.dumps({**meta, "rows": rows, "curves": curves}))
        else:
            print(f"first-try solve rate (top_margin, greedy) on the first {args.limit} of {data.name} against "
                  f"training steps and wall-minutes (step / minutes)\n")
            print(format_table(rows))
        if args.plot:
            png = Path(args.plot).with_name(Path(args.plot).stem + "-curve.png")
            print(plot_curve(curves, png, f"{data.stem}, first {args.limit}"), file=sys.stderr)
    except UserError as e:
        print(f"benchmarks/sudoku.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
