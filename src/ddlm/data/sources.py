"""Data sources other than text corpora, by name: each returns (tokenizer, batch source, validation blocks).

Text corpora (kjv, shakespeare, files) are handled by data/prepare.py; this registry holds generated data.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..tasks.sudoku.board import DIGITS as SUDOKU_DIGITS  # one definition, in the task package

SUDOKU_VAL_SEED = 2_147_483_647  # validation grids come from a seed no training step uses


def sudoku_grid_tokens(n: int, seed: int) -> torch.Tensor:
    """`n` random complete Sudoku grids as tokens (n, 81) in 0..8, deterministic for `seed`."""
    from ddlm.tasks.sudoku.board import to_tokens
    from ddlm.tasks.sudoku.generate import random_grids

    return torch.from_numpy(to_tokens(random_grids(n, seed)))


def sudoku_source(cfg, tokenizer=None):
    """Random complete grids: every training step draws fresh grids, and the masking process turns each into
    a random sub-problem (a puzzle with a random set of givens), so the model sees all difficulties.

    Why grids and not puzzle/solution pairs: grids cost microseconds each (random_grids applies random Sudoku
    symmetries to a few solver-drawn grids), while a unique-solution puzzle costs one solver call per cell;
    and a masked grid at mask rate t covers the puzzles of every number of givens, where a fixed puzzle set
    covers only its own.
    """
    from .batches import GeneratedBatches
    from .tokenizers import CharTokenizer

    if cfg.model.max_len != 81:
        raise UserError(f"the sudoku source makes 81-cell boards; set model.max_len=81 (got {cfg.model.max_len})")
    if tokenizer is None:
        tokenizer = CharTokenizer(SUDOKU_DIGITS)
    elif "".join(getattr(tokenizer, "chars", [])) != SUDOKU_DIGITS:
        raise UserError("the sudoku source needs the character tokenizer over '123456789'; "
                        "this run directory holds a different tokenizer")
    n_val = max(cfg.train.eval_batches, 1) * cfg.train.batch_size
    val = sudoku_grid_tokens(n_val, SUDOKU_VAL_SEED)  # (n_val, 81)
    return tokenizer, GeneratedBatches(sudoku_grid_tokens, cfg.train.batch_size, cfg.train.seed), val


SOURCES: dict = {"sudoku": sudoku_source}
