"""Kept so that `ddlm.data.sudoku` imports keep working: Sudoku lives in the task package `ddlm.tasks.sudoku`."""

from ddlm.tasks.sudoku.board import *  # noqa: F401,F403
from ddlm.tasks.sudoku.board import N_CELLS, UNITS, __all__ as _board_names  # noqa: F401
from ddlm.tasks.sudoku.generate import make_puzzle, random_grid, random_grids, solve  # noqa: F401

__all__ = [*_board_names, "solve", "random_grid", "random_grids", "make_puzzle"]
