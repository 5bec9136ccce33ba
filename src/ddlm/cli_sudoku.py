"""`ddlm sudoku ...` commands (placeholder until the Sudoku task lands)."""


def register(sub) -> None:
    pass
