"""Sudoku boards: parsing, CSV loading, checking, tokens, solving and generating.

Oracles: hand-written boards, a pure-Python consistency check, the published solutions of the
shared SATNet/RRN test sets (in `shared/data/sudoku` beside the repository, where CI puts them; skipped, and
listed at the end of the run, where that folder is absent), and brute-force enumeration of
every completion of puzzles with a few blanks.
"""

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddlm.tasks.sudoku.board import (
    MASK_TOKEN,
    VOCAB_SIZE,
    format_board,
    from_tokens,
    grid_coordinates,
    is_solution,
    is_valid_grid,
    load_csv,
    parse_board,
    to_tokens,
)
from ddlm.tasks.sudoku.generate import make_puzzle, random_grid, random_grids, solve
from ddlm.errors import UserError

# the repository root is parents[2]; its sibling shared/ holds the public test sets
SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sudoku").resolve()
RRN = SHARED / "rrn-validation.csv"
SATNET = SHARED / "satnet-test.csv"

# A complete valid grid and a puzzle of it (first line of the SATNet test set, copied by hand).
GRID = "678312945153649782942875136265731894394286571781594623529468317417953268836127459"
PUZZLE = "670000005003040082040005136000730090304206070001090600509008000000950208000127400"


def _first_lines(path: Path, n: int) -> list[str]:
    if not path.exists():
        pytest.skip(f"{path} not available")
    with open(path) as f:
        return [next(f).strip() for _ in range(n)]


def _consistent(digits: list[int]) -> bool:
    """Pure-Python oracle: no digit twice in any row, column or box (0 = blank)."""
    for r, c in itertools.product(range(9), repeat=2):
        d = digits[9 * r + c]
        if not d:
            continue
        for r2, c2 in itertools.product(range(9), repeat=2):
            same_unit = r2 == r or c2 == c or (r2 // 3 == r // 3 and c2 // 3 == c // 3)
            if (r2, c2) != (r, c) and same_unit and digits[9 * r2 + c2] == d:
                return False
    return True


# ---------------------------------------------------------------------------------------- parsing


def test_parse_board_zero_and_dot_blanks_and_outer_whitespace():
    b = parse_board(PUZZLE)
    assert b.shape == (81,) and b.dtype == np.int8
    assert b.tolist() == [int(ch) for ch in PUZZLE]
    assert np.array_equal(parse_board("  " + PUZZLE.replace("0", ".") + "\n"), b)
    assert np.array_equal(parse_board(GRID), np.array([int(ch) for ch in GRID], np.int8))
    assert not parse_board("." * 81).any()


def _put(cells: dict[tuple[int, int], int]) -> str:
    s = ["0"] * 81
    for (r, c), d in cells.items():
        s[9 * (r - 1) + (c - 1)] = str(d)
    return "".join(s)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0" * 80, r"has 80 cells .*needs 81"),
        ("0" * 82, r"has 82 cells .*needs 81"),
        ("", r"has 0 cells .*needs 81"),
        ("x" + "0" * 80, r"contains 'x'"),
        ("0" * 40 + " " + "0" * 40, r"has 80 cells"),  # spaces are ignored, not cells
        ("a-b" + "0" * 79, r"contains 'a', 'b'"),
        ("[1]" + "0" * 80, r"contains '\[', '\]'"),
        (_put({(3, 2): 5, (3, 8): 5}), r"row 3 has two 5s"),
        (_put({(1, 4): 7, (6, 4): 7, (9, 4): 7}), r"column 4 has three 7s"),
        (_put({(4, 7): 1, (6, 9): 1}), r"box 6 .*has two 1s"),
    ],
)
def test_parse_board_errors(text, expected):
    with pytest.raises(UserError, match=expected):
        parse_board(text)


def test_parse_board_rejects_non_strings():
    with pytest.raises(UserError, match="string"):
        parse_board(123)


def _sparse_boards():
    cells = st.dictionaries(st.integers(0, 80), st.integers(1, 9), max_size=12)
    return cells.map(lambda d: "".join(str(d.get(i, 0)) for i in range(81)))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="0123456789.x \n|-+", min_size=75, max_size=95), _sparse_boards()))
