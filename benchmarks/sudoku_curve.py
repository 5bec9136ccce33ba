"""Solve rate at the first try against training time, for `benchmarks/sudoku.py --curve` (issue 14).

A run keeps only its newest checkpoints, so `keep(run)` hard-links each completed checkpoint into
RUN/snapshots/ as it appears (run it beside the training: `python benchmarks/sudoku_curve.py --keep RUN`).
A checkpoint holds the step, the EMA weights and the training wall time so far (`elapsed_s`), so each
snapshot is one point (step, minutes, first-try solve rate) of the curve; `reach` reads off the first step
and minute at which a curve reaches a solve rate.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

_STEP = re.compile(r"step-(\d+)\.pt$")


def keep_once(run: Path) -> list[Path]:
    """Hard-link every complete checkpoint of `run` not yet in RUN/snapshots/; the new links."""
    src, dst = run / "checkpoints", run / "snapshots"
    dst.mkdir(parents=True, exist_ok=True)
    new = []
    for p in sorted(src.glob("step-*.pt")) if src.is_dir() else []:
        # the checksum file is written after the checkpoint's atomic rename: the .pt is then complete
        if p.with_suffix(".sha256").is_file() and not (dst / p.name).exists():
            try:
                os.link(p, dst / p.name)
                new.append(dst / p.name)
            except FileNotFoundError:  # removed by the run between the listing and the link
                pass
    return new


def keep(run: Path, every_s: float = 5.0, until_done: bool = True) -> None:
    """Poll `run` every `every_s` seconds until its exported model's training ends (the final checkpoint
    is the one at train.max_steps)."""
    import yaml

    while not (run / "config.yaml").is_file():  # the run is starting
        time.sleep(every_s)
    max_steps = yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"]
    while True:
        for p in keep_once(run):
            print(f"kept {p}", file=sys.stderr, flush=True)
        if until_done and (run / "snapshots" / f"step-{max_steps:08d}.pt").exists():
            return
        time.sleep(every_s)


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the kept snapshots, in step order."""
    found = [(int(m.group(1)), p) for p in (run / "snapshots").glob("step-*.pt") if (m := _STEP.search(p.name))]
    return sorted(found)


def reach(points: list[dict], rate: float) -> dict | None:
    """The first point (in step order) whose solve rate is at least `rate`, or None: {step, minutes}."""
    for pt in sorted(points, key=lambda p: p["step"]):
        if pt["solve_rate"] >= rate:
            return {"step": pt["step"], "minutes": pt["minutes"]}
    return None


def curve_table(curves: dict[str, list[dict]], targets=(0.5, 0.7)) -> list[dict]:
    """One row per arm: steps and minutes to reach each target and the final point. `curves` maps an arm's
    name to its points {step, minutes, solve_rate}."""
    rows = []
    for arm, points in curves.items():
        pts = sorted(points, key=lambda p: p["step"])
        row = {"arm": arm, "reach": {f"{t:g}": reach(pts, t) for t in targets}}
        if pts:
            row["final"] = {k: pts[-1][k] for k in ("step", "minutes", "solve_rate", "cell_accuracy") if k in pts[-1]}
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """The curve table as text: `step / min` to each target, `-` where the arm never reached it."""
    targets = list(rows[0]["reach"]) if rows else []
    head = f"{'arm':12s} " + " ".join(f"{'to ' + format(float(t), '.0%'):>16s}" for t in targets) + \
        f" {'final (step / min / solved / cells)':>38s}"
    lines = [head]
    for r in rows:
        cells = []
        for t in targets:
            hit = r["reach"][t]
            cells.append(f"{hit['step']:>7d} / {hit['minutes']:5.1f}" if hit else f"{'-':>16s}")
        f = r.get("final")
        last = f"{f['step']:>7d} / {f['minutes']:5.1f} / {100 * f['solve_rate']:5.1f}%" if f else "-"
        if f and "cell_accuracy" in f:
            last += f" / {100 * f['cell_accuracy']:5.1f}%"
        lines.append(f"{r['arm']:12s} " + " ".join(f"{c:>16s}" for c in cells) + f" {last:>38s}")
    return "\n".join(lines)


def evaluate_snapshot(path: Path, run: Path, puzzles, solutions, batch_size: int = 200) -> dict:
    """{step, minutes, solve_rate, n} of one snapshot: its EMA weights, first try, top_margin (the preset's
    default planner), greedy."""
    import torch

    from ddlm.config import load_preset
    from ddlm.tasks.sudoku.solve import evaluate_sudoku
    from ddlm.pipeline import SequenceModel
    from ddlm.data.tokenizers import load_tokenizer

    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = load_preset(str(run / "config.yaml"))
    with torch.random.fork_rng(devices=[]):
        model = SequenceModel(cfg, load_tokenizer(run))
    model.backbone.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    model.eval()
    rep = evaluate_sudoku(model, puzzles, solutions, planner=cfg.sample.planner, batch_size=batch_size, tries=1)
    return {"step": int(state["step"]), "minutes": float(state.get("elapsed_s", 0.0)) / 60.0,
            "solve_rate": float(rep["solve_rate_first_try"]), "n": int(rep["n"]),
            "cell_accuracy": float(rep["cell_accuracy"])}


def curve_points(run: Path, data: Path, limit: int | None, every: int = 1, batch_size: int = 200,
                 progress: bool = True) -> list[dict]:
    """Points of one arm: the kept snapshots at multiples of `every` steps and at the run's last step, evaluated on the first `limit`
    puzzles of `data`; each result is cached in RUN/snapshots/curve.json (keyed by snapshot, set and limit), so
    a second call, or one made while the run still trains, evaluates only the new snapshots."""
    import json

    from ddlm.tasks.sudoku.board import load_csv

    cache_path = run / "snapshots" / "curve.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    puzzles, solutions = load_csv(data, limit=limit)
    import yaml

    final = yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"]
    chosen = [(step, p) for step, p in snapshots(run) if step % every == 0 or step == final]
    points = []
    for step, path in chosen:
        key = f"{path.name}|{data.name}|{len(puzzles)}"
        if "cell_accuracy" not in cache.get(key, {}):  # new, or cached before cell accuracy was kept
            cache[key] = evaluate_snapshot(path, run, puzzles, solutions, batch_size)
            cache_path.write_text(json.dumps(cache, indent=1))
            if progress:
                pt = cache[key]
                print(f"  {run.name} step {pt['step']:6d} ({pt['minutes']:5.1f} min): "
                      f"{100 * pt['solve_rate']:5.1f}% at the first try", file=sys.stderr, flush=True)
        points.append(cache[key])
    return points


def plot_curve(curves: dict[str, list[dict]], path: Path, title: str) -> str:
    """Solve rate against training minutes (left) and steps (right), one line per arm."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed; the table above holds the same numbers"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["step"])
        for ax, x in zip(axes, ("minutes", "step")):
            ax.plot([p[x] for p in pts], [100 * p["solve_rate"] for p in pts], marker="o", ms=3, label=arm)
    for ax, xlabel in zip(axes, ("training wall-minutes (1 thread, shared machine)", "training steps")):
        for level in (50, 70):
            ax.axhline(level, color="grey", ls=":", lw=1)
        ax.set(xlabel=xlabel, ylabel="solved at the first try (%)", ylim=(-2, 102), title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="keep every checkpoint of a training run for the solve-rate curve")
    p.add_argument("--keep", metavar="RUN", required=True, help="run directory to watch")
    p.add_argument("--every", type=float, default=5.0, help="poll interval in seconds")
    args = p.parse_args(argv)
    keep(Path(args.keep), args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
