"""Sudoku solving and generation: an exact solver, random complete grids, and puzzles with a unique
solution.

The solver keeps a 9-bit mask of the digits still possible in each cell. After every placement it
propagates the two single-candidate rules (a cell with one digit left takes it and removes it from
its 20 peers; a digit with one place left in a row, column or box goes there), then branches
depth-first on the cell with the fewest candidates, copying the 81 masks per branch. On the RRN
17-given puzzles this takes under a millisecond on average (about 15 ms at worst) in pure Python.

`random_grids` supplies training data fast. A grid drawn by the randomised solver costs about 0.7 ms
in Python, so it draws a modest pool of such grids and spreads each over its orbit
under the validity-preserving symmetries of Sudoku, applied in numpy: relabelling the digits (9!),
permuting rows within each band and the bands themselves (6^4), the same for columns and stacks
(6^4), and transposing (2), a group of 9! * 6^8 * 2 ~ 1.2e12 elements. A uniformly random group
element maps a grid to a uniformly random member of its orbit, so

  * what relabelling alone decides is exactly as under the uniform distribution over all grids:
    each cell holds each digit with probability 1/9, two cells of one row, column or box hold a
    uniformly random ordered pair of distinct digits, and the digit set of any 3 cells of a unit
    is a uniformly random 3-subset;
  * what is not uniform is which orbit a grid comes from: there are about 5.47e9 orbits (Russell
    and Jarvis, 2006), nearly all of the full size 1.2e12, and the pool covers `pool_size` of them,
    drawn with the randomised solver's bias. So statistics that depend on the orbit (how often two
    cells that share no unit agree, say) follow the pool rather than all grids, and a model with
    enough capacity could learn the pool's essentially different grids: with the default pool of
    64 + n/16 grids, raise `pool_size` (or vary `seed` per chunk) for long runs.
"""

from __future__ import annotations

import random

import numpy as np

from .board import N_CELLS, UNITS, _as_boards, is_valid_grid
from ddlm.errors import UserError