def test_parse_board_returns_a_consistent_board_or_raises_user_error(text):
    core = "".join(ch for ch in text if not ch.isspace() and ch not in "|-+")
    ok = len(core) == 81 and all(ch in "0123456789." for ch in core)
    digits = [0 if ch == "." else int(ch) for ch in core] if ok else []
    ok = ok and _consistent(digits)
    try:
        board = parse_board(text)
    except UserError:
        assert not ok
        return
    assert ok
    assert board.shape == (81,) and board.dtype == np.int8
    assert board.tolist() == digits


# ------------------------------------------------------------------------------------- formatting


def test_format_board_pretty_and_compact():
    b = parse_board(PUZZLE)
    expected = "\n".join(
        [
            "6 7 . | . . . | . . 5",
            ". . 3 | . 4 . | . 8 2",
            ". 4 . | . . 5 | 1 3 6",
            "------+-------+------",
            ". . . | 7 3 . | . 9 .",
            "3 . 4 | 2 . 6 | . 7 .",
            ". . 1 | . 9 . | 6 . .",
            "------+-------+------",
            "5 . 9 | . . 8 | . . .",
            ". . . | 9 5 . | 2 . 8",
            ". . . | 1 2 7 | 4 . .",
        ]
    )
    assert format_board(b) == expected
    assert format_board(b, pretty=False) == PUZZLE
    stripped = "".join(ch for ch in format_board(b) if ch not in "|-+ \n")
    assert np.array_equal(parse_board(stripped), b)
    with pytest.raises(UserError):
        format_board(np.zeros(80, np.int8))


# -------------------------------------------------------------------------------------- load_csv


def test_load_csv_header_spaces_blank_lines_and_limit(tmp_path):
    lines = _first_lines(SATNET, 5) + _first_lines(RRN, 5)
    text = "quizzes,solutions\n"
    for k, line in enumerate(lines):
        p, s = line.split(",")
        if k % 2:
            p = p.replace("0", ".")
        text += f"{p},  {s}\n" + ("\n" if k == 3 else "")
    path = tmp_path / "boards.csv"
    path.write_text(text)
    P, S = load_csv(path)
    assert P.shape == S.shape == (10, 81) and P.dtype == S.dtype == np.int8
    for k, line in enumerate(lines):
        p, s = line.split(",")
        assert np.array_equal(P[k], parse_board(p)) and np.array_equal(S[k], parse_board(s))
    P3, S3 = load_csv(str(path), limit=3)
    assert np.array_equal(P3, P[:3]) and np.array_equal(S3, S[:3])


def test_load_csv_shared_files_whole(tmp_path):
    if not RRN.exists():
        pytest.skip(f"{RRN} not available")
    P, S = load_csv(RRN)
    assert P.shape == (18000, 81)
    counts = (P > 0).sum(axis=1)
    assert counts.min() == 17


GOOD = f"{PUZZLE},{GRID}"
BAD_SOLUTION = GRID[1] + GRID[0] + GRID[2:]  # two cells swapped: rows stay fine, columns do not


@pytest.mark.parametrize(
    "line, expected",
    [
        (PUZZLE[:-1] + "," + GRID, r"puzzle has 80 characters but 81"),
        (PUZZLE + "," + GRID + "1", r"solution has 82 characters but 81"),
        ("x" + PUZZLE[1:] + "," + GRID, r"puzzle contains 'x'"),
        (PUZZLE + "," + "é" + GRID[1:], r"solution contains 'é'"),
        (PUZZLE + "," + GRID + "," + GRID, r"expected 2 comma-separated fields.*found 3"),
        (PUZZLE[:2] + "6" + PUZZLE[3:] + "," + GRID, r"row 1 has two 6s"),
        (PUZZLE + "," + BAD_SOLUTION, r"not a complete valid Sudoku grid"),
        (PUZZLE.replace("670", "170", 1) + "," + GRID, r"changes the given 1 at row 1, column 1 to 6"),
    ],
)
def test_load_csv_broken_line_is_named(tmp_path, line, expected):
    path = tmp_path / "broken.csv"
    path.write_text("puzzle,solution\n" + GOOD + "\n\n" + GOOD + "\n" + line + "\n" + GOOD + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"broken\.csv, line 5: .*{expected}.*; fix or remove that line"):
        load_csv(path)


