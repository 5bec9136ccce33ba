"""`ddlm sudoku solve PUZZLE`: fill in one puzzle with a trained model and say whether it is solved;
`ddlm sudoku generate`: random puzzles with unique solutions as a CSV; `ddlm eval DIR --task sudoku`.

Imports only the shared CLI helpers (`ddlm.cli_common`), never `ddlm.cli`, which imports this module to
register the `sudoku` command."""

from __future__ import annotations

import json
from pathlib import Path

from ddlm.errors import UserError

# src/ddlm/tasks/sudoku/cli.py -> the repository root holds models/sudoku (the committed model)
DEFAULT_MODEL = Path(__file__).resolve().parents[4] / "models" / "sudoku"


def default_model_dir() -> Path:
    """The committed model of the repository (or ./models/sudoku when ddlm is installed elsewhere)."""
    for candidate in (DEFAULT_MODEL, Path.cwd() / "models" / "sudoku"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"no Sudoku model at {DEFAULT_MODEL}; pass --model DIR, or train one with "
                    "`ddlm train --preset sudoku --out runs/sudoku` and use --model runs/sudoku")


def set_threads(args) -> None:
    """--threads N if given, else one thread unless OMP_NUM_THREADS says otherwise (solving is many small forward
    passes: 23 s with 2 threads against 0.24 s with 1 for one puzzle on 2 busy cores)."""
    import torch

    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    else:
        one_thread_unless_asked()


def read_puzzle(parts: list[str]) -> str:
    """The board text of `sudoku solve PUZZLE...`: the arguments joined by spaces, or standard input for '-'."""
    if parts == ["-"]:
        import sys

        return sys.stdin.read()
    return " ".join(parts)


def cmd_solve(args) -> int:
    import sys

    from .board import MARK_LEGEND, conflict_cells, first_conflict, format_board, parse_board
    from .solve import evaluate_sudoku
    from ddlm.pipeline import SequenceModel

    puzzle = parse_board(read_puzzle(args.puzzle))  # one-line UserError for a bad board
    sampler, remask = sudoku_sampler(args)
    set_threads(args)
    from ddlm.cli_common import _device

    model = SequenceModel.from_pretrained(args.model or default_model_dir(), map_location=_device(args))
    solving = dict(planner=args.planner, steps=args.steps, tries=args.tries, retry=args.retry, views=args.views,
                   sampler=sampler, remask=remask)
    if getattr(args, "show", False) and sys.stdout.isatty():  # the grid redrawn at every step, then as usual
        from ddlm.show import show_sudoku_steps
        from .stream import stream_solve

        report = show_sudoku_steps(stream_solve(model, puzzle, **solving), (puzzle != 0).tolist()).output
    else:
        report = evaluate_sudoku(model, puzzle[None], **solving)
    board, solved = report["boards"][0], bool(report["solved_mask"][0])
    # cells that break a rule, and givens the board changed (the sampler keeps givens, so only ever the former)
    marks = conflict_cells(board) | ((puzzle != 0) & (board != puzzle))
    if args.json:
        print(json.dumps({"puzzle": format_board(puzzle, pretty=False), "board": format_board(board, pretty=False),
                          "solved": solved, "broken_cells": [int(i) for i in marks.nonzero()[0]],
                          "nfe": int(report["row_evals"]), "seconds": report["seconds"], "sampler": sampler,
                          "remask": report["remask"]}))
    else:
        print(format_board(board, marks=marks))
        if solved:
            verdict = "solved"
        else:
            print(MARK_LEGEND)
            why = first_conflict(board) or "a given was changed"
            verdict = f"NOT solved ({why}; {int(marks.sum())} cells marked)"
        print(f"{verdict}; {int((puzzle == 0).sum())} blanks, {int(report['row_evals'])} NFE, planner "
              f"{args.planner}{', re-masking' if remask else ''}, {report['seconds']:.2f} s")
    return 0 if solved else 1


MAX_GENERATE = 1_000_000  # puzzles per `sudoku generate` call: already about 14 hours of work


