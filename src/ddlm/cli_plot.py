"""`ddlm plot RUN_DIR [RUN_DIR ...] [--out FILE.png]`: training curves of one run, or several side by side."""

from __future__ import annotations


def cmd_plot(args) -> int:
    from .plot import plot_runs

    out = plot_runs(args.runs, args.out, args.labels.split(",") if args.labels else None)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot training loss, validation bpc and learning rate of runs (matplotlib)",
                       description="Draw training loss, validation bound (bpc) and learning rate against the "
                                   "step from each run's log.csv, several runs on one figure. Needs matplotlib "
                                   '(pip install "ddlm[plot]").')
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by ddlm train")
    p.add_argument("--out", metavar="FILE.png", help="output PNG (default RUN_DIR/curves.png for one run; "
                   "required for several); a file ddlm did not write is never replaced")
    p.add_argument("--labels", metavar="A,B,...", help="legend names, one per run (default: the folder names)")
    p.set_defaults(func=cmd_plot)