def test_load_csv_missing_empty_and_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_csv(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="directory"):
        load_csv(tmp_path)
    (tmp_path / "empty.csv").write_text("puzzle,solution\n\n")
    with pytest.raises(UserError, match="no puzzles"):
        load_csv(tmp_path / "empty.csv")


# ----------------------------------------------------------------------------- validity checking


def _shared_solutions(path: Path):
    if not path.exists():
        pytest.skip(f"{path} not available")
    return load_csv(path)


@pytest.mark.parametrize("path", [SATNET, RRN], ids=["satnet", "rrn"])
def test_shared_solutions_valid_and_corruptions_caught(path):
    P, S = _shared_solutions(path)
    assert is_valid_grid(S).all() and is_solution(S, P).all()
    assert not is_valid_grid(P).any()  # puzzles have blanks
    rng = np.random.default_rng(0)
    n = len(S)
    # Swap two cells holding different digits (same row, so only the columns break).
    swapped = S.copy()
    r = rng.integers(9, size=n)
    c1 = rng.integers(9, size=n)
    c2 = (c1 + rng.integers(1, 9, size=n)) % 9
    a, b = 9 * r + c1, 9 * r + c2
    rows = np.arange(n)
    swapped[rows, a], swapped[rows, b] = S[rows, b], S[rows, a]
    assert not is_valid_grid(swapped).any()
    # Change one given of each puzzle: the true solution no longer keeps it.
    changed = P[:500].copy()
    cell = np.array([rng.choice(np.flatnonzero(p)) for p in P[:500]])
    changed[rows[:500], cell] = P[rows[:500], cell] % 9 + 1
    assert not is_solution(S[:500], changed).any()
    assert is_valid_grid(S[:500]).all()


def test_is_valid_grid_shapes_and_values():
    g = parse_board(GRID)
    assert is_valid_grid(g).shape == () and bool(is_valid_grid(g))
    stack = np.stack([g, g, g, g, g, g]).reshape(2, 3, 81)
    assert is_valid_grid(stack).shape == (2, 3)
    assert is_solution(g, parse_board(PUZZLE)) and not is_solution(g, parse_board(GRID[::-1]))
    bad = g.copy()
    bad[0] = 10  # out of range
    assert not is_valid_grid(bad)
    shifted = (g % 9).astype(np.int8)  # digits 0..8: 0 is a blank, not a digit
    assert not is_valid_grid(shifted)
    with pytest.raises(UserError):
        is_valid_grid(np.zeros((2, 80)))


