"""Classifier-free guidance for discrete diffusion, as a `logits_transform` hook of the sampling core.

    log p_w(x_0 | x_t, c) = log_softmax( log p(x_0 | x_t) + w * (log p(x_0 | x_t, c) - log p(x_0 | x_t)) )

per position, over the V tokens: w = 0 is the unconditional model, w = 1 the conditional one, w > 1 sharpens
towards the label (the product of experts p(x_0 | x_t)^(1-w) p(x_0 | x_t, c)^w, renormalised). Ho & Salimans
2022 ("Classifier-Free Diffusion Guidance") for the idea; Nisonoff et al. 2024 ("Unlocking Guidance for
Discrete State-Space Diffusion and Flow Models") and Schiff et al. 2024 ("Simple Guidance Mechanisms for
Discrete Diffusion Models") for guidance in the log-probabilities of discrete diffusion's denoiser.

Prompt guidance is the same formula with the prompt as the condition: the conditional pass is the sampler's
own (it sees the prompt), the unconditional pass sees the prompt's positions masked (`hide`), so w > 1 pulls
the continuation towards what the prompt makes likelier than it is without it.
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from .conditions import NULL_LABEL


def check_scale(w) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise UserError(f"the guidance scale must be a number >= 0 (0 = unconditional, 1 = conditional), got {w!r}")
    return float(w)


def guide(logp_uncond: torch.Tensor, logp_cond: torch.Tensor, w: float) -> torch.Tensor:
    """The guided log-probabilities (..., V) of the formula above. A token impossible under either model
    (-inf) stays impossible for w > 0 (no -inf - -inf NaN); w = 0 and w = 1 return an input as it is."""
    if w == 0.0:
        return logp_uncond
    if w == 1.0:
        return logp_cond
    mixed = (1.0 - w) * logp_uncond + w * logp_cond  # the same line, written without inf - inf
    impossible = torch.isneginf(logp_cond) | torch.isneginf(logp_uncond)
    mixed = torch.where(impossible, torch.full_like(mixed, -math.inf), mixed)
    return mixed.log_softmax(-1)


class ClassifierFreeGuidance:
    """A `logits_transform(logp, state)` hook: the core's network call runs the conditional model (a backbone
    wrapped in `Conditioned`), this hook runs the same backbone once more with the null label on the rows
    still being decoded, and mixes the two with `guide`.

    backbone: the raw backbone (takes `cond=`); process: gives log_probs; w: the scale; time_of(state): the
    time the network sees (the masked rules' state.t). NFE: `nfe` and `row_evals` count the extra calls
    (the caller adds them to the run's)."""

    def __init__(self, backbone, process, w: float, time_of=None, hide: torch.Tensor | None = None):
        """hide (1 or B, L) bool: prompt guidance, the positions the unconditional pass sees as [MASK] (the
        process's mask_id), with no label; None: the unconditional pass is the null label's."""
        self.backbone, self.process, self.w = backbone, process, check_scale(w)
        self.time_of = time_of or (lambda state: state.t)
        self.hide = hide
        self.nfe = self.row_evals = 0

    @torch.no_grad()
    def __call__(self, logp: torch.Tensor, state) -> torch.Tensor:
        if self.w == 1.0:  # the conditional model as it is: no second call
            return logp
        rows = (state.noisy.any(-1) & ~state.done).nonzero()[:, 0]  # rows whose output is still read
        if len(rows) == 0:
            return logp
        x = state.x[rows]
        t = torch.full((len(rows),), float(self.time_of(state)), device=x.device)
        if hasattr(self.backbone, "select_rows"):  # a backbone with per-row state (a skip model's key mask)
            self.backbone.select_rows(rows)
        if self.hide is None:
            null = torch.full((len(rows),), NULL_LABEL, dtype=torch.long, device=x.device)
            uncond = self.process.log_probs(self.backbone(x, t, cond=null))  # (b, L, V)
        else:  # the prompt unseen
            hide = self.hide.to(x.device).expand(state.x.shape[0], -1)[rows]  # (b, L)
            x = torch.where(hide, torch.full_like(x, self.process.mask_id), x)
            uncond = self.process.log_probs(self.backbone(x, t))
        self.nfe += 1
        self.row_evals += len(rows)
        out = logp.clone()
        out[rows] = guide(uncond.to(logp.dtype), logp[rows], self.w)
        return out
