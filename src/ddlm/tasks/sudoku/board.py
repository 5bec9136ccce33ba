"""Sudoku boards: parsing, CSV loading, checking, and the token view used by the diffusion models.

A board is a numpy ``int8`` array of 81 cells in row-major order, 0 for a blank and 1..9 for a digit.
The models see tokens instead: digit ``d`` is token ``d - 1`` (0..8) and a blank is the diffusion
[MASK] token, id 9 = ``VOCAB_SIZE``, so a puzzle is a partially masked solution and solving it is
exactly the reverse process of a masked diffusion model (the Sudoku benchmark of Kim et al., "Train
for the Worst, Plan for the Best", ICML 2025).

The solver and the generators (`solve`, `random_grid`, `random_grids`, `make_puzzle`) live in
`ddlm.tasks.sudoku.generate`, which builds on this module (never the other way round).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddlm.errors import UserError

VOCAB_SIZE = 9  # digit tokens 0..8; the [MASK] token is id VOCAB_SIZE
DIGITS = "123456789"  # a CharTokenizer over these maps digit d to token d - 1, as to_tokens does
MASK_TOKEN = VOCAB_SIZE
N_CELLS = 81

# Cell indices of the 27 units: 9 rows, then 9 columns, then 9 boxes (numbered row-major). (27, 9)
_CELLS = np.arange(N_CELLS).reshape(9, 9)
UNITS = np.concatenate(
    [
        _CELLS,
        _CELLS.T,
        _CELLS.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9),
    ]
)
_UNIT_KIND = ["row"] * 9 + ["column"] * 9 + ["box"] * 9
_FULL = (1 << 9) - 1  # bitmask of the digits 1..9

# Byte value -> digit (0 for a blank), or -1 for a character a board may not contain.
_BYTE_TO_DIGIT = np.full(256, -1, dtype=np.int8)
_BYTE_TO_DIGIT[ord("0") : ord("9") + 1] = np.arange(10)
_BYTE_TO_DIGIT[ord(".")] = 0

_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def _unit_name(u: int) -> str:
    kind, k = _UNIT_KIND[u], u % 9
    if kind == "box":
        r, c = 3 * (k // 3), 3 * (k % 3)
        return f"box {k + 1} (rows {r + 1}-{r + 3}, columns {c + 1}-{c + 3})"
    return f"{kind} {k + 1}"


def _contradiction(boards: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per board, the first unit that holds some digit twice.

    boards: (N, 81) with 0 for blanks. Returns (bad (N,) bool, unit (N,), digit (N,)), where unit and
    digit are meaningful only where bad is True.
    """
    units = np.sort(boards[:, UNITS], axis=-1)  # (N, 27, 9)
    # After sorting, a repeated digit sits next to itself; blanks (0) may repeat.
    twice = (units[..., 1:] == units[..., :-1]) & (units[..., 1:] > 0)  # (N, 27, 8)
    flat = twice.reshape(boards.shape[0], -1)  # unit-major
    bad = flat.any(axis=1)
    first = flat.argmax(axis=1)
    unit = first // 8
    digit = units.reshape(boards.shape[0], -1)[np.arange(boards.shape[0]), unit * 9 + first % 8 + 1]
    return bad, unit, digit


def _contradiction_message(board: np.ndarray, unit: int, digit: int) -> str:
    n = int((board[UNITS[unit]] == digit).sum())
    return f"{_unit_name(unit)} has {_COUNT_WORDS.get(n, n)} {digit}s"


def _bad_characters(s: str) -> list[str]:
    seen: list[str] = []
    for ch in s:
        if ch not in "0123456789." and ch not in seen:
            seen.append(ch)
    return seen


# Characters a typed board may hold between its cells: whitespace (spaces, nine lines of nine) and the rules of
# `format_board`'s pretty form, so that a printed board can be pasted back.
_IGNORED = frozenset("|-+")


