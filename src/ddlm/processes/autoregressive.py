"""The 'process' of the autoregressive baseline: no noise, the sequence shifted right behind a BOS token (id V).
Its objective (next-token cross-entropy) is in objectives/autoregressive.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ARProcess:
    """The 'process' of an AR model: V real tokens plus BOS (id V)."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.bos_id = vocab_size
        self.n_states = vocab_size + 1

    def shift(self, x0: torch.Tensor) -> torch.Tensor:
        bos = torch.full_like(x0[:, :1], self.bos_id)
        return torch.cat([bos, x0[:, :-1]], dim=1)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """log p over the V real tokens (BOS is never predicted), (B, L, V + 1) -> (B, L, V)."""
        return F.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)
