"""Semi-autoregressive generation to any length: a window of the model's context slides over the sequence.

The first window is sampled as usual; each next window keeps its first (context - stride) tokens fixed
(already generated) and samples `stride` new ones, so a model trained on blocks of `context` tokens writes
sequences of any length (Sahoo et al. 2024, section 4.2; Arriola et al. 2025 for block diffusion).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .loop import SampleOutput


def sample_blockwise(sample_window, n: int, length: int, context: int, stride: int,
                     fixed: torch.Tensor | None = None, fixed_mask: torch.Tensor | None = None) -> SampleOutput:
    """sample_window(n, length, fixed, fixed_mask) -> SampleOutput samples one window of `context` tokens.

    fixed / fixed_mask (1 or n, length): user-given positions anywhere in the full sequence.
    """
    if not 0 < stride <= context:
        raise UserError(f"block stride must be in 1..{context}, got {stride}")
    x = torch.zeros((n, length), dtype=torch.long)  # placeholders: only positions in `given` are read
    given = torch.zeros((n, length), dtype=torch.bool)
    if fixed is not None:
        given = fixed_mask.expand(n, length).clone()
        x = torch.where(given, fixed.expand(n, length), x)
    nfe = row_evals = 0
    seconds = 0.0
    end = min(context, length)
    start = 0
    while True:
        window = slice(start, end)
        out = sample_window(n, end - start, x[:, window], given[:, window])
        x[:, window] = out.tokens.cpu()
        given[:, window] = True
        nfe, row_evals, seconds = nfe + out.nfe, row_evals + out.row_evals, seconds + out.seconds
        if end >= length:
            break
        end = min(end + stride, length)
        start = end - context
    return SampleOutput(x, nfe, row_evals, seconds)
