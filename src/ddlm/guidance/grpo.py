"""Policy-gradient reward fine-tuning of a masked diffusion model with the exact reward: GRPO (Shao et al. 2024,
"DeepSeekMath", arXiv 2402.03300) with the likelihood a masked diffusion model can give, as d1's diffu-GRPO
(Zhao et al. 2025, arXiv 2504.12216) and LLaDA 1.5's VRPO (Zhu et al. 2025, arXiv 2505.19223) do.

Every iteration draws a group of G records x^1..x^G from the current model with its own sampler (no gradients),
scores them with the reward r (RDKit's QED itself: no surrogate, nothing differentiable needed) and takes the
group-relative advantages

    A_i = (r_i - mean_j r_j) / (std_j r_j + 1e-4)

log p_theta(x) of a masked diffusion model is intractable; its ELBO stands in for it (one draw of t and of the
mask per record and per copy, `masks` copies, MDLM's continuous-time weight w(t) = -alpha'(t) / (1 - alpha(t))):

    ELBO_theta(x) ~= w(t) * sum_{l masked in x_t} log p_theta(x^l | x_t)

The loss of one iteration (one gradient step on fresh samples, so PPO's ratio is 1 and its clipping does nothing):

    loss = - mean_i A_i * ELBO_theta(x^i) / n_i  +  beta * mean_{i, masked l} k3_l
    k3_l = exp(q_l) - q_l - 1,  q_l = log p_ref(x^l | x_t) - log p_theta(x^l | x_t)   (>= 0, 0 iff equal)

n_i: the record's counted positions (GRPO's per-token average); k3: the estimator of KL(p_theta || p_ref) that
GRPO uses, here on the denoising conditionals at the masked positions, against the frozen pretrained copy
(the same x_t for both). Where the reward is all a group agrees on (every A_i = 0) the step only pulls towards
the reference.
"""

from __future__ import annotations

import copy
import statistics

import torch

from ..data.batches import Batch, counted, model_kwargs
from ..errors import UserError
from ..objectives.mdlm import MDLMObjective


def _check(model):
    process = model.process
    if getattr(process, "mask_id", None) is None or model.family.causal or not hasattr(process, "schedule"):
        raise UserError("GRPO fine-tunes a masked-diffusion model (mdlm); this model's family is "
                        f"{model.family.name}")


def record_rows(model, tokens: torch.Tensor) -> Batch:
    """Sampled rows (G, L) as the model trains on them (data/record_data.py): after a row's first <eos> every
    position is <pad>; with data.padding=skip only the record and its <eos> count (and are attended to), with
    learn (or no records) every position counts."""
    eos = getattr(model.tokenizer, "eos_id", None)
    pad = getattr(model.tokenizer, "pad_id", None)
    if eos is None or pad is None:
        return Batch(tokens)
    L = tokens.shape[1]
    pos = torch.arange(L, device=tokens.device)
    is_eos = tokens == eos
    first = torch.where(is_eos.any(-1), is_eos.float().argmax(-1), torch.full_like(tokens[:, 0], L))  # (G,)
    after = pos[None] > first[:, None]  # (G, L) past the <eos>
    rows = torch.where(after, torch.full_like(tokens, pad), tokens)
    if getattr(model.cfg.data, "padding", "learn") == "skip":
        return Batch(rows, ~after)
    return Batch(rows)


