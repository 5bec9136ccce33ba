"""`--show`: on a pseudo-terminal `ddlm sample` and `ddlm sudoku solve` redraw the sample at every step (dim
masks, highlighted new tokens, the cursor going back up) and end with exactly their plain output; without a
terminal --show changes nothing. Also the line wrapping the redraw depends on."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ddlm import SequenceModel
from ddlm.show import DIM, NEW, RESET, SHOW_CURSOR, wrap
from cli_harness import run_cli

ROOT = Path(__file__).resolve().parents[1]
SECONDS = re.compile(r"\d+\.\d+ s\b")  # wall times differ between runs


def _on_pty(argv) -> str:
    """What `python -m ddlm ARGV` writes to a pseudo-terminal (80 x 40), as text."""
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="80", LINES="40", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "ddlm", *argv], stdin=slave, stdout=slave,
                            stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) in (0, 1)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def _final(screen: str) -> str:
    """The text after the last frame was erased (the cursor is shown again then)."""
    assert screen.count(SHOW_CURSOR) == 1
    return screen.split(SHOW_CURSOR)[-1]


@pytest.mark.slow  # two CLI processes and a trained tiny run: ~10 s on 2 busy cores
def test_sample_show_redraws_on_a_terminal_and_ends_with_the_plain_output(tiny_run):
    run_dir, _ = tiny_run
    argv = ["sample", str(run_dir), "--n", "2", "--length", "16", "--steps", "8", "--seed", "3"]
    screen = _on_pty(argv + ["--show"])
    assert f"{DIM}_{RESET}" in screen and NEW in screen
    frames = re.findall(r"\x1b\[(\d+)F\x1b\[J", screen)  # back up over the previous frame, erase it
    model = SequenceModel.from_pretrained(run_dir)
    steps = list(model.stream(n=2, length=16, steps=8, seed=3))  # the run may end early: all decided
    assert 2 <= len(steps) - 1 <= 8
    assert len(frames) == len(steps) - 1  # a redraw after each frame but the first, and the final erase
    assert all(int(k) == 2 * 2 + 1 for k in frames)  # two samples of a header and one line, the status line
    status, plain, _ = run_cli(argv)
    assert status == 0
    assert SECONDS.sub("S", _final(screen)) == SECONDS.sub("S", plain)
    # without a terminal --show changes nothing
    status, piped, _ = run_cli(argv + ["--show"])
    assert SECONDS.sub("S", piped) == SECONDS.sub("S", plain)


@pytest.mark.slow  # a CLI process solving 53 blanks: ~10 s on 2 busy cores
def test_sudoku_show_redraws_the_grid_and_ends_with_the_plain_output():
    puzzle = "054021000009000005020600000086193000400000300103004000000000708000308059068005010"
    screen = _on_pty(["sudoku", "solve", puzzle, "--show"])
    blanks = puzzle.count("0")
    # one frame per committed blank: the grid (9 rows, 2 rules) and a status line, each redrawn in place
    assert screen.count("\x1b[12F\x1b[J") == blanks
    assert screen.count(NEW) >= blanks and f"{DIM}_{RESET}" in screen
    status, plain, _ = run_cli(["sudoku", "solve", puzzle])
    assert SECONDS.sub("S", _final(screen)) == SECONDS.sub("S", plain)
    assert len(plain.splitlines()) == 12


def test_wrap_breaks_at_the_width_and_at_newlines_with_styles_per_line():
    lines = wrap([("abcde", ""), ("xy\nz", NEW)], width=4)
    assert lines == ["abcd", f"e{NEW}x{RESET}{NEW}y{RESET}", f"{NEW}z{RESET}"]
    assert wrap([("\t", "")], 10) == ["?"]  # a control character never reaches the terminal
