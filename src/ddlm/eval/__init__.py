"""Evaluation tasks beyond the likelihood: name -> function(model, args) -> exit status, for `ddlm eval --task`."""


def _sudoku(model, args):
    from ddlm.tasks.sudoku.cli import cmd_eval_sudoku

    return cmd_eval_sudoku(model, args)


def _molecules(model, args):
    from ..tasks.molecules.cli import eval_molecules

    return eval_molecules(model, args)


TASKS = {"sudoku": _sudoku, "molecules": _molecules}