def parse_board(s: str) -> np.ndarray:
    """Parse 81 cells (digits 1-9, '0' or '.' for blanks) into an (81,) int8 board.

    Whitespace anywhere (one line, spaced digits, nine lines of nine) and the separators '|', '-' and '+' are
    ignored, so `format_board`'s output parses back. Raises `UserError` for a wrong number of cells, foreign
    characters or givens that contradict each other (the same digit twice in a row, column or box).
    """
    if not isinstance(s, str):
        raise UserError(f"a Sudoku board must be given as a string, got {type(s).__name__}")
    s = "".join(ch for ch in s if not ch.isspace() and ch not in _IGNORED)
    bad = _bad_characters(s)
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise UserError(
            f"board contains {shown}; use only the digits 1-9, and '0' or '.' for blanks "
            "(spaces, line breaks and | - + are ignored)"
        )
    if len(s) != N_CELLS:
        raise UserError(
            f"board has {len(s)} cells but a Sudoku needs 81 (9 rows of 9, row by row, '0' or '.' for blanks)"
        )
    board = _BYTE_TO_DIGIT[np.frombuffer(s.encode("ascii"), dtype=np.uint8)]
    bad_mask, unit, digit = _contradiction(board[None])
    if bad_mask[0]:
        raise UserError(
            f"the givens contradict each other: {_contradiction_message(board, int(unit[0]), int(digit[0]))}"
        )
    return board


def conflict_cells(board) -> np.ndarray:
    """(81,) bool: the cells whose digit appears more than once in their row, column or box (blanks never)."""
    b = _as_boards(board)
    if b.shape != (N_CELLS,):
        raise UserError(f"conflict_cells takes one board of 81 cells, got shape {tuple(b.shape)}")
    units = b[UNITS]  # (27, 9)
    same = (units[:, :, None] == units[:, None, :]) & (units[:, :, None] > 0)  # (27, 9, 9), the diagonal included
    out = np.zeros(N_CELLS, bool)
    out[UNITS[same.sum(-1) > 1]] = True
    return out


def first_conflict(board) -> str | None:
    """The first rule a board breaks, in words ("row 3 has two 5s"), or None."""
    b = _as_boards(board)
    bad, unit, digit = _contradiction(b.reshape(1, N_CELLS))
    return _contradiction_message(b.reshape(N_CELLS), int(unit[0]), int(digit[0])) if bad[0] else None


def _as_boards(boards, what: str = "board") -> np.ndarray:
    """Check that `boards` has shape (..., 81) with values 0..9 and return it as int8."""
    a = np.asarray(boards)
    if a.ndim == 0 or a.shape[-1] != N_CELLS:
        raise UserError(f"a {what} must have 81 cells in its last dimension, got shape {tuple(a.shape)}")
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 9):
        raise UserError(f"a {what} holds digits 0..9 (0 = blank); got values outside that range")
    return a.astype(np.int8, copy=False)


MARK_LEGEND = "[d]: a digit that appears twice in its row, column or box"


def format_board(board, pretty: bool = True, marks=None) -> str:
    """Render a board. Pretty: 9 lines with '|' between stacks, a rule between bands and '.' for
    blanks. Compact (pretty=False): the 81-character CSV form with '0' for blanks.

    marks: optional (81,) bool; with any set (pretty only), every cell takes three characters and a marked one
    is shown in brackets, "[5]" (see MARK_LEGEND)."""
    b = _as_boards(board)
    if b.shape != (N_CELLS,):
        raise UserError(f"format_board takes one board of 81 cells, got shape {tuple(b.shape)}")
    if not pretty:
        return "".join(str(int(d)) for d in b)
    marked = np.zeros(N_CELLS, bool) if marks is None else np.asarray(marks, bool).reshape(N_CELLS)
    wide = bool(marked.any())
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("---------+---------+---------" if wide else "------+-------+------")
        cells = [str(int(d)) if d else "." for d in b[9 * r : 9 * r + 9]]
        if wide:
            row = [f"[{ch}]" if m else f" {ch} " for ch, m in zip(cells, marked[9 * r : 9 * r + 9])]
            lines.append("|".join("".join(row[3 * k : 3 * k + 3]) for k in range(3)).rstrip())
        else:
            lines.append(" | ".join(" ".join(cells[3 * k : 3 * k + 3]) for k in range(3)))
    return "\n".join(lines)