_ROW = [i // 9 for i in range(N_CELLS)]
_COL = [i % 9 for i in range(N_CELLS)]
_BOX = [3 * (i // 27) + (i % 9) // 3 for i in range(N_CELLS)]
_UNIT_CELLS = [tuple(u) for u in UNITS.tolist()]  # the 27 units as tuples of 9 cells
_PEERS = [  # the 20 cells that share a unit with each cell
    tuple(sorted({j for u in _UNIT_CELLS if i in u for j in u} - {i})) for i in range(N_CELLS)
]
_ALL = 511  # every digit still possible
_POPCOUNT = [bin(m).count("1") for m in range(512)]
_BITS = [tuple(1 << d for d in range(9) if m >> d & 1) for m in range(512)]  # mask -> its single bits
_DIGIT = [0] * 512  # single-bit mask -> its digit
for _d in range(9):
    _DIGIT[1 << _d] = _d + 1


def _propagate(cands: list[int], queue: list[int]) -> bool:
    """Apply naked and hidden singles to candidate masks in place; False on a contradiction.

    cands: 81 masks (bit d set = digit d + 1 still possible). queue: cells newly fixed to one
    digit whose peers have not yet lost it.
    """
    while True:
        while queue:  # naked singles: a fixed cell removes its digit from its 20 peers
            i = queue.pop()
            bit = cands[i]
            for j in _PEERS[i]:
                m = cands[j]
                if m & bit:
                    m ^= bit
                    if not m:
                        return False
                    cands[j] = m
                    if not m & (m - 1):
                        queue.append(j)
        for unit in _UNIT_CELLS:  # hidden singles: a digit with one place left in a unit goes there
            once = twice = 0
            for j in unit:
                m = cands[j]
                twice |= once & m
                once |= m
            if once != _ALL:
                return False  # some digit has no place left in this unit
            hidden = once & ~twice
            if hidden:
                for j in unit:
                    m = cands[j] & hidden
                    if m and cands[j] != m:
                        if m & (m - 1):
                            return False  # two digits that each have only this cell
                        cands[j] = m
                        queue.append(j)
        if not queue:
            return True


def _search(cands: list[int], limit: int, shuffle: random.Random | None, out: list[list[int]]) -> bool:
    """Depth-first search from propagated masks, appending solutions to `out`; True once `limit`
    are found. Branches on the cell with the fewest candidates; with `shuffle`, in random order."""
    best, best_count = -1, 10
    for i in range(N_CELLS):
        c = _POPCOUNT[cands[i]]
        if 1 < c < best_count:
            best, best_count = i, c
            if c == 2:
                break
    if best < 0:
        out.append([_DIGIT[m] for m in cands])
        return len(out) >= limit
    bits = _BITS[cands[best]]
    if shuffle is not None:
        bits = list(bits)
        shuffle.shuffle(bits)
    for bit in bits:
        child = cands.copy()
        child[best] = bit
        if _propagate(child, [best]) and _search(child, limit, shuffle, out):
            return True
    return False


def _solutions(puzzle: list[int], limit: int, shuffle: random.Random | None = None) -> list[list[int]]:
    """Up to `limit` solutions of 81 ints (0 = blank) as lists of digits; [] if there is none."""
    cands = [(1 << (d - 1)) if d else _ALL for d in puzzle]
    queue = [i for i, d in enumerate(puzzle) if d]  # two equal givens in a unit clash in _propagate
    out: list[list[int]] = []
    if _propagate(cands, queue):
        _search(cands, limit, shuffle, out)
    return out


def _as_puzzle(puzzle) -> np.ndarray:
    p = _as_boards(puzzle, "puzzle")
    if p.shape != (N_CELLS,):
        raise UserError(f"a puzzle is one board of 81 cells, got shape {tuple(p.shape)}")
    return p


def solve(puzzle, limit: int = 2) -> list[np.ndarray]:
    """Up to `limit` solutions of an (81,) puzzle (0 = blank), each an (81,) int8 grid.

    An empty list means no solution (contradictory givens included); `limit=2` answers "is the
    solution unique?". Hard 17-given puzzles take a few milliseconds on average.
    """
    p = _as_puzzle(puzzle)
    if limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    return [np.array(s, dtype=np.int8) for s in _solutions(p.tolist(), limit)]


def random_grid(rng: np.random.Generator) -> np.ndarray:
    """A random valid complete grid (81,) int8, drawn by the randomised solver.

    The three diagonal boxes share no unit, so they are filled with independent random
    permutations first; the solver with shuffled digit order completes the rest.
    Not uniform over grids on its own; see the module docstring for `random_grids`.
    """
    shuffle = random.Random(int(rng.integers(2**63)))
    while True:  # the completion always exists as far as we know; retry rather than trust that
        grid = [0] * N_CELLS
        for box in (0, 4, 8):
            digits = list(range(1, 10))
            shuffle.shuffle(digits)
            r0, c0 = 3 * (box // 3), 3 * (box % 3)
            for k, d in enumerate(digits):
                grid[9 * (r0 + k // 3) + c0 + k % 3] = d
        found = _solutions(grid, 1, shuffle)
        if found:
            solution = found[0]
            break
    return np.array(solution, dtype=np.int8)


def _random_permutations(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Uniform random permutations of range(k), independently for each index of `shape`. (*shape, k)"""
    return np.argsort(rng.random((*shape, k)), axis=-1)


def _random_line_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 9) orders of the 9 rows (or columns): bands permuted, rows permuted within each band."""
    bands = _random_permutations(rng, (n,), 3)  # (n, 3)
    within = _random_permutations(rng, (n, 3), 3)  # (n, 3, 3)
    return (3 * bands[:, :, None] + within).reshape(n, 9)


def _transform(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n grids, each a uniformly random symmetry applied to a uniformly chosen pool grid. (n, 81)"""
    g = pool[rng.integers(len(pool), size=n)].reshape(n, 9, 9)
    rows = _random_line_order(rng, n)
    cols = _random_line_order(rng, n)
    g = np.take_along_axis(g, rows[:, :, None], axis=1)
    g = np.take_along_axis(g, cols[:, None, :], axis=2)
    flip = rng.random(n) < 0.5
    g = np.where(flip[:, None, None], g.transpose(0, 2, 1), g)
    relabel = np.concatenate(
        [np.zeros((n, 1), np.int8), 1 + _random_permutations(rng, (n,), 9).astype(np.int8)], axis=1
    )  # (n, 10): digit -> new digit, 0 kept for completeness
    g = np.take_along_axis(relabel, g.reshape(n, N_CELLS).astype(np.intp), axis=1)
    return g.astype(np.int8)


def random_symmetries(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n uniformly random Sudoku symmetries as (cells (n, 81) intp, digits (n, 10) int8): the transformed board
    is `digits[b, board[b, cells[b]]]` (`apply_symmetries`); blanks (0) stay blank. Bands, rows within bands,
    stacks, columns within stacks, a transposition and a relabelling of the digits: a valid grid stays valid and
    a puzzle keeps its number of solutions."""
    index = np.broadcast_to(np.arange(N_CELLS).reshape(1, 9, 9), (n, 9, 9))
    rows, cols = _random_line_order(rng, n), _random_line_order(rng, n)
    g = np.take_along_axis(index, rows[:, :, None], axis=1)
    g = np.take_along_axis(g, cols[:, None, :], axis=2)
    flip = rng.random(n) < 0.5
    cells = np.where(flip[:, None, None], g.transpose(0, 2, 1), g).reshape(n, N_CELLS).astype(np.intp)
    digits = np.concatenate([np.zeros((n, 1), np.int8), 1 + _random_permutations(rng, (n,), 9).astype(np.int8)],
                            axis=1)
    return cells, digits


def apply_symmetries(boards: np.ndarray, cells: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """boards (n, 81) under the symmetries of `random_symmetries`. (n, 81) int8"""
    moved = np.take_along_axis(np.asarray(boards), cells, axis=1).astype(np.intp)
    return np.take_along_axis(digits, moved, axis=1).astype(np.int8)


def undo_symmetries(boards: np.ndarray, cells: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """The inverse of `apply_symmetries`: undo_symmetries(apply_symmetries(b, c, d), c, d) == b."""
    inverse_digits = np.zeros_like(digits)
    np.put_along_axis(inverse_digits, digits.astype(np.intp), np.arange(10, dtype=np.int8)[None].repeat(len(digits), 0),
                      axis=1)
    relabelled = np.take_along_axis(inverse_digits, np.asarray(boards).astype(np.intp), axis=1)
    out = np.empty_like(relabelled)
    np.put_along_axis(out, cells, relabelled, axis=1)
    return out.astype(np.int8)


def default_pool_size(n: int) -> int:
    """How many solver-drawn grids `random_grids` spreads over `n` outputs by default."""
    return min(n, 64 + n // 16)


def random_grids(n: int, seed: int, pool_size: int | None = None) -> np.ndarray:
    """`n` distinct valid grids (n, 81) int8, deterministic for `seed`.

    `pool_size` grids (default `default_pool_size(n)`) come from the randomised solver; each output
    is one of them under a uniformly random Sudoku symmetry (see the module docstring for how close
    to uniform this is). Tens of thousands of grids per second on one core.
    """
    if n < 0:
        raise UserError(f"the number of grids must be >= 0, got {n}")
    if n == 0:
        return np.zeros((0, N_CELLS), np.int8)
    pool_size = default_pool_size(n) if pool_size is None else pool_size
    if pool_size < 1:
        raise UserError(f"pool_size must be at least 1, got {pool_size}")
    rng = np.random.default_rng(seed)
    pool = np.stack([random_grid(rng) for _ in range(pool_size)])
    grids = _transform(pool, n, rng)
    # Repeats are astronomically rare (orbits have ~1e12 members), but "distinct" is promised.
    while True:
        _, first = np.unique(grids, axis=0, return_index=True)
        if len(first) == n:
            return grids
        repeated = np.setdiff1d(np.arange(n), first)
        grids[repeated] = _transform(pool, len(repeated), rng)


def make_puzzle(grid, n_givens: int, rng: np.random.Generator) -> np.ndarray:
    """A puzzle (81,) int8 whose unique solution is `grid`, with `n_givens` givens if reachable.

    Cells are blanked in a random order, each kept blank only if the solution stays unique, until
    `n_givens` remain. When no remaining cell can be blanked (the puzzle is minimal) before that,
    it stops there, with more givens than asked: this greedy procedure typically ends between 20
    and 26 givens, and reaches the minimum of 17 only rarely.
    """
    g = _as_puzzle(grid)
    if not is_valid_grid(g):
        raise UserError("make_puzzle needs a complete valid grid; draw one with random_grid(rng)")
    if not 0 <= n_givens <= N_CELLS:
        raise UserError(f"n_givens must be in 0..81, got {n_givens}")
    puzzle = g.tolist()
    givens = N_CELLS
    for i in rng.permutation(N_CELLS).tolist():
        if givens <= n_givens:
            break
        digit, puzzle[i] = puzzle[i], 0
        if len(_solutions(puzzle, 2)) == 1:
            givens -= 1
        else:
            puzzle[i] = digit
    return np.array(puzzle, dtype=np.int8)


MIN_UNIQUE_GIVENS = 17  # no Sudoku with fewer givens has a unique solution (McGuire et al., 2012)


def make_puzzles(n: int, givens: int, seed: int, attempts: int = 100, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """`n` puzzles with exactly `givens` givens and a unique solution, and their solutions: ((n, 81), (n, 81)) int8,
    deterministic for `seed`.

    Each puzzle blanks one of `random_grids(n, seed)` with `make_puzzle`; when the greedy removal stops above
    `givens` (a minimal puzzle, usually at 22-27 givens) it starts again from the full grid in another random
    order, up to `attempts` times. `progress(k)` is called after each finished puzzle (k = how many so far).
    """
    if n < 1:
        raise UserError(f"the number of puzzles must be positive, got {n}")
    if not MIN_UNIQUE_GIVENS <= givens <= N_CELLS:
        raise UserError(f"--givens must be in {MIN_UNIQUE_GIVENS}..{N_CELLS} (no Sudoku with fewer than "
                        f"{MIN_UNIQUE_GIVENS} givens has a unique solution), got {givens}")
    grids = random_grids(n, seed)
    rng = np.random.default_rng([seed, givens])
    puzzles = np.zeros_like(grids)
    for k, grid in enumerate(grids):
        for _ in range(attempts):
            puzzles[k] = make_puzzle(grid, givens, rng)
            if int((puzzles[k] != 0).sum()) == givens:
                break
        else:
            raise UserError(f"could not blank a grid down to {givens} givens with a unique solution in {attempts} "
                            f"tries (removing cells one by one usually stops at 22-27 givens); ask for more givens")
        if progress is not None:
            progress(k + 1)
    return puzzles, grids