def test_tokens_round_trip_and_coordinates():
    assert VOCAB_SIZE == 9 and MASK_TOKEN == 9
    p = parse_board(PUZZLE)
    t = to_tokens(p)
    assert t.shape == (81,) and t.min() >= 0 and t.max() <= 9
    assert np.array_equal(t == MASK_TOKEN, p == 0)
    assert np.array_equal(t[p > 0], p[p > 0] - 1)
    assert np.array_equal(from_tokens(t), p) and from_tokens(t).dtype == np.int8
    batch = np.stack([p, parse_board(GRID)])
    assert np.array_equal(from_tokens(to_tokens(batch)), batch)
    with pytest.raises(UserError):
        from_tokens(np.array([10]))
    with pytest.raises(UserError):
        to_tokens(np.full(81, 11))

    coords = grid_coordinates()
    assert coords.shape == (81, 3)
    for i in range(81):
        r, c = divmod(i, 9)
        assert coords[i].tolist() == [r, c, 3 * (r // 3) + c // 3]


# --------------------------------------------------------------------------------------- solving


def test_solve_known_rrn_17_given_puzzles():
    if not RRN.exists():
        pytest.skip(f"{RRN} not available")
    P, S = load_csv(RRN, limit=2000)
    hard = np.flatnonzero((P > 0).sum(axis=1) == 17)[:8]
    assert len(hard) == 8
    for i in hard:
        (solution,) = solve(P[i])
        assert np.array_equal(solution, S[i])


def _brute_force(puzzle: np.ndarray) -> set[bytes]:
    """Every completion of the blanks that is a valid grid (oracle for <= 5 blanks)."""
    blanks = np.flatnonzero(puzzle == 0)
    fills = np.array(list(itertools.product(range(1, 10), repeat=len(blanks))), np.int8)
    grids = np.repeat(puzzle[None], len(fills), axis=0)
    grids[:, blanks] = fills
    return {g.tobytes() for g in grids[is_valid_grid(grids)]}


def _deadly_rectangle(grid: np.ndarray):
    """Four cells (r1,c1),(r1,c2),(r2,c1),(r2,c2) in two boxes holding a b / b a, if any."""
    g = grid.reshape(9, 9)
    for r1, r2 in itertools.combinations(range(9), 2):
        for c1, c2 in itertools.combinations(range(9), 2):
            two_boxes = (r1 // 3 == r2 // 3) != (c1 // 3 == c2 // 3)
            if two_boxes and g[r1, c1] == g[r2, c2] and g[r1, c2] == g[r2, c1]:
                return [9 * r1 + c1, 9 * r1 + c2, 9 * r2 + c1, 9 * r2 + c2]
    return None


def test_solve_matches_brute_force_enumeration():
    rng = np.random.default_rng(3)
    found_two = 0
    for _ in range(12):
        grid = random_grid(rng)
        rect = _deadly_rectangle(grid)
        blanks = rect + [int(rng.integers(81))] if rect else list(rng.choice(81, 5, replace=False))
        puzzle = grid.copy()
        puzzle[blanks] = 0
        expected = _brute_force(puzzle)
        got = solve(puzzle, limit=10)
        assert {s.tobytes() for s in got} == expected and len(got) == len(expected)
        found_two += len(expected) == 2
    assert found_two > 0  # the rectangles gave ambiguous puzzles


def test_solve_few_givens_no_solution_and_limits():
    puzzle = parse_board(_put({(1, 1): 1, (5, 5): 2, (9, 9): 3}))
    two = solve(puzzle)
    assert len(two) == 2 and not np.array_equal(two[0], two[1])
    assert is_solution(np.stack(two), puzzle).all()
    five = solve(np.zeros(81, np.int8), limit=5)
    assert len(five) == 5 and is_valid_grid(np.stack(five)).all()
    assert len({s.tobytes() for s in five}) == 5
    # Consistent givens, but cell (1,1) has no digit left: 1..8 in row 1 and 9 in column 1.
    stuck = parse_board("0" + "12345678" + "9" + "0" * 71)
    assert solve(stuck) == []
    assert solve(np.array([1, 1] + [0] * 79)) == []  # contradictory givens
    (only,) = solve(parse_board(PUZZLE))
    assert only.tolist() == [int(ch) for ch in GRID]
    with pytest.raises(UserError):
        solve(np.zeros(80, np.int8))
    with pytest.raises(UserError):
        solve(np.zeros(81, np.int8), limit=0)


# ------------------------------------------------------------------------------------ generating


def test_random_grid_valid_and_varied():
    rng = np.random.default_rng(0)
    grids = np.stack([random_grid(rng) for _ in range(20)])
    assert grids.dtype == np.int8 and is_valid_grid(grids).all()
    assert len({g.tobytes() for g in grids}) == 20


def test_random_grids_valid_distinct_deterministic_uniform():
    n = 2000
    grids = random_grids(n, seed=11)
    assert grids.shape == (n, 81) and grids.dtype == np.int8
    assert is_valid_grid(grids).all()
    assert len(np.unique(grids, axis=0)) == n
    assert np.array_equal(random_grids(n, seed=11), grids)
    assert not np.array_equal(random_grids(n, seed=12), grids)
    # Digit frequency per cell: chi-square over 81 cells x 8 dof = 648 dof (sd 36); loose bound.
    counts = np.stack([(grids == d).sum(axis=0) for d in range(1, 10)], axis=1)  # (81, 9)
    expected = n / 9
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 648 + 6 * 36, chi2
    # The symmetries spread each pool grid widely: even the first rows are nearly all distinct.
    assert len(np.unique(grids[:, :9], axis=0)) > 0.99 * n


def _mini_line_sets(grids: np.ndarray, transpose: bool) -> np.ndarray:
    """(n, 27) digit-set bitmasks of the mini-rows (3 cells of a row inside one box), or of the
    mini-columns with `transpose`."""
    g = grids.reshape(-1, 9, 9)
    g = g.transpose(0, 2, 1) if transpose else g
    bits = np.left_shift(1, g.astype(np.int64) - 1).reshape(-1, 9, 3, 3)
    return bits.sum(axis=-1).reshape(len(grids), 27)


def _repeated_sets(masks: np.ndarray) -> list[int]:
    """Per grid, how many pairs of its 27 mini-lines hold the same set of digits."""
    return [int(sum(k * (k - 1) // 2 for k in np.unique(m, return_counts=True)[1])) for m in masks]


def _cycle_type(line_a, line_b) -> tuple[int, ...]:
    """Cycle lengths of the digit permutation taking line_a to line_b (cell by cell). Unchanged by
    permuting cells and by relabelling digits (which conjugates the permutation)."""
    sigma = dict(zip(line_a.tolist(), line_b.tolist()))
    seen, lengths = set(), []
    for start in sigma:
        length, d = 0, start
        while d not in seen:
            seen.add(d)
            d, length = sigma[d], length + 1
        if length:
            lengths.append(length)
    return tuple(sorted(lengths))


def test_random_grids_symmetries_reach_the_whole_orbit():
    # With a pool of one grid every output is that grid under a random symmetry. Relabelling makes
    # the digit set of the first mini-row a uniformly random 3-subset of 1..9 (84 of them), which
    # row and column permutations alone could not do: a grid has only 27 mini-rows.
    n = 2000
    grids = random_grids(n, seed=4, pool_size=1)
    codes = _mini_line_sets(grids, transpose=False)[:, 0]
    _, counts = np.unique(codes, return_counts=True)
    assert len(counts) == 84
    chi2 = ((counts - n / 84) ** 2 / (n / 84)).sum()
    assert chi2 < 83 + 6 * 13, chi2  # 83 dof, sd ~13
    # Row/column permutations and relabelling keep, for each grid, the number of equal pairs among
    # mini-row sets (a) and among mini-column sets (b); only the transpose swaps them.
    pairs = set(zip(_repeated_sets(_mini_line_sets(grids[:200], False)),
                    _repeated_sets(_mini_line_sets(grids[:200], True))))
    (a, b), *_ = pairs
    assert a != b  # this seed's base grid tells the two apart
    assert pairs == {(a, b), (b, a)}
    # Rows 1 and 2 of an output are some two rows of one band of the base grid (or two columns of
    # one stack, after a transpose); all 18 such pairs must turn up, which needs the permutations
    # within bands and stacks. Their cycle types are orbit invariants, so any output is the oracle.
    g = grids[0].reshape(9, 9)
    expected = {_cycle_type(g[i], g[j]) for i, j in itertools.permutations(range(9), 2) if i // 3 == j // 3}
    expected |= {_cycle_type(g[:, i], g[:, j]) for i, j in itertools.permutations(range(9), 2) if i // 3 == j // 3}
    observed = {_cycle_type(x[:9], x[9:18]) for x in grids}
    assert observed == expected


def test_random_grids_small_pool_and_edge_cases():
    grids = random_grids(500, seed=0, pool_size=1)
    assert is_valid_grid(grids).all() and len(np.unique(grids, axis=0)) == 500
    assert random_grids(0, seed=0).shape == (0, 81)
    with pytest.raises(UserError):
        random_grids(-1, seed=0)
    with pytest.raises(UserError):
        random_grids(5, seed=0, pool_size=0)


def test_make_puzzle_unique_solution_is_the_grid():
    rng = np.random.default_rng(5)
    for n_givens in (40, 30):
        grid = random_grid(rng)
        puzzle = make_puzzle(grid, n_givens, rng)
        assert puzzle.dtype == np.int8 and (puzzle > 0).sum() == n_givens
        assert np.array_equal(puzzle[puzzle > 0], grid[puzzle > 0])
        (solution,) = solve(puzzle)
        assert np.array_equal(solution, grid)
    # Asking for 17 usually stops earlier, at a minimal puzzle: no given can go.
    grid = random_grid(rng)
    puzzle = make_puzzle(grid, 17, rng)
    assert (puzzle > 0).sum() >= 17
    (solution,) = solve(puzzle)
    assert np.array_equal(solution, grid)
    if (puzzle > 0).sum() > 17:
        for i in np.flatnonzero(puzzle):
            fewer = puzzle.copy()
            fewer[i] = 0
            assert len(solve(fewer)) == 2
    with pytest.raises(UserError):
        make_puzzle(parse_board(PUZZLE), 30, rng)
    with pytest.raises(UserError):
        make_puzzle(grid, 82, rng)

