"""Next-token cross-entropy for the autoregressive baseline: -log p(x) = -sum_l log p(x^l | x^{<l}).

The sequence is shifted right behind a BOS token (id V), so all L tokens are scored, exactly as the
diffusion bound scores all L tokens: the two numbers are comparable. With a loss mask only the counted
positions are scored (and the per-token loss is their mean).
"""

from __future__ import annotations

import torch

from ..data.batches import as_batch, counted, model_kwargs, per_token
from ..processes.autoregressive import ARProcess  # noqa: F401  (ARProcess lived here: old imports keep working)


class ARObjective:
    """Next-token cross-entropy; `objective(model, batch, generator)` -> {"loss", "nelbo"} in nats per counted
    token, `bound(model, batch)` -> exact NLL of the counted tokens in nats per sequence (B,)."""

    def __init__(self, process: ARProcess):
        self.process = process

    def bound(self, model, batch, t=None, generator=None) -> torch.Tensor:
        """Exact NLL in nats per sequence, (B,): the sum over the counted positions."""
        b = as_batch(batch)
        x0 = b.tokens
        kw = model_kwargs(b)
        if "mask" in kw:  # the input is shifted right behind BOS: its keys are BOS, then x0[:, :-1]
            kw["mask"] = torch.cat([torch.ones_like(kw["mask"][:, :1]), kw["mask"][:, :-1]], dim=1)
        logp = self.process.log_probs(model(self.process.shift(x0), **kw))
        return counted(-logp.gather(-1, x0[..., None])[..., 0], b).sum(-1)

    def __call__(self, model, batch, generator=None) -> dict:
        b = as_batch(batch)
        nll = per_token(self.bound(model, b), b)
        return {"loss": nll, "nelbo": nll.detach()}
