"""Next-token cross-entropy for the autoregressive baseline: -log p(x) = -sum_l log p(x^l | x^{<l}).

The sequence is shifted right behind a BOS token (id V), so all L tokens are scored, exactly as the
diffusion bound scores all L tokens: the two numbers are comparable.
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


class ARObjective:
    def __init__(self, process: ARProcess):
        self.process = process

    def bound(self, model, x0: torch.Tensor, t=None, generator=None) -> torch.Tensor:
        """Exact NLL in nats per sequence, (B,)."""
        logp = self.process.log_probs(model(self.process.shift(x0)))
        return -logp.gather(-1, x0[..., None])[..., 0].sum(-1)

    def __call__(self, model, x0: torch.Tensor, generator=None) -> dict:
        nll = self.bound(model, x0).mean() / x0.shape[1]
        return {"loss": nll, "nelbo": nll.detach()}
