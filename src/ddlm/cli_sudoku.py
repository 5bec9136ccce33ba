"""Kept so that `ddlm.cli_sudoku` imports keep working: the Sudoku commands live in `ddlm.tasks.sudoku.cli`."""

from ddlm.tasks.sudoku.cli import *  # noqa: F401,F403