def _valid_units(grids: np.ndarray) -> np.ndarray:
    """(N, 81) -> (N,) bool: every cell in 1..9 and each of the 27 units a permutation of 1..9."""
    g = grids.astype(np.int16)
    in_range = ((g >= 1) & (g <= 9)).all(axis=-1)
    bits = np.where((g >= 1) & (g <= 9), np.left_shift(1, np.clip(g - 1, 0, 8)), 0)  # (N, 81)
    # Nine cells whose digit bits OR to all nine digits hold each digit exactly once.
    masks = np.bitwise_or.reduce(bits[:, UNITS], axis=-1)  # (N, 27)
    return in_range & (masks == _FULL).all(axis=-1)


def is_valid_grid(grids) -> np.ndarray:
    """Whether each grid is complete and every row, column and box is a permutation of 1..9.

    grids: (..., 81). Returns bool of shape (...) (a 0-d array for one grid).
    """
    g = np.asarray(grids)
    if g.ndim == 0 or g.shape[-1] != N_CELLS:
        raise UserError(f"a grid must have 81 cells in its last dimension, got shape {tuple(g.shape)}")
    lead = g.shape[:-1]
    return _valid_units(g.reshape(-1, N_CELLS)).reshape(lead)


def is_solution(grids, puzzles) -> np.ndarray:
    """Whether each grid is valid and keeps every given (non-zero cell) of its puzzle. (...,) bool."""
    g, p = np.asarray(grids), np.asarray(puzzles)
    if p.shape[-1:] != (N_CELLS,):
        raise UserError(f"a puzzle must have 81 cells in its last dimension, got shape {tuple(p.shape)}")
    try:
        np.broadcast_shapes(g.shape, p.shape)
    except ValueError:
        raise UserError(f"grids of shape {tuple(g.shape)} do not match puzzles of shape {tuple(p.shape)}") from None
    keeps = ((p == 0) | (g == p)).all(axis=-1)
    return is_valid_grid(g) & keeps


def to_tokens(boards) -> np.ndarray:
    """Boards -> model tokens, int64 of the same shape: digit d -> d - 1, blank -> MASK_TOKEN (9)."""
    b = _as_boards(boards).astype(np.int64)
    return np.where(b == 0, MASK_TOKEN, b - 1)


def from_tokens(tokens) -> np.ndarray:
    """Model tokens -> boards, int8 of the same shape: token t in 0..8 -> digit t + 1, MASK -> 0."""
    t = np.asarray(tokens)
    if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() > MASK_TOKEN):
        raise UserError(f"Sudoku tokens are 0..{MASK_TOKEN} ({MASK_TOKEN} = mask); got values outside that range")
    t = t.astype(np.int8)
    return np.where(t == MASK_TOKEN, 0, t + 1).astype(np.int8)


