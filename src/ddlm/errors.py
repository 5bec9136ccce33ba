"""User-facing errors.

A `UserError` is a mistake in what the user gave (a path, an option, a prompt, a puzzle).
The CLI prints its message as one line and exits with status 2, never a traceback.
Messages say what was wrong and what to do: "prompt has 130 tokens but --length is 128; use a
longer --length or a shorter prompt".
"""


class UserError(ValueError):
    """Bad input from the user: printed as one line by the CLI, exit status 2."""


def check(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
