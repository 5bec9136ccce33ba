"""The absorbing (masking) forward process of MDLM and its SUBS parameterisation.

q(x_t | x_0) = alpha(t) * 1[x_t = x_0] + (1 - alpha(t)) * 1[x_t = MASK]     (Sahoo et al. 2024, eq. 2)

SUBS (substitution) parameterisation of the denoiser x_theta(x_t, t):
  * zero-masking: the MASK state gets no probability, so the softmax runs over the V real tokens only;
  * carry-over: an unmasked token is copied to the output unchanged. The objective therefore scores only
    masked positions and the samplers never touch unmasked ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedules import Schedule


class MaskingProcess:
    """Absorbing diffusion over V real tokens plus one MASK state with id V."""

    def __init__(self, vocab_size: int, schedule: Schedule):
        self.vocab_size = vocab_size
        self.mask_id = vocab_size
        self.n_states = vocab_size + 1  # what the backbone embeds and predicts
        self.schedule = schedule

    def marginal(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) as probabilities (B, L, V + 1) for x0 (B, L) and t (B,)."""
        a = self.schedule.alpha(t.double())[:, None, None]  # (B, 1, 1)
        probs = a * F.one_hot(x0, self.n_states).double()
        probs[..., self.mask_id] += (1.0 - a[..., 0])
        return probs

    def sample_xt(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """Mask each token of x0 (B, L) independently with probability 1 - alpha(t_b)."""
        p_mask = (1.0 - self.schedule.alpha(t))[:, None]  # (B, 1)
        u = torch.rand(x0.shape, generator=generator, device=x0.device)
        return torch.where(u < p_mask, torch.full_like(x0, self.mask_id), x0)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """SUBS zero-masking: log p_theta(x_0 | x_t) over the V real tokens, (B, L, V + 1) -> (B, L, V)."""
        return F.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)

    def is_masked(self, x: torch.Tensor) -> torch.Tensor:
        return x == self.mask_id