def grid_coordinates() -> np.ndarray:
    """(81, 3) int64: the row, column and box (0..8 each, boxes row-major) of every cell, for
    structured position embeddings."""
    cell = np.arange(N_CELLS)
    row, col = cell // 9, cell % 9
    return np.stack([row, col, 3 * (row // 3) + col // 3], axis=1).astype(np.int64)


def _read_lines(path: Path, limit: int | None) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, the header (a first line with no digit) dropped."""
    out: list[tuple[int, str]] = []
    first = True
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if first and not any(ch.isdigit() for ch in line):
                    first = False
                    continue  # header such as "quizzes,solutions"
                first = False
                out.append((number, line))
                if limit is not None and len(out) >= limit:
                    break
    except FileNotFoundError:
        raise UserError(f"Sudoku file {path} does not exist; give a CSV of 'puzzle,solution' lines") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; give a CSV file of 'puzzle,solution' lines") from None
    except OSError as e:
        raise UserError(f"cannot read Sudoku file {path}: {e.strerror}") from None
    return out


def load_csv(path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load `puzzle,solution` lines into (N, 81) int8 puzzles and solutions (0 = blank).

    A first line without digits is a header and is skipped; blank lines are skipped; spaces around
    the comma are allowed; blanks in the puzzle may be '0' or '.'. Every puzzle must be consistent
    and every solution a valid grid that keeps the puzzle's givens, else `UserError` names the file
    and the 1-based line. At most `limit` puzzles are read. The checks run on whole arrays, so 18,000
    lines load in a few tens of milliseconds.
    """
    path = Path(path)
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0 or None, got {limit}")
    lines = _read_lines(path, limit) if limit != 0 else []
    if not lines and limit != 0:
        raise UserError(f"Sudoku file {path} holds no puzzles; expected 'puzzle,solution' lines")

    def fail(i: int, what: str):
        raise UserError(f"{path}, line {lines[i][0]}: {what}; fix or remove that line")

    puzzles, solutions = [], []
    for i, (_, line) in enumerate(lines):
        fields = line.split(",")
        if len(fields) != 2:
            fail(i, f"expected 2 comma-separated fields 'puzzle,solution', found {len(fields)}")
        p, s = fields[0].strip(), fields[1].strip()
        if len(p) != N_CELLS or len(s) != N_CELLS:
            which, bad = ("puzzle", p) if len(p) != N_CELLS else ("solution", s)
            fail(i, f"{which} has {len(bad)} characters but 81 are needed")
        puzzles.append(p)
        solutions.append(s)
    n = len(puzzles)
    if n == 0:
        return np.zeros((0, N_CELLS), np.int8), np.zeros((0, N_CELLS), np.int8)

    def decode(texts: list[str], which: str) -> np.ndarray:
        joined = "".join(texts)
        raw = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
        if raw.size != n * N_CELLS:  # some non-ASCII character: find its line the slow way
            i = next(k for k, t in enumerate(texts) if not t.isascii())
            fail(i, f"{which} contains {', '.join(repr(c) for c in _bad_characters(texts[i])[:5])}; "
                 "use only the digits 1-9, and '0' or '.' for blanks")
        digits = _BYTE_TO_DIGIT[raw].reshape(n, N_CELLS)
        bad_rows = np.flatnonzero((digits < 0).any(axis=1))
        if bad_rows.size:
            i = int(bad_rows[0])
            fail(i, f"{which} contains {', '.join(repr(c) for c in _bad_characters(texts[i])[:5])}; "
                 "use only the digits 1-9, and '0' or '.' for blanks")
        return digits

    P, S = decode(puzzles, "puzzle"), decode(solutions, "solution")
    bad, unit, digit = _contradiction(P)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        fail(i, f"the puzzle's givens contradict each other: {_contradiction_message(P[i], int(unit[i]), int(digit[i]))}")
    valid = _valid_units(S)
    if not valid.all():
        fail(int(np.flatnonzero(~valid)[0]), "the solution is not a complete valid Sudoku grid")
    keeps = ((P == 0) | (P == S)).all(axis=1)
    if not keeps.all():
        i = int(np.flatnonzero(~keeps)[0])
        cell = int(np.flatnonzero((P[i] != 0) & (P[i] != S[i]))[0])
        fail(i, f"the solution changes the given {P[i, cell]} at row {cell // 9 + 1}, column {cell % 9 + 1} "
                f"to {S[i, cell]}")
    return P, S


def format_csv(puzzles, solutions) -> str:
    """The `puzzle,solution` CSV text that `load_csv` reads: a header line, then one line per puzzle."""
    P, S = _as_boards(puzzles, "puzzle"), _as_boards(solutions, "solution")
    lines = [f"{format_board(p, pretty=False)},{format_board(g, pretty=False)}\n" for p, g in zip(P, S)]
    return "puzzle,solution\n" + "".join(lines)


# 20 puzzles shipped with the package (28 givens each, unique solutions), the default of `ddlm eval --task sudoku`;
# written by `ddlm sudoku generate --n 20 --givens 28 --seed 0 --out src/ddlm/data/examples/sudoku.csv`.
EXAMPLE_CSV = Path(__file__).resolve().parent / "examples" / "sudoku.csv"  # package data


__all__ = [
    "VOCAB_SIZE",
    "DIGITS",
    "MASK_TOKEN",
    "UNITS",
    "parse_board",
    "format_board",
    "format_csv",
    "conflict_cells",
    "first_conflict",
    "EXAMPLE_CSV",
    "load_csv",
    "is_valid_grid",
    "is_solution",
    "to_tokens",
    "from_tokens",
    "grid_coordinates",
]
