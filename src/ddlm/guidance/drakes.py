"""DRAKES: reward fine-tuning through the sampling trajectory (Wang et al. 2025, "Fine-Tuning Discrete Diffusion
Models via Reward Optimization with Applications to DNA and Protein Design", arXiv 2410.13643).

Maximise over the denoiser's weights theta

    J(theta) = E_{x_0 ~ p_theta}[ r(x_0) ] - beta * KL(p_theta(x_{0:T}) || p_pre(x_{0:T}))

by back-propagating a differentiable reward through the whole masked-diffusion trajectory: every reverse
step draws x_s from its categorical over V tokens + MASK,

    p(x_s^l = v | x_t) = p_unmask * p_theta(x_0^l = v | x_t),  p(x_s^l = MASK | x_t) = 1 - p_unmask,
    p_unmask = (alpha(s) - alpha(t)) / (1 - alpha(t))            (MDLM's reverse process, masked positions)

with the straight-through Gumbel-softmax (the forward pass sees the hard one-hot, the gradient the
tempered softmax), and feeds the one-hot rows to the next network call through the embedding matrix. The KL
of two such trajectories is the sum over steps and still-masked positions of
p_unmask * KL(p_theta(x_0^l | x_t) || p_pre(x_0^l | x_t)), evaluated on the sampled path (the pretrained copy
is frozen). Only the last `grad_steps` steps carry gradients (DRAKES' truncated back-propagation).

The reward takes soft one-hot rows (B, L, V) and must be differentiable; RDKit's scores are not, so a
molecule reward needs a learned surrogate first (as DRAKES does with its activity oracles).
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..sampling.categorical import gumbel_like
from .value import require_masked_diffusion


class _SoftEmbedding(torch.nn.Module):
    """An embedding that also takes one-hot rows (..., S) float: rows @ weight (exact for hard one-hots)."""

    def __init__(self, table: torch.nn.Embedding):
        super().__init__()
        self.table = table

    def forward(self, x):
        if x.is_floating_point():
            return x @ self.table.weight
        return self.table(x)


@contextlib.contextmanager
def soft_inputs(backbone):
    """Within the block, `backbone(x)` takes x (B, L, S) one-hot rows as well as token ids (B, L)."""
    table = backbone.embed
    backbone.embed = _SoftEmbedding(table)
    try:
        yield backbone
    finally:
        backbone.embed = table


def trajectory(backbone, process, n: int, length: int, steps: int, *, tau: float = 1.0, generator=None,
               reference=None, grad_steps: int | None = None):
    """One differentiable masked-diffusion run: (x_0 (n, L, V) straight-through one-hots, kl (n,)).

    backbone: takes one-hot rows (see soft_inputs); reference: the frozen pretrained backbone (same inputs) for
    the KL, or None (kl = 0)."""
    S, V, mask_id = process.n_states, process.vocab_size, process.mask_id
    device = next(backbone.parameters()).device
    x = F.one_hot(torch.full((n, length), mask_id, device=device), S).float()  # (n, L, S)
    masked = torch.ones(n, length, dtype=torch.bool, device=device)
    kl = torch.zeros(n, device=device)
    grad_from = steps - (steps if grad_steps is None else grad_steps)
    for i, k in enumerate(range(steps, 0, -1)):
        t, s = k / steps, (k - 1) / steps
        tt = torch.full((n,), t, device=device)
        with torch.set_grad_enabled(i >= grad_from and torch.is_grad_enabled()):
            if i < grad_from:
                x = x.detach()
            logp = process.log_probs(backbone(x, tt))  # (n, L, V)
            a_t, a_s = process.schedule.alpha(torch.tensor(t)), process.schedule.alpha(torch.tensor(s))
            p = 1.0 if k == 1 else float((a_s - a_t) / (1 - a_t))
            if reference is not None:
                with torch.no_grad():
                    ref = process.log_probs(reference(x, tt))
                step_kl = (logp.exp() * (logp - ref)).sum(-1)  # (n, L) KL(p_theta || p_pre) per position
                kl = kl + p * (step_kl * masked).sum(-1)
            stay = math.log(max(1.0 - p, 1e-30))  # MASK: keep the position masked
            cat = torch.cat([logp + math.log(p), torch.full_like(logp[..., :1], stay)], -1)  # (n, L, V + 1)
            soft = torch.softmax((cat + gumbel_like(cat.detach(), generator).to(cat.dtype)) / tau, -1)
            hard = F.one_hot(soft.argmax(-1), V + 1).to(soft.dtype)
            y = hard - soft.detach() + soft  # straight-through: hard forward, soft gradient
            # V + 1 categories -> the S states: tokens, then MASK at mask_id (== V for masked processes)
            y_states = torch.zeros(n, length, S, device=device, dtype=y.dtype)
            y_states = y_states.index_copy(-1, torch.arange(V, device=device), y[..., :V])
            y_states = y_states.index_copy(-1, torch.tensor([mask_id], device=device), y[..., V:])
            x = torch.where(masked[..., None], y_states, x)
            masked = masked & (hard[..., V] > 0.5)
    return x[..., :V], kl


def finetune(model, reward, *, iterations: int = 100, n: int = 16, length: int | None = None, steps: int = 16,
             lr: float = 1e-4, beta: float = 0.1, tau: float = 1.0, grad_steps: int | None = None, seed: int = 0,
             log=None, stop=None) -> list[dict]:
    """DRAKES on `model` (a masked-diffusion SequenceModel, changed in place): `iterations` Adam steps of
    -mean(reward(x_0)) + beta * mean(KL) over n trajectories each. reward(x0 (n, L, V) one-hots) -> (n,)
    differentiable. Returns one dict per iteration: reward, kl, loss. stop() -> bool, asked after every step:
    True ends the run there (Ctrl-C in `ddlm finetune`), the history so far returned."""
    require_masked_diffusion(model, "DRAKES")
    process = model.process
    for name, v in (("iterations", iterations), ("n", n), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be a positive whole number, got {v!r}")
    if not (lr > 0 and beta >= 0 and tau > 0):
        raise UserError(f"DRAKES needs lr > 0, beta >= 0 and tau > 0, got lr={lr}, beta={beta}, tau={tau}")
    length = length or model.cfg.model.max_len
    backbone = model.backbone
    reference = copy.deepcopy(backbone).eval().requires_grad_(False)
    opt = torch.optim.Adam(backbone.parameters(), lr=lr)
    g = torch.Generator(device=model.device).manual_seed(seed)
    history = []
    was = backbone.training
    backbone.eval()  # no dropout: the trajectory is the sampler's
    try:
        with soft_inputs(backbone), soft_inputs(reference):
            for it in range(iterations):
                x0, kl = trajectory(backbone, process, n, length, steps, tau=tau, generator=g,
                                    reference=reference, grad_steps=grad_steps)
                r = reward(x0)
                loss = -r.mean() + beta * kl.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append({"reward": float(r.detach().mean()), "kl": float(kl.detach().mean()),
                                "loss": float(loss.detach())})
                if log is not None:
                    log(f"drakes {it + 1}/{iterations}: reward {history[-1]['reward']:.4f}, "
                        f"KL {history[-1]['kl']:.4f}")
                if stop is not None and stop():
                    break
    finally:
        backbone.train(was)
    return history
