"""Run `ddlm ARGV` in-process and capture what a user would see (shared by the CLI-facing tests)."""

from __future__ import annotations

import contextlib
import io

from ddlm.cli import main


def run_cli(argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `ddlm ARGV` run in-process; SystemExit from argparse included."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()
