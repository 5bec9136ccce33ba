"""Evaluation tasks beyond the likelihood: name -> function(model, args) -> exit status, for `ddlm eval --task`."""


def _sudoku(model, args):
    from .sudoku import cmd_eval_sudoku

    return cmd_eval_sudoku(model, args)


TASKS = {"sudoku": _sudoku}