def cmd_generate(args) -> int:
    """`ddlm sudoku generate --n N --givens K [--seed S] [--out FILE.csv] [--force]`."""
    import os
    import sys
    import time

    import numpy as np

    from .board import format_csv
    from .generate import make_puzzles

    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.n > MAX_GENERATE:
        raise UserError(f"--n {args.n} is more than {MAX_GENERATE:,} puzzles (at ~50 ms each, "
                        f"{args.n * 0.05 / 3600:,.0f} hours); write several files with different --seed values")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.is_dir():
            raise UserError(f"--out {out} is a directory; give a file name such as {out / 'puzzles.csv'}")
        if out.exists() and not args.force:
            raise UserError(f"--out {out} already exists; choose another name, or add --force to replace it")
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**31)
    start = last = time.perf_counter()
    tty = sys.stderr.isatty()

    def progress(k: int) -> None:
        # a terminal gets a line rewritten in place; a log file one plain line every 10 s at most
        nonlocal last
        now = time.perf_counter()
        if k == args.n or now - last >= (0.2 if tty else 10.0):
            last = now
            cr, end = ("\r", "" if k < args.n else "\n") if tty else ("", "\n")
            print(f"{cr}generated {k}/{args.n} puzzles ({now - start:.1f} s)", end=end, file=sys.stderr, flush=True)

    puzzles, solutions = make_puzzles(args.n, args.givens, seed, progress=progress if not args.quiet else None)
    text = format_csv(puzzles, solutions)
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        tmp.write_text(text)
        os.replace(tmp, out)  # a reader never sees half a file
    if not args.quiet:
        where = f" to {out}" if out is not None else ""
        noun = "puzzle" if args.n == 1 else "puzzles"
        print(f"wrote {args.n} {noun} with {args.givens} givens (seed {seed}){where} in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def add_solving_options(parser, prefix: str = "") -> None:
    """--tries, --retry, --views: the ways to spend more compute on a hard puzzle (solve and eval share them)."""
    from ddlm.cli_common import _positive_int
    from .solve import RETRIES

    parser.add_argument("--tries", type=_positive_int, default=1, help=f"{prefix}solve a board that breaks a rule "
                        "again, up to N tries in all (default 1; every try counts in the NFE)")
    parser.add_argument("--retry", default=RETRIES[0], choices=RETRIES,
                        help=f"{prefix}how a try differs: the puzzle under a random Sudoku symmetry (default), or "
                        "the planner's scores perturbed by 0.1 x Gumbel noise")
    parser.add_argument("--views", type=_positive_int, default=1, help=f"{prefix}average the model's probabilities "
                        "over the board and N - 1 random Sudoku symmetries of it (N times the NFE; default 1)")
    parser.add_argument("--remask-option", action="append", default=[], metavar="KEY=VALUE",
                        help=f"{prefix}with --sampler remask: schedule=conflict (default: re-mask the cells that "
                        "break a rule and decode them again) or a ReMDM schedule (cap, rescale, conf, loop), "
                        "budget=N correction steps (default 56), and the schedule's options (conflict: when=early, "
                        "back=1, ban=2, extra, undo, rounds); repeatable")


def sudoku_sampler(args) -> tuple[str, dict | None]:
    """(sampler, re-masking options) from --sampler and --remask-option: planned (default) or remask."""
    sampler = getattr(args, "sampler", None) or "planned"
    if sampler not in ("planned", "remask"):
        raise UserError(f"--sampler {sampler} is not a Sudoku sampler; use planned (default) or remask")
    options = {}
    for item in getattr(args, "remask_option", None) or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--remask-option takes KEY=VALUE, got {item!r}")
        options[key] = value if key in ("schedule", "when") else _number(value, item)
    if options and sampler != "remask":
        raise UserError("--remask-option needs --sampler remask")
    if sampler == "remask":
        from .solve import remask_options

        options = remask_options(options)  # an unknown key fails before the model is loaded
    return sampler, options or None


def _number(value: str, item: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise UserError(f"--remask-option {item}: the value must be a number") from None


def register(sub) -> None:
    from ddlm.cli_common import _positive_int

    s = sub.add_parser("sudoku", help="solve Sudoku puzzles with a trained model, or generate puzzles")
    ssub = s.add_subparsers(dest="sudoku_command", metavar="SUBCOMMAND", parser_class=type(s))
    ssub.required = True
    solve = ssub.add_parser("solve", help="fill in one puzzle; exit status 0 if solved, 1 if not",
                            description="Fill in one puzzle and print the board and whether it is solved "
                                        "(exit status 0 if solved, 1 if not, 2 for a bad puzzle).")
    solve.add_argument("puzzle", metavar="PUZZLE", nargs="+",
                       help="81 cells row by row: digits 1-9, '0' or '.' for blanks; spaces, line breaks and the "
                       "separators | - + are ignored (one argument, nine of nine, or '-' to read standard input)")
    solve.add_argument("--model", metavar="DIR", help=f"model directory (default: the committed {DEFAULT_MODEL})")
    solve.add_argument("--planner", default="top_margin",
                       help="decoding order: random, top_prob, top_margin (default), entropy, confidence")
    solve.add_argument("--steps", type=_positive_int, help="denoising steps (default: one blank per step)")
    solve.add_argument("--sampler", default="planned", choices=["planned", "remask"],
                       help="planned (default: one pass in the planner's order) or remask (re-mask the cells that "
                       "break a rule and decode them again; see --remask-option)")
    add_solving_options(solve)
    from ddlm.cli_common import _add_device

    _add_device(solve)
    solve.add_argument("--threads", type=_positive_int, help="torch CPU threads (default 1, or OMP_NUM_THREADS: "
                       "one puzzle is too little work for more)")
    solve.add_argument("--json", action="store_true", help="print one JSON object (broken_cells: 0-based indices "
                       "of the cells that break a rule)")
    solve.add_argument("--show", action="store_true", help="on a terminal, redraw the grid at every step (blanks "
                       "as a dim _, each step's digits highlighted), then print the usual output")
    solve.set_defaults(func=cmd_solve)

    gen = ssub.add_parser("generate", help="write random puzzles with unique solutions as a puzzle,solution CSV",
                          description="Write N random puzzles, each with exactly K givens and a unique solution, "
                                      "as 'puzzle,solution' CSV lines (the input of `ddlm eval --task sudoku "
                                      "--data`). Removing cells one by one usually stops at 22-27 givens, so "
                                      "fewer givens take many restarts.")
    gen.add_argument("--n", type=_positive_int, required=True, help="number of puzzles")
    gen.add_argument("--givens", type=int, required=True, metavar="K", help="givens per puzzle (17..81; 24 or more "
                     "is fast, about 50 ms a puzzle)")
    gen.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed so the file can be "
                     "made again)")
    gen.add_argument("--out", metavar="FILE.csv", help="file to write (default: standard output)")
    gen.add_argument("--force", action="store_true", help="replace --out if it exists")
    gen.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    gen.set_defaults(func=cmd_generate)


def one_thread_unless_asked() -> None:
    """Use one torch thread unless OMP_NUM_THREADS says otherwise: solving is many small forward passes, and on
    a busy 2-core machine two threads ran 5x slower than one (746 against 150 ms per SATNet puzzle)."""
    import os

    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def cmd_eval_sudoku(model, args) -> int:
    """`ddlm eval DIR --task sudoku [--data CSV] [--planner] [--limit] [--steps] [--threads] [--json]`; without --data
    the 20 example puzzles shipped with ddlm (`EXAMPLE_CSV`)."""
    from .board import EXAMPLE_CSV, load_csv
    from .solve import _planner, check_sudoku_model, evaluate_sudoku, public_metrics

    set_threads(args)
    sampler, remask = sudoku_sampler(args)
    data = args.data or str(EXAMPLE_CSV)
    check_sudoku_model(model)
    planner = args.planner or "top_margin"
    _planner(planner, None)  # an unknown planner fails before the CSV is read
    puzzles, solutions = load_csv(data, limit=args.limit)
    report = evaluate_sudoku(model, puzzles, solutions, planner=planner, steps=args.steps,
                             seed=getattr(args, "seed", 0) or 0, tries=getattr(args, "tries", 1) or 1,
                             retry=getattr(args, "retry", "symmetry") or "symmetry",
                             views=getattr(args, "views", 1) or 1, sampler=sampler, remask=remask,
                             progress=not args.json)
    metrics = public_metrics(report)
    metrics.update(planner=planner, data=data)
    tries = ""
    if metrics["tries"] > 1:
        tries = (f" with {metrics['tries']} tries ({metrics['retry']}; one try: "
                 f"{100 * metrics['solve_rate_first_try']:.2f}%)")
    if remask:
        tries += f", re-masking ({', '.join(f'{k}={v}' for k, v in remask.items())})"
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"sudoku {data} ({metrics['n']} puzzles, planner {planner}): solved {metrics['solved']}/"
              f"{metrics['n']} = {100 * metrics['solve_rate']:.2f}%{tries}, cell accuracy on blanks "
              f"{100 * metrics['cell_accuracy']:.2f}%, {metrics['nfe']:.1f} NFE per puzzle, "
              f"{metrics['seconds']:.2f} s ({1000 * metrics['seconds_per_puzzle']:.1f} ms per puzzle)")
    return 0

