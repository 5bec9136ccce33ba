"""`ddlm sudoku solve PUZZLE`: fill in one puzzle with a trained model and say whether it is solved."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

# src/ddlm/cli_sudoku.py -> the repository root holds models/sudoku (the committed model)
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "models" / "sudoku"


def default_model_dir() -> Path:
    """The committed model of the repository (or ./models/sudoku when ddlm is installed elsewhere)."""
    for candidate in (DEFAULT_MODEL, Path.cwd() / "models" / "sudoku"):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(f"no Sudoku model at {DEFAULT_MODEL}; pass --model DIR, or train one with "
                    "`ddlm train --preset sudoku --out runs/sudoku` and use --model runs/sudoku")


def cmd_solve(args) -> int:
    from .data.sudoku import format_board, parse_board
    from .eval.sudoku import evaluate_sudoku, one_thread_unless_asked
    from .pipeline import SequenceModel

    puzzle = parse_board(args.puzzle)  # one-line UserError for a bad string
    # one puzzle is one 81-token row per step: too little work for threads (23 s with 2 against 0.24 s with 1
    # on 2 busy cores)
    one_thread_unless_asked()
    from .cli import _device

    model = SequenceModel.from_pretrained(args.model or default_model_dir(), map_location=_device(args))
    report = evaluate_sudoku(model, puzzle[None], planner=args.planner, steps=args.steps, tries=args.tries,
                             retry=args.retry, views=args.views)
    board, solved = report["boards"][0], bool(report["solved_mask"][0])
    if args.json:
        print(json.dumps({"puzzle": format_board(puzzle, pretty=False), "board": format_board(board, pretty=False),
                          "solved": solved, "nfe": report["nfe"], "seconds": report["seconds"]}))
    else:
        print(format_board(board))
        verdict = "solved" if solved else "NOT solved (the board breaks a rule or changes a given)"
        print(f"{verdict}; {int((puzzle == 0).sum())} blanks, {report['nfe']:.0f} NFE, planner {args.planner}, "
              f"{report['seconds']:.2f} s")
    return 0 if solved else 1


def add_solving_options(parser, prefix: str = "") -> None:
    """--tries, --retry, --views: the ways to spend more compute on a hard puzzle (solve and eval share them)."""
    from .cli import _positive_int
    from .eval.sudoku import RETRIES

    parser.add_argument("--tries", type=_positive_int, default=1, help=f"{prefix}solve a board that breaks a rule "
                        "again, up to N tries in all (default 1; every try counts in the NFE)")
    parser.add_argument("--retry", default=RETRIES[0], choices=RETRIES,
                        help=f"{prefix}how a try differs: the puzzle under a random Sudoku symmetry (default), or "
                        "the planner's scores perturbed by 0.1 x Gumbel noise")
    parser.add_argument("--views", type=_positive_int, default=1, help=f"{prefix}average the model's probabilities "
                        "over the board and N - 1 random Sudoku symmetries of it (N times the NFE; default 1)")


def register(sub) -> None:
    from .cli import _positive_int

    s = sub.add_parser("sudoku", help="solve Sudoku puzzles with a trained model")
    ssub = s.add_subparsers(dest="sudoku_command", metavar="SUBCOMMAND", parser_class=type(s))
    ssub.required = True
    solve = ssub.add_parser("solve", help="fill in one puzzle; exit status 0 if solved, 1 if not",
                            description="Fill in one puzzle and print the board and whether it is solved "
                                        "(exit status 0 if solved, 1 if not, 2 for a bad puzzle).")
    solve.add_argument("puzzle", metavar="PUZZLE", help="81 characters row by row: digits 1-9, '0' or '.' for blanks")
    solve.add_argument("--model", metavar="DIR", help=f"model directory (default: the committed {DEFAULT_MODEL})")
    solve.add_argument("--planner", default="top_margin",
                       help="decoding order: random, top_prob, top_margin (default), entropy, confidence")
    solve.add_argument("--steps", type=_positive_int, help="denoising steps (default: one blank per step)")
    add_solving_options(solve)
    from .cli import _add_device

    _add_device(solve)
    solve.add_argument("--json", action="store_true", help="print one JSON object")
    solve.set_defaults(func=cmd_solve)
