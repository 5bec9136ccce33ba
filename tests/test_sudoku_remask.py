"""Self-correction on Sudoku: the correcting step rule (`sampling/correct.py`) and `--sampler remask`.

Exact oracles: without a re-masking budget (or with a flag that never fires) the rule is plain top-margin
planning token for token; a trap oracle that commits one wrong digit makes a single pass fail and re-masking
repair it, at an NFE counted call by call."""

import json

import numpy as np
import pytest
import torch

from ddlm.cli import main
from ddlm.tasks.sudoku.board import conflict_cells, to_tokens
from ddlm.errors import UserError
from ddlm.tasks.sudoku.solve import conflict_flags, dead_cells, evaluate_sudoku, sudoku_flags
from ddlm.pipeline import SequenceModel
from ddlm.sampling.core import run
from ddlm.sampling.correct import CorrectRule
from ddlm.sampling.loop import sample_masked
from ddlm.sampling.planners import get_planner
from test_sudoku_task import MODEL, _oracle_model, _patch_model, _puzzles, _TrapBackbone, _write_csv


def _trap_model(puzzle, grid):
    """The answer oracle of `grid`, sure of a wrong digit at the first blank d while the last blank c is masked:
    top-margin (ties to the lowest index) commits d wrongly first; once c is filled it answers d rightly."""
    d, c = np.flatnonzero(puzzle == 0)[[0, -1]]
    model = _oracle_model(grid)
    model.backbone = _TrapBackbone(grid, c, d)
    return model, d


def test_flags_match_the_numpy_checker():
    rng = np.random.default_rng(3)
    boards = rng.integers(0, 10, (50, 81)) * (rng.random((50, 81)) < 0.7)
    x = torch.from_numpy(to_tokens(boards))
    assert (conflict_flags(x).numpy() == np.stack([conflict_cells(b) for b in boards])).all()
    # a blank whose row, column and box already hold all nine digits is dead, and only such a blank
    board = np.zeros(81, np.int64)
    board[1:9] = np.arange(1, 9)  # row 0 holds 1..8
    board[9 * 4] = 9  # column 0 holds 9 (row 4)
    dead = dead_cells(torch.from_numpy(to_tokens(board[None])))[0]
    assert dead.nonzero()[:, 0].tolist() == [0]
    assert (sudoku_flags(torch.from_numpy(to_tokens(board[None])))[0] == dead).all()


@pytest.mark.parametrize("flag, budget", [(None, 0), (sudoku_flags, 0), (lambda x, f: torch.zeros_like(f), 30)])
def test_no_budget_or_no_flag_is_plain_top_margin_token_for_token(flag, budget):
    puzzles, _ = _puzzles(6, 24, 5)
    model = SequenceModel.from_pretrained(MODEL)  # the committed model: it makes real mistakes on 24 givens
    model.backbone.eval()
    tok = torch.from_numpy(to_tokens(puzzles))
    given = tok != 9
    steps = int((~given).sum(-1).max())
    kw = dict(temperature=0.0, fixed=torch.where(given, tok, 0), fixed_mask=given)
    plain = sample_masked(model.backbone, model.process, 6, 81, steps, rule="planned",
                          planner=get_planner("top_margin"), cached=True, **kw)
    rule = CorrectRule(model.process, get_planner("top_margin"), flag, budget=budget)
    mine = run(rule, model.backbone, model.process, 6, 81, steps, **kw)
    assert torch.equal(mine.tokens, plain.tokens)
    assert mine.row_evals == plain.row_evals == int((~given).sum())


