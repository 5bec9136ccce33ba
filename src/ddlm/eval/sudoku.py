"""Kept so that `ddlm.eval.sudoku` imports keep working: see `ddlm.tasks.sudoku.solve` and `.cli`."""

from ddlm.tasks.sudoku.cli import cmd_eval_sudoku, one_thread_unless_asked  # noqa: F401
from ddlm.tasks.sudoku.solve import *  # noqa: F401,F403