def policy_loss(backbone, reference, objective, batch: Batch, advantages: torch.Tensor, beta: float,
                masks: int = 1, generator=None) -> dict:
    """The GRPO loss above on records `batch` (G rows) with advantages (G,): {"loss", "kl" (mean k3 per masked
    position), "elbo" (mean ELBO per counted position, nats)}. `masks` copies of each record, each with its own
    t and mask; t stratified over all copies (MDLM's low-discrepancy draw)."""
    G = batch.tokens.shape[0]
    big = Batch(batch.tokens.repeat(masks, 1), None if batch.mask is None else batch.mask.repeat(masks, 1),
                None if batch.cond is None else batch.cond.repeat(masks))
    t = objective.sample_t(G * masks, generator, big.tokens.device)  # (G*m,)
    xt = objective.process.sample_xt(big.tokens, t, generator)
    if big.mask is not None:  # what does not count is context, never masked
        xt = torch.where(big.mask, xt, big.tokens)
    nll, masked, _ = objective.scored(backbone, big, xt, t)  # (G*m, L)
    with torch.no_grad():
        ref_logp = objective.process.log_probs(reference(xt, t, **model_kwargs(big)))  # (G*m, L, V)
        ref_lp = ref_logp.gather(-1, big.tokens[..., None])[..., 0]
    n = (big.mask.sum(-1) if big.mask is not None else torch.full((G * masks,), big.tokens.shape[1],
                                                                  device=nll.device)).clamp_min(1)
    elbo = -(objective.weight(t) * nll.sum(-1)) / n  # (G*m,) per counted position
    q = counted(ref_lp + nll, big) * masked  # log p_ref - log p_theta at masked counted positions
    k3 = (q.exp() - q - 1.0) * masked
    kl = k3.sum() / masked.sum().clamp_min(1)
    pg = -(advantages.repeat(masks) * elbo).mean()
    return {"loss": pg + beta * kl, "kl": kl.detach(), "elbo": elbo.detach().mean()}


def advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's group-relative advantages (G,): rewards standardised within the group (all 0 when they agree)."""
    r = rewards.double()
    return ((r - r.mean()) / (r.std(unbiased=False) + 1e-4)).float()


def finetune(model, reward, *, iterations: int = 100, group: int = 32, steps: int | None = None, lr: float = 1e-4,
             beta: float = 0.05, masks: int = 2, seed: int = 0, log=None) -> list[dict]:
    """GRPO on `model` (a masked-diffusion SequenceModel, changed in place): `iterations` Adam steps, each on a
    fresh group of `group` records sampled with `steps` denoising steps (default the model's sample.steps).
    reward(tokens (G, L)) -> (G,) (wrap a reward on texts with guidance.value.checked_reward and texts_of).
    Returns one dict per iteration: reward (mean), reward_median, kl, elbo, unique (distinct rows / G)."""
    _check(model)
    for name, v in (("iterations", iterations), ("group", group), ("masks", masks)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be a positive whole number, got {v!r}")
    if group < 2:
        raise UserError("GRPO compares records within a group: group must be at least 2")
    if not (lr > 0 and beta >= 0):
        raise UserError(f"GRPO needs lr > 0 and beta >= 0, got lr={lr}, beta={beta}")
    backbone = model.backbone
    reference = copy.deepcopy(backbone).eval().requires_grad_(False)
    objective = MDLMObjective(model.process, "stratified")
    opt = torch.optim.Adam(backbone.parameters(), lr=lr)
    g = torch.Generator(device=model.device).manual_seed(seed)
    max_length = model.cfg.model.max_len if getattr(model.tokenizer, "eos_id", None) is not None else None
    history = []
    was = backbone.training
    backbone.eval()  # no dropout: the records are the sampler's and the ELBO the evaluator's
    try:
        for it in range(iterations):
            out = model.generate(group, steps=steps, max_length=max_length, seed=seed * 1_000_003 + it,
                                 batch_size=group, decode=False)
            batch = record_rows(model, out.tokens.to(model.device))
            r = torch.as_tensor(reward(batch.tokens), dtype=torch.float64).reshape(-1)
            finite = torch.isfinite(r)
            if not bool(finite.all()):  # -inf (impossible) records: the group's worst, not an infinity
                r = torch.where(finite, r, r[finite].min() - 1.0 if bool(finite.any()) else torch.zeros_like(r))
            a = advantages(r).to(model.device)
            terms = policy_loss(backbone, reference, objective, batch, a, beta, masks, g)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            history.append({"reward": round(float(r.mean()), 5), "reward_median": round(statistics.median(r.tolist()), 5),
                            "kl": round(float(terms["kl"]), 6), "elbo": round(float(terms["elbo"]), 5),
                            "unique": round(len({tuple(row) for row in batch.tokens.tolist()}) / group, 4)})
            if log is not None:
                h = history[-1]
                log(f"grpo {it + 1}/{iterations}: reward mean {h['reward']:.4f} median {h['reward_median']:.4f}, "
                    f"KL {h['kl']:.4f}, unique {h['unique']:.2f}")
    finally:
        backbone.train(was)
    return history
