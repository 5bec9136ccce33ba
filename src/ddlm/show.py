"""`--show`: redraw a sample (or a Sudoku grid) in place in the terminal at every sampling step.

Masked positions are a dim `_`, the tokens this step committed are highlighted, the others plain. A frame is
cut into the terminal's lines here (tokens wrap at its width; a frame taller than the terminal keeps its first
lines), so the cursor can go back up exactly that many lines and redraw. After the last step the frames are
erased and the caller prints its usual output, so a terminal ends with exactly what it shows without --show.
"""

from __future__ import annotations

import shutil
import sys

DIM = "\x1b[2m"  # masked positions
NEW = "\x1b[1;30;43m"  # this step's tokens: bold black on yellow
GIVEN = "\x1b[1m"  # Sudoku givens
RESET = "\x1b[0m"
MASK = "_"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def wrap(cells, width: int) -> list[str]:
    """Visual lines of `cells` [(text, style)]: text wraps at `width` columns and breaks at '\\n'; each line
    carries its own escape codes (a style never runs across a line break)."""
    lines, line, col = [], [], 0

    def flush():
        nonlocal line, col
        lines.append("".join(line))
        line, col = [], 0

    for text, style in cells:
        for ch in text:
            if ch == "\n":
                flush()
                continue
            if col >= width:
                flush()
            ch = ch if ch.isprintable() else "?"
            line.append(f"{style}{ch}{RESET}" if style else ch)
            col += 1
    flush()
    return lines


def text_cells(pieces, masked, new) -> list:
    """[(text, style)] of one sample: pieces (L,) strings, masked / new (L,) bools."""
    cells = []
    for piece, m, n in zip(pieces, masked, new):
        if m:
            cells.append((MASK, DIM))
        else:
            # a committed newline stays a line break; highlighted, it shows as a coloured space before it
            cells.append((piece.replace("\n", " \n") if n and "\n" in piece else piece, NEW if n else ""))
    return cells


def sudoku_lines(digits, masked, new, given) -> list[str]:
    """The 9x9 grid in `format_board`'s layout: digits (81,) 1..9, masked / new / given (81,) bools."""
    lines = []
    for r in range(9):
        if r in (3, 6):
            lines.append("------+-------+------")
        cells = []
        for c in range(9):
            i = 9 * r + c
            if masked[i]:
                cells.append(f"{DIM}{MASK}{RESET}")
            else:
                style = NEW if new[i] else GIVEN if given[i] else ""
                cells.append(f"{style}{int(digits[i])}{RESET}" if style else str(int(digits[i])))
        lines.append(" | ".join(" ".join(cells[3 * k: 3 * k + 3]) for k in range(3)))
    return lines


class Live:
    """Draws frames (lists of visual lines) in place on a terminal `out`; `clear()` erases the last one."""

    def __init__(self, out=None):
        self.out = out or sys.stdout
        self.drawn = 0  # lines of the frame on screen

    def size(self) -> tuple[int, int]:
        """(columns to fill, lines): one column short of the width, so a full line never leaves the cursor
        in the terminal's pending-wrap state (where erasing to the end of the line would eat its last character)."""
        cols, rows = shutil.get_terminal_size((80, 24))
        return max(cols - 1, 20), max(rows, 4)

    def draw(self, lines: list[str]) -> None:
        _, rows = self.size()
        lines = lines[: rows - 1]  # the cursor cannot go back above the top of the screen
        buf = [HIDE_CURSOR, self._up()]
        buf.append("\n".join(f"{line}\x1b[K" for line in lines) + "\n")
        self.drawn = len(lines)
        self.out.write("".join(buf))
        self.out.flush()

    def clear(self) -> None:
        self.out.write(self._up() + SHOW_CURSOR)
        self.drawn = 0
        self.out.flush()

    def _up(self) -> str:
        """Back to the first line of the frame on screen, erasing it and everything below."""
        return (f"\x1b[{self.drawn}F" if self.drawn else "\r") + "\x1b[J"


def _play(stream, live: Live, frame) -> object:
    """Draw frame(step) -> lines for every step of `stream` with its step line below, until the final Step,
    which is returned; the stream is closed and the frames erased however the loop ends (Ctrl-C included)."""
    final = None
    try:
        for step in stream:
            if step.final:
                final = step
                break
            lines = frame(step)
            lines.append(f"{DIM}step {step.index + 1}, NFE {step.nfe}, {step.seconds:.2f} s{RESET}")
            live.draw(lines)
    finally:
        stream.close()
        live.clear()
    return final


def show_text_steps(stream, model, out=None, header=None):
    """Draw every step of `stream` (sampling.stream.StepStream) of text samples; returns the final Step,
    with the frames erased. header(k) -> the line above sample k (0-based), e.g. '--- sample 1 ---'."""
    live = Live(out)
    width, _ = live.size()
    cache: dict = {}

    def piece(token: int) -> str:
        if token not in cache:
            cache[token] = model.decode([token])
        return cache[token]

    def frame(step) -> list[str]:
        lines = []
        for k in range(step.tokens.shape[0]):
            if header is not None:
                lines.append(header(k))
            pieces = [piece(int(t)) for t in step.tokens[k]]
            lines += wrap(text_cells(pieces, step.masked[k].tolist(), step.new[k].tolist()), width)
        return lines

    return _play(stream, live, frame)


def show_sudoku_steps(stream, given, out=None):
    """Draw every step of a Sudoku `stream` (tokens 0..8 = digits 1..9); returns the final Step."""
    return _play(stream, Live(out), lambda step: sudoku_lines((step.tokens[0] + 1).tolist(), step.masked[0].tolist(),
                                                              step.new[0].tolist(), given))
