"""Solving and scoring Sudoku puzzles with a masked diffusion model (Kim et al., "Train for the Worst, Plan for
the Best", ICML 2025).

A puzzle is a partially masked solution: the givens are fixed tokens, the blanks start as [MASK], and the
planned sampler commits one blank per step (by default) in the order a planner chooses, greedily (temperature
0). A board counts as solved only if it is a valid grid that keeps every given (`is_solution`); the stored
solution is used only for the cell accuracy on blanks, since a puzzle may have several valid completions.

    model = SequenceModel.from_pretrained("models/sudoku")
    puzzles, solutions = load_csv("satnet-test.csv", limit=500)
    report = evaluate_sudoku(model, puzzles, solutions, planner="top_margin")
    report["solve_rate"], report["cell_accuracy"], report["nfe"]
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from .board import DIGITS, MASK_TOKEN, N_CELLS, UNITS, from_tokens, is_solution, to_tokens
from ddlm.errors import UserError

SUDOKU_DIGITS = DIGITS  # the name other modules import


def check_sudoku_model(model) -> None:
    """Raise UserError unless `model` is a masked diffusion model over 81 cells with the digit vocabulary."""
    chars = "".join(getattr(model.tokenizer, "chars", []))
    if model.family.causal or chars != SUDOKU_DIGITS or model.cfg.model.max_len != N_CELLS:
        raise UserError(f"this model is not a Sudoku model (it needs a diffusion model with max_len 81 over the "
                        f"digits 1-9; this one is {model.family.name} over {model.tokenizer.vocab_size} tokens, "
                        f"max_len {model.cfg.model.max_len}); train one with `ddlm train --preset sudoku`")


def conflict_flags(x: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 81) bool: the filled cells of token boards x (B, 81) (MASK = 9) whose digit appears more than once in
    their row, column or box; the flag the correcting sampler re-masks by (`fixed` is not needed)."""
    units = torch.as_tensor(UNITS, device=x.device)  # (27, 9)
    tok = x[:, units]  # (B, 27, 9)
    onehot = torch.nn.functional.one_hot(tok, MASK_TOKEN + 1)[..., :MASK_TOKEN]  # (B, 27, 9, 9), MASK dropped
    counts = onehot.sum(2, keepdim=True)  # (B, 27, 1, 9) how often each digit appears in the unit
    repeated = ((onehot * counts).sum(-1) > 1)  # (B, 27, 9) the cell's digit repeats in this unit
    out = torch.zeros(x.shape, dtype=torch.long, device=x.device)
    out.scatter_add_(1, units.reshape(1, -1).expand(x.shape[0], -1), repeated.reshape(x.shape[0], -1).long())
    return out > 0


def dead_cells(x: torch.Tensor) -> torch.Tensor:
    """(B, 81) bool: the blank cells of token boards x (B, 81) for which every digit is already in their row,
    column or box (a dead end: the filled cells hold a mistake)."""
    units = torch.as_tensor(UNITS, device=x.device)  # (27, 9)
    present = torch.nn.functional.one_hot(x[:, units], MASK_TOKEN + 1)[..., :MASK_TOKEN].amax(2)  # (B, 27, 9)
    seen = torch.zeros(x.shape[0], N_CELLS, MASK_TOKEN, dtype=torch.long, device=x.device)
    idx = units.reshape(1, -1, 1).expand(x.shape[0], -1, MASK_TOKEN)
    seen.scatter_add_(1, idx, present[:, :, None, :].expand(-1, -1, 9, -1).reshape(x.shape[0], -1, MASK_TOKEN))
    return (x == MASK_TOKEN) & (seen > 0).all(-1)


