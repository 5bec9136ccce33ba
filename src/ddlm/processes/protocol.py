"""The contract every process (MDLM's masking, D3PM, RDM, AR) implements.

The one name for "the model's log-probabilities of x_0" is `log_probs(logits)`: (..., S) logits over the
n_states states -> (..., V) log-probabilities over the V real tokens (MASK/BOS never predicted as x_0).
Samplers and objectives call only this name (the sampling core's Denoiser, the objectives' losses).

`MaskedProcess` adds what the masked step rules (ancestral, planned, remask) need.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Process(Protocol):
    vocab_size: int  # V real tokens
    n_states: int  # S states the backbone embeds and predicts (V plus MASK or BOS where the process has one)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log p_theta(x_0 | x_t): (..., S) logits -> (..., V) log-probabilities."""
        ...


@runtime_checkable
class MaskedProcess(Process, Protocol):
    mask_id: int

    def is_masked(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) long -> (B, L) bool."""
        ...
