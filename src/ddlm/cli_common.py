"""Argument types and small helpers shared by the `ddlm` subcommands (cli.py, cli_sample.py, cli_eval.py,
tasks/sudoku/cli.py): one-line argparse errors, checked numbers and seeds, --device and --threads."""

from __future__ import annotations

import argparse
import math

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake as one line (and points at --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(lo: int, what: str):
    """argparse type: an integer >= lo, with a one-line message naming what was expected."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _seed(text: str) -> int:
    v = _nonneg_int(text)
    if v >= 2**31:  # torch and NumPy generators take bounded seeds; a traceback otherwise
        raise argparse.ArgumentTypeError(f"expected a seed in 0..{2**31 - 1}, got {v}")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _plural(k: int, word: str) -> str:
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


def _add_device(parser) -> None:
    parser.add_argument("--device", default="auto", help="where the model runs: auto (the GPU if torch sees one, "
                        "else the CPU; default), cpu, cuda, cuda:N or mps")


def _device(args):
    from .train.device import resolve_device

    return resolve_device(getattr(args, "device", "auto") or "auto", name="--device")


def _add_threads(parser, default: int) -> None:
    parser.add_argument("--threads", type=_positive_int, metavar="N", help=f"CPU threads (default {default}: "
                        "fastest on a shared machine, see the README; more can pay for large batches on idle cores)")


def _threads(requested: int | None, default: int) -> int:
    """Set torch's CPU threads to `requested` (a --threads value) or, if None, `default` capped at the cores.
    Returns the number set."""
    import os

    import torch

    n = requested if requested is not None else max(1, min(default, os.cpu_count() or 1))
    torch.set_num_threads(n)
    return n


# ---- planner and sampler options (ddlm sample, ddlm eval --gen-ppl) ------------------------------------------
def add_planner_options(parser, prefix: str = "") -> None:
    """--planner-option KEY=VALUE (alias --sampler-option), repeatable; the names listed from the registries."""
    from .sampling import sampler_options_of
    from .sampling.planners import planner_names, planner_options_of

    per_planner = "; ".join(f"{name}: {', '.join(planner_options_of(name))}" for name in planner_names())
    parser.add_argument("--planner-option", "--sampler-option", dest="planner_option", action="append",
                        default=[], metavar="KEY=VALUE",
                        help=f"{prefix}an option of the --planner of --sampler planned ({per_planner}; gumbel = "
                        "Gumbel noise on the scores, threshold = confidence to commit, schedule = linear or cosine "
                        "commits per step) or of --sampler remask (" + ", ".join(sampler_options_of("remask")) +
                        "; schedule = cap, rescale, conf or loop); repeatable; replaces the model's "
                        "sample.planner_options")


def check_planner(args, cfg) -> None:
    """--planner: a known name (a UserError lists them), given only where the run samples with --sampler planned
    (the flag, else the model's config `cfg.sample`): any other sampler would ignore it."""
    if args.planner is None:
        return
    from .sampling.planners import get_planner

    get_planner(args.planner)
    sampler = args.sampler or cfg.sample.sampler
    if sampler != "planned":
        raise UserError(f"--planner chooses the order of --sampler planned, but this run samples with {sampler!r}; "
                        "add --sampler planned")


def planner_options_from(args, cfg) -> dict | None:
    """{key: value} from --planner-option, checked against the planner (or the remask sampler) this run uses
    (the flags, else the model's config `cfg.sample`); None without the flag (the model's own options apply)."""
    if not args.planner_option:
        return None
    from .sampling.planners import parse_planner_options

    sampler = args.sampler or cfg.sample.sampler
    if sampler not in ("planned", "remask"):
        raise UserError(f"--planner-option sets options of --sampler planned (its planner) or remask, but this run "
                        f"samples with {sampler!r}; add --sampler planned or --sampler remask")
    return parse_planner_options(args.planner_option, planner=args.planner or cfg.sample.planner, sampler=sampler)