@pytest.mark.parametrize("when", ["full", "early"])
def test_remasking_repairs_a_wrong_commit_that_a_single_pass_keeps(when):
    (puzzle,), (grid,) = _puzzles(1, 40, 6)
    model, d = _trap_model(puzzle, grid)
    blanks = int((puzzle == 0).sum())
    one = evaluate_sudoku(model, puzzle[None], grid[None], planner="top_margin")
    board = one["boards"][0]
    assert one["solved"] == 0 and board[d] != grid[d] and (board == grid).sum() == 80
    rep = evaluate_sudoku(model, puzzle[None], grid[None], planner="top_margin", sampler="remask",
                          remask={"schedule": "conflict", "budget": 10, "when": when, "back": 0, "ban": 1})
    assert rep["solved"] == 1 and (rep["boards"][0] == grid).all()
    if when == "full":
        # one round at the end: the cells that break a rule (d, and its twins in row, column and box unless
        # given) are re-masked and each costs exactly one more network call
        flagged = int((conflict_cells(board) & (puzzle == 0)).sum())
        assert 2 <= flagged <= 4 and rep["nfe"] == rep["row_evals"] == blanks + flagged
    else:
        assert blanks < rep["nfe"] <= blanks + 4
    # backtracking (the Sudoku default): the least confident commit (ties: d, committed first) and all after it
    # are re-masked and d's wrong digit is forbidden. Once the board is full that is every blank again: exactly
    # two passes. Early, d's digit repeats a given at once, d is re-masked at step 0 and the board is the
    # start's again, whose output the row cache still holds: no extra network call at all.
    back = evaluate_sudoku(model, puzzle[None], grid[None], planner="top_margin", sampler="remask",
                           remask={"budget": blanks, "when": when})
    assert back["solved"] == 1 and back["remask"]["back"] == 1
    assert back["nfe"] == (2 * blanks if when == "full" else blanks)
    # too small a budget to re-decode anything: the single pass's board, at the single pass's cost
    none = evaluate_sudoku(model, puzzle[None], grid[None], planner="top_margin", sampler="remask",
                           remask={"budget": 0})
    assert (none["boards"] == one["boards"]).all() and none["nfe"] == one["nfe"] == blanks


def test_remdm_schedule_counts_every_step():
    # ReMDM evaluates every row at every step: NFE per puzzle = blanks + budget exactly (no row cache)
    puzzles, grids = _puzzles(2, 50, 9)
    model = _oracle_model(grids[0])
    rep = evaluate_sudoku(model, puzzles[:1], grids[:1], planner="top_margin", sampler="remask",
                          remask={"schedule": "conf", "budget": 7})
    assert rep["solved"] == 1 and rep["nfe"] == int((puzzles[0] == 0).sum()) + 7
    with pytest.raises(UserError, match="unknown re-masking schedule 'nope'"):
        evaluate_sudoku(model, puzzles, sampler="remask", remask={"schedule": "nope"})
    with pytest.raises(UserError, match="does not take option"):
        evaluate_sudoku(model, puzzles, sampler="remask", remask={"eta": 0.5})
    with pytest.raises(UserError, match="unknown Sudoku sampler"):
        evaluate_sudoku(model, puzzles, sampler="ancestral")


def test_cli_eval_and_solve_with_remask(tmp_path, monkeypatch, capsys):
    (puzzle,), (grid,) = _puzzles(1, 40, 6)
    model, _ = _trap_model(puzzle, grid)
    _patch_model(monkeypatch, model)
    path = _write_csv(tmp_path / "p.csv", puzzle[None], grid[None])
    blanks = int((puzzle == 0).sum())
    assert main(["eval", str(tmp_path), "--task", "sudoku", "--data", str(path), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["solved"] == 0 and plain["sampler"] == "planned" and plain["row_evals"] == blanks
    assert main(["eval", str(tmp_path), "--task", "sudoku", "--data", str(path), "--json", "--sampler",
                 "remask"]) == 0
    m = json.loads(capsys.readouterr().out)
    direct = evaluate_sudoku(model, puzzle[None], grid[None], sampler="remask")
    assert m["solved"] == 1 and m["sampler"] == "remask" and m["remask"] == direct["remask"]
    assert m["row_evals"] == direct["row_evals"] >= blanks and m["nfe"] == direct["nfe"]
    text = "".join(str(v) for v in puzzle)
    assert main(["sudoku", "solve", text, "--model", str(tmp_path), "--sampler", "remask", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["solved"] and s["nfe"] == m["row_evals"] and s["board"] == "".join(str(v) for v in grid)
    assert main(["sudoku", "solve", text, "--model", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["nfe"] == blanks


@pytest.mark.parametrize("extra, words", [
    (["--sampler", "remask", "--remask-option", "nope=1"], "does not take option(s) nope"),
    (["--sampler", "remask", "--remask-option", "back"], "takes KEY=VALUE"),
    (["--sampler", "remask", "--remask-option", "budget=lots"], "must be a number"),
    (["--remask-option", "budget=3"], "needs --sampler remask"),
    (["--sampler", "ancestral"], "not a Sudoku sampler"),
])
def test_remask_cli_errors_are_one_line(extra, words, capsys):
    assert main(["eval", str(MODEL), "--task", "sudoku", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
