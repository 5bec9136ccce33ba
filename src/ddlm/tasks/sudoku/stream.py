"""Solving one Sudoku as a stream of steps (`sampling.stream`): what `ddlm sudoku solve --show` and the
`ddlm serve` page draw. The final step's board is `evaluate_sudoku`'s for the same options."""

from __future__ import annotations

import numpy as np
import torch

from ddlm.sampling.stream import StepStream

from .board import format_board, to_tokens


def stream_solve(model, puzzle, queue_size: int = 8, **options) -> StepStream:
    """Steps of `evaluate_sudoku(model, puzzle[None], **options)`: tokens (1, 81), 0..8 = digits 1..9, 9 = blank.
    The final step has texts = [the board in the 81-character form] and output = the report."""
    from .solve import check_sudoku_model, evaluate_sudoku

    check_sudoku_model(model)
    puzzle = np.asarray(puzzle).reshape(81)
    given = torch.from_numpy(puzzle != 0)[None]  # (1, 81)

    def produce(recorder):
        report = evaluate_sudoku(model, puzzle[None], observer=recorder, **options)
        board = report["boards"][0]
        return recorder.final(torch.from_numpy(to_tokens(board)[None]), int(report["row_evals"]),
                              [format_board(board, pretty=False)], report)

    return StepStream(produce, dict(n=1, length=81, fixed_mask=given), queue_size)
