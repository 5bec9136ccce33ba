"""Kept so that `ddlm.data.sudoku_generate` imports keep working: see `ddlm.tasks.sudoku.generate`."""

from ddlm.tasks.sudoku.generate import *  # noqa: F401,F403
from ddlm.tasks.sudoku.generate import (apply_symmetries, make_puzzles, random_symmetries,  # noqa: F401
                                        undo_symmetries)