def sudoku_flags(x: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """The correcting sampler's flag for Sudoku (B, 81) bool: filled cells that repeat a digit in a unit
    (`conflict_flags`) and blank cells left with no possible digit (`dead_cells`)."""
    return conflict_flags(x) | dead_cells(x)


def _planner(planner, planner_options: dict | None):
    from ddlm.sampling.planners import Planner, get_planner

    if isinstance(planner, Planner):
        return planner
    return get_planner(planner, **(planner_options or {}))


class SymmetryEnsemble(torch.nn.Module):
    """A denoiser that looks at each board in `views` ways and averages what it sees: row b is shown to the
    backbone as itself and under views - 1 random Sudoku symmetries (fixed per row for the whole solve), each
    view's p(digit | board) is mapped back to the original cells and digits, and the probabilities are averaged
    (an ensemble over the symmetry group, test-time augmentation). Costs `views` backbone rows per row.

    Same call as the backbone: x (b, 81) tokens (digit d = token d - 1, MASK = 9) -> (b, 81, 10) logits whose
    first 9 entries are the averaged log-probabilities. `select_rows(idx)` says which of the n rows come next
    (the sampler's row cache evaluates only rows that changed)."""

    def __init__(self, backbone, n: int, views: int, rng: np.random.Generator):
        super().__init__()
        from .generate import random_symmetries

        self.backbone, self.views = backbone, views
        cells, digits = random_symmetries(n * views, rng)
        cells, digits = cells.reshape(n, views, N_CELLS), digits.reshape(n, views, 10)
        cells[:, 0], digits[:, 0] = np.arange(N_CELLS), np.arange(10)  # view 0: the board itself
        device = next(backbone.parameters()).device
        self.cells = torch.as_tensor(cells, device=device)  # (n, K, 81): view cell j shows original cell cells[j]
        self.digits = torch.as_tensor(digits, dtype=torch.long, device=device)  # (n, K, 10): digit d shows as digits[d]
        self._rows = None

    @property
    def time_conditioned(self) -> bool:
        return getattr(self.backbone, "time_conditioned", False)

    def select_rows(self, idx: torch.Tensor) -> None:
        self._rows = idx

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        rows, self._rows = self._rows, None
        if rows is None:
            rows = torch.arange(x.shape[0], device=x.device)
        b, K = x.shape[0], self.views
        cells, digits = self.cells[rows], self.digits[rows]  # (b, K, 81), (b, K, 10)
        board = torch.where(x == MASK_TOKEN, 0, x + 1)  # (b, 81) digits, 0 = blank
        moved = torch.gather(board[:, None].expand(b, K, N_CELLS), 2, cells)  # (b, K, 81)
        shown = torch.gather(digits, 2, moved)  # relabelled digits, 0 stays 0
        view_x = torch.where(shown == 0, MASK_TOKEN, shown - 1).reshape(b * K, N_CELLS)
        view_t = None if t is None else t.repeat_interleave(K)
        logits = self.backbone(view_x, view_t)[..., :9].float().reshape(b, K, N_CELLS, 9)
        logp = torch.log_softmax(logits, dim=-1)
        # back to the original digits: original digit d (class d - 1) was shown as digits[d] (class digits[d] - 1)
        back = torch.gather(logp, 3, (digits[:, :, None, 1:] - 1).expand(b, K, N_CELLS, 9))
        # back to the original cells: view cell j is original cell cells[j]
        orig = torch.empty_like(back).scatter_(2, cells[..., None].expand(b, K, N_CELLS, 9), back)
        avg = torch.logsumexp(orig, dim=1) - math.log(K)  # (b, 81, 9) log of the mean probability
        return torch.cat([avg, torch.zeros_like(avg[..., :1])], dim=-1)


SAMPLERS = ("planned", "remask")
REMASK_SCHEDULES = ("conflict", "cap", "rescale", "conf", "loop")  # conflict: sampling/correct.py; others: ReMDM
# measured on RRN validation (benchmarks/sudoku.py --remask): backtrack to the least confident commit as soon as
# a rule breaks or a blank is left with no digit, forbidding that digit for two rounds
REMASK_DEFAULTS = {"schedule": "conflict", "budget": 56, "when": "early", "back": 1, "ban": 2}


def remask_options(options: dict | None) -> dict:
    """The Sudoku re-masking options, defaults filled in: schedule (conflict: re-mask the cells that break a
    rule, `CorrectRule`; cap, rescale, conf, loop: ReMDM), budget (correction steps after the first pass, so at
    most blanks + budget NFE per puzzle) and the schedule's own options (`CorrectRule`, `RemaskRule`); the
    defaults are the conflict schedule's for every schedule that takes them."""
    from ddlm.sampling.correct import CorrectRule
    from ddlm.sampling.remask import RemaskRule

    options = dict(options or {})
    opts = {**REMASK_DEFAULTS, **options}
    if opts["schedule"] != "conflict":  # a ReMDM schedule keeps only what it takes
        opts = {"schedule": opts["schedule"], "budget": REMASK_DEFAULTS["budget"], **options}
    if opts["schedule"] not in REMASK_SCHEDULES:
        raise UserError(f"unknown re-masking schedule {opts['schedule']!r} for Sudoku; choose one of "
                        f"{', '.join(REMASK_SCHEDULES)}")
    allowed = {"schedule"} | set(CorrectRule.options if opts["schedule"] == "conflict" else
                                 RemaskRule.options + ("budget",))
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise UserError(f"the {opts['schedule']} schedule does not take option(s) {', '.join(unknown)}; its "
                        f"options: {', '.join(sorted(allowed - {'schedule'}))}")
    try:
        opts["budget"] = int(opts["budget"])
    except (TypeError, ValueError):
        raise UserError(f"the re-masking budget must be a whole number, got {opts['budget']!r}") from None
    if opts["budget"] < 0:
        raise UserError(f"the re-masking budget must be >= 0, got {opts['budget']}")
    return opts


def _sample(net, model, n, steps, plan, sampler, remask, temperature, fixed, given, generator, hooks=None):
    """One batch through the chosen sampler: planned (one blank per step by default), the conflict re-masker
    (`CorrectRule` with `conflict_flags`) or a ReMDM schedule (every row evaluated at every step)."""
    from ddlm.sampling.core import run
    from ddlm.sampling.correct import CorrectRule
    from ddlm.sampling.loop import sample_masked

    if sampler == "planned":
        return sample_masked(net, model.process, n, N_CELLS, steps, rule="planned", planner=plan,
                             temperature=temperature, cached=True, fixed=fixed, fixed_mask=given,
                             generator=generator, hooks=hooks)
    opts = dict(remask)
    schedule, budget = opts.pop("schedule"), opts.pop("budget")
    if schedule == "conflict":
        rule = CorrectRule(model.process, plan, sudoku_flags, budget=budget, temperature=temperature,
                           cached=True, **opts)
        return run(rule, net, model.process, n, N_CELLS, steps, temperature=temperature, fixed=fixed,
                   fixed_mask=given, generator=generator, hooks=hooks)
    return sample_masked(net, model.process, n, N_CELLS, steps + budget, rule="remask", temperature=temperature,
                         fixed=fixed, fixed_mask=given, generator=generator, remask={"schedule": schedule, **opts},
                         hooks=hooks)


def solve_puzzles(model, puzzles, *, planner="top_margin", planner_options: dict | None = None,
                  steps: int | None = None, temperature: float = 0.0, batch_size: int = 256, seed: int = 0,
                  views: int = 1, progress: bool = False, sampler: str = "planned",
                  remask: dict | None = None, observer=None) -> dict:
    """Fill the blanks of `puzzles` (N, 81) int (0 = blank) with the model.

    steps=None commits one blank per step (each row takes as many steps as it has blanks); steps=S commits
    ceil(blanks_left / steps_left) cells per step, so every puzzle finishes in S steps.
    sampler="remask" adds re-masking (`remask_options(remask)`): the conflict schedule re-decodes the cells that
    break a rule within `budget` more steps; a ReMDM schedule walks steps + budget steps.
    observer: called with every intermediate sampling state (tokens (b, 81), 9 = blank; `sampling.stream`).
    Returns {"boards": (N, 81) int8, "nfe": network calls summed over batches, "row_evals": puzzle-evaluations
    (the per-puzzle cost: NFE per puzzle = row_evals / N), "seconds": wall time}.
    """
    from ddlm.sampling.stream import attach_observer

    check_sudoku_model(model)
    puzzles = np.asarray(puzzles)
    if puzzles.ndim != 2 or puzzles.shape[1] != N_CELLS:
        raise UserError(f"puzzles must have shape (N, 81), got {tuple(puzzles.shape)}")
    if batch_size <= 0:
        raise UserError(f"batch_size must be positive, got {batch_size}")
    if steps is not None and steps <= 0:
        raise UserError(f"the number of steps must be positive, got {steps}")
    if views < 1:
        raise UserError(f"views must be at least 1, got {views}")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown Sudoku sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    remask = remask_options(remask) if sampler == "remask" else None
    plan = _planner(planner, planner_options)
    generator = torch.Generator(device=model.device).manual_seed(seed)  # draws happen on the model's device
    device = model.device
    boards = np.zeros(puzzles.shape, np.int8)
    nfe = row_evals = 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        # a bar only on a terminal: in a log file its carriage returns pile up
        bar = tqdm(total=len(puzzles), desc="solving", unit="puzzle", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty())
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        for lo in range(0, len(puzzles), batch_size):
            p = puzzles[lo: lo + batch_size]
            tokens = torch.from_numpy(to_tokens(p))  # (b, 81), blanks = MASK
            given = tokens != MASK_TOKEN  # (b, 81)
            blanks = int((~given).sum(-1).max()) if len(p) else 0
            if blanks == 0:  # nothing to fill in
                boards[lo: lo + len(p)] = p
            else:
                # One blank per step for every row: a row with fewer blanks commits ceil(m / steps_left) = 1 per
                # step too, and the cache skips it once it is full.
                net = model.backbone
                if views > 1:
                    net = SymmetryEnsemble(model.backbone, len(p), views, np.random.default_rng([seed, lo]))
                out = _sample(net, model, len(p), steps or blanks, plan, sampler, remask, temperature,
                              torch.where(given, tokens, 0).to(device), given.to(device), generator,
                              None if observer is None else attach_observer(None, observer))
                boards[lo: lo + len(p)] = from_tokens(out.tokens.cpu().numpy())
                nfe += out.nfe
                row_evals += out.row_evals * views  # the backbone saw every view of every evaluated row
            if bar is not None:
                bar.update(len(p))
    finally:
        model.backbone.train(was_training)
        if bar is not None:
            bar.close()
    return {"boards": boards, "nfe": nfe, "row_evals": row_evals, "seconds": time.perf_counter() - start}


def score_boards(boards, puzzles, solutions=None) -> dict:
    """Solve rate (valid grid keeping every given) and, with `solutions`, accuracy on the blank cells."""
    boards, puzzles = np.asarray(boards), np.asarray(puzzles)
    solved = is_solution(boards, puzzles)  # (N,)
    out = {"n": int(len(puzzles)), "solved": int(solved.sum()),
           "solve_rate": float(solved.mean()) if len(puzzles) else 0.0, "solved_mask": solved}
    if solutions is not None:
        blank = np.asarray(puzzles) == 0  # (N, 81)
        right = (boards == np.asarray(solutions)) & blank
        out["cell_accuracy"] = float(right.sum() / max(int(blank.sum()), 1))
    return out


RETRIES = ("symmetry", "gumbel")


def evaluate_sudoku(model, puzzles, solutions=None, *, planner="top_margin", planner_options: dict | None = None,
                    steps: int | None = None, temperature: float = 0.0, batch_size: int = 256, seed: int = 0,
                    tries: int = 1, retry: str = "symmetry", retry_gumbel: float = 0.1, views: int = 1,
                    progress: bool = False, sampler: str = "planned", remask: dict | None = None,
                    observer=None) -> dict:
    """Solve and score: {n, solved, solve_rate, cell_accuracy, nfe (per puzzle, a mean), nfe_total (network calls),
    row_evals (puzzle-evaluations summed over puzzles, an int: the NFE of one puzzle when N = 1), seconds,
    seconds_per_puzzle, tries, retry, views, sampler, remask (its options, or None), solved_first_try,
    solve_rate_first_try, solved_by_try (solved after each try that ran), nfe_by_try (NFE per puzzle after
    each try), givens (N,), solved_mask (N,), first_try_mask (N,), boards (N, 81)}.

    sampler="remask": each try re-masks and re-decodes the cells that break a rule (or a ReMDM schedule; see
    `solve_puzzles`); its correction steps count in the NFE.

    tries > 1: a board that breaks a rule (checked against the givens alone, never the stored solution) is
    solved again, up to `tries` times in all. retry="symmetry" solves the puzzle under a random Sudoku
    symmetry (bands, rows, stacks, columns, transposition, digit relabelling) and maps the board back: the same
    puzzle seen from elsewhere, so the model takes other decisions, with its planner unchanged.
    retry="gumbel" perturbs the planner's scores by `retry_gumbel` * Gumbel noise instead (planners without a
    gumbel option just draw fresh randomness). The cost of every try counts in the NFE.

    views > 1: the denoiser averages its probabilities over the board and views - 1 random symmetries of it
    (`SymmetryEnsemble`); NFE counts every view.

    observer: every intermediate state of every try (`solve_puzzles`); a symmetry retry shows the board as the
    model sees it, transformed.
    """
    from .generate import apply_symmetries, random_symmetries, undo_symmetries

    if tries < 1:
        raise UserError(f"tries must be at least 1, got {tries}")
    if retry not in RETRIES:
        raise UserError(f"unknown retry {retry!r}; choose one of {', '.join(RETRIES)}")
    puzzles = np.asarray(puzzles)
    res = solve_puzzles(model, puzzles, planner=planner, planner_options=planner_options, steps=steps,
                        temperature=temperature, batch_size=batch_size, seed=seed, views=views, progress=progress,
                        sampler=sampler, remask=remask, observer=observer)
    boards, row_evals, nfe, seconds = res["boards"], res["row_evals"], res["nfe"], res["seconds"]
    solved = is_solution(boards, puzzles)  # (N,) judged by the givens alone
    first_try_mask = solved.copy()
    solved_by_try, n = [int(solved.sum())], max(len(puzzles), 1)
    nfe_by_try = [row_evals / n]
    again_planner = _planner(planner, planner_options)
    if retry == "gumbel" and "gumbel" in again_planner.options and retry_gumbel > 0:
        again_planner = _planner(planner, {**(planner_options or {}), "gumbel": retry_gumbel})
    rng = np.random.default_rng(seed)
    for attempt in range(1, tries):
        todo = np.flatnonzero(~solved)
        if not len(todo):
            break
        todo_puzzles = puzzles[todo]
        if retry == "symmetry":
            cells, digits = random_symmetries(len(todo), rng)
            todo_puzzles = apply_symmetries(todo_puzzles, cells, digits)
        again = solve_puzzles(model, todo_puzzles, planner=again_planner, steps=steps, temperature=temperature,
                              batch_size=batch_size, seed=seed + attempt, views=views, progress=progress,
                              sampler=sampler, remask=remask, observer=observer)
        boards[todo] = undo_symmetries(again["boards"], cells, digits) if retry == "symmetry" else again["boards"]
        row_evals, nfe, seconds = row_evals + again["row_evals"], nfe + again["nfe"], seconds + again["seconds"]
        solved[todo] = is_solution(boards[todo], puzzles[todo])
        solved_by_try.append(int(solved.sum()))
        nfe_by_try.append(row_evals / n)
    score = score_boards(boards, puzzles, solutions)
    score.update(nfe=row_evals / n, nfe_total=int(nfe), row_evals=int(row_evals), seconds=seconds, seconds_per_puzzle=seconds / n, tries=tries,
                 retry=retry, views=views, sampler=sampler, remask=remask_options(remask) if sampler == "remask"
                 else None, solved_first_try=solved_by_try[0], solved_by_try=solved_by_try, nfe_by_try=nfe_by_try,
                 solve_rate_first_try=solved_by_try[0] / n if score["n"] else 0.0,
                 givens=(puzzles != 0).sum(-1), boards=boards, first_try_mask=first_try_mask)
    return score


def public_metrics(report: dict) -> dict:
    """The JSON-ready part of an `evaluate_sudoku` report (no arrays)."""
    return {k: v for k, v in report.items() if not isinstance(v, np.ndarray)}
