"""Boards as people type them (spaced, nine lines, pasted back from the pretty form), the cells that break a
rule, and `make_puzzles` with exact givens. Oracles: hand-written boards and a pure-Python rule check."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddlm.tasks.sudoku.board import format_board, load_csv, parse_board
from ddlm.tasks.sudoku.generate import solve
from ddlm.errors import UserError
from test_sudoku import GRID, PUZZLE


def test_parse_board_spaced_nine_lines_and_pasted_back():
    b = parse_board(PUZZLE)
    spaced = " ".join(PUZZLE[9 * r : 9 * r + 9] for r in range(9))
    assert np.array_equal(parse_board(spaced), b)
    nine_lines = "\n".join(" ".join(PUZZLE[9 * r : 9 * r + 9]) for r in range(9)) + "\n"
    assert np.array_equal(parse_board(nine_lines), b)
    assert np.array_equal(parse_board("\t" + nine_lines.replace("0", ".").replace("\n", "\r\n")), b)
    assert np.array_equal(parse_board(format_board(b)), b)  # the pretty form, rules and bars included
    with pytest.raises(UserError, match="has 72 cells"):
        parse_board("\n".join(nine_lines.split("\n")[:8]))


def _conflicts_by_hand(digits: list[int]) -> list[int]:
    """Pure-Python oracle: the cells whose digit another cell of one of their units also holds."""
    out = []
    for i, d in enumerate(digits):
        r, c = divmod(i, 9)
        if d and any(
            j != i and digits[j] == d and (j // 9 == r or j % 9 == c or (j // 27 == i // 27 and j % 9 // 3 == c // 3))
            for j in range(81)
        ):
            out.append(i)
    return out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=81, max_size=81))
def test_conflict_cells_match_the_rules(digits):
    from ddlm.tasks.sudoku.board import conflict_cells, first_conflict

    board = np.array(digits, np.int8)
    expected = _conflicts_by_hand(digits)
    assert np.flatnonzero(conflict_cells(board)).tolist() == expected
    assert (first_conflict(board) is None) == (not expected)


def test_conflicts_of_a_known_board_and_marked_rendering():
    from ddlm.tasks.sudoku.board import conflict_cells, first_conflict

    g = parse_board(GRID)
    bad = g.copy()
    bad[0], bad[1] = g[1], g[0]  # row 1 stays a permutation; columns 1 and 2 and box 1 get repeats
    marks = conflict_cells(bad)
    assert np.flatnonzero(marks).tolist() == _conflicts_by_hand(bad.tolist())
    assert marks[0] and marks[1] and not conflict_cells(g).any()
    assert first_conflict(g) is None and first_conflict(bad) == "column 1 has two 7s"
    text = format_board(bad, marks=marks)
    assert text.count("[") == int(marks.sum()) and text.startswith("[7][6]")
    assert text.splitlines()[3] == "---------+---------+---------"
    assert format_board(bad, marks=np.zeros(81, bool)) == format_board(bad)  # no marks: the usual form


def test_make_puzzles_exact_givens_unique_solutions_and_csv_round_trip(tmp_path):
    from ddlm.tasks.sudoku.board import format_csv
    from ddlm.tasks.sudoku.generate import make_puzzles

    done = []
    P, S = make_puzzles(4, 25, seed=3, progress=done.append)
    assert done == [1, 2, 3, 4]
    assert P.shape == S.shape == (4, 81) and ((P > 0).sum(axis=1) == 25).all()  # exactly K, restarts included
    for p, g in zip(P, S):
        (only,) = solve(p, limit=2)
        assert np.array_equal(only, g)
    again = make_puzzles(4, 25, seed=3)
    assert np.array_equal(again[0], P) and np.array_equal(again[1], S)
    path = tmp_path / "p.csv"
    path.write_text(format_csv(P, S))
    P2, S2 = load_csv(path)
    assert np.array_equal(P2, P) and np.array_equal(S2, S)
    assert path.read_text().splitlines()[0] == "puzzle,solution"
    with pytest.raises(UserError, match="17..81"):
        make_puzzles(1, 16, seed=0)
    with pytest.raises(UserError, match="could not blank a grid down to 17 givens"):
        make_puzzles(1, 17, seed=0, attempts=1)  # one greedy pass stops at 22-27 givens
