"""Likelihood evaluation: the diffusion NELBO (an upper bound on -log p) or the AR model's exact NLL,
in nats per token, bits per character and perplexity, with a 95% interval over the t-samples."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def evaluate_nll(model, blocks: torch.Tensor, batch_size: int = 32, t_samples: int = 4, seed: int = 0,
                 chars_per_token: float | None = None, max_blocks: int | None = None,
                 progress: bool = False) -> dict:
    """Average bound over `blocks` (N, L); each of `t_samples` passes draws fresh (stratified) t and masks.

    Returns nll (nats/token), bpc, ppl (per token), n_tokens, ci95 (half-width on nll, nats/token), passes.
    """
    backbone, objective = model.backbone, model.family.objective
    was_training = backbone.training
    backbone.eval()
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    device = model.device
    passes = 1 if model.family.exact_likelihood else t_samples
    g = torch.Generator(device=device).manual_seed(seed)
    per_pass = []
    iterator = range(passes)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc="evaluating", leave=False)
    try:
        for _ in iterator:
            total = 0.0
            for i in range(0, len(blocks), batch_size):
                x0 = blocks[i: i + batch_size].to(device)
                total += objective.bound(backbone, x0, generator=g).double().sum().item()
            per_pass.append(total / blocks.numel())
    finally:
        backbone.train(was_training)
    nll = sum(per_pass) / len(per_pass)
    if len(per_pass) > 1:
        sd = math.sqrt(sum((v - nll) ** 2 for v in per_pass) / (len(per_pass) - 1))
        ci = 1.96 * sd / math.sqrt(len(per_pass))
    else:
        ci = 0.0
    if chars_per_token is None:
        chars_per_token = chars_per_token_of(model.tokenizer, blocks)
    return {"nll": nll, "bpc": nll / math.log(2) / chars_per_token, "ppl": math.exp(nll),
            "n_tokens": int(blocks.numel()), "ci95": ci, "passes": len(per_pass),
            "exact": bool(model.family.exact_likelihood), "chars_per_token": chars_per_token}


def chars_per_token_of(tokenizer, blocks: torch.Tensor, max_rows: int = 256) -> float:
    """Characters of decoded text per token (1 for a character tokenizer), for bits per character."""
    rows = blocks[:max_rows]
    chars = sum(len(tokenizer.decode(r.tolist())) for r in rows)
    return max(chars, 1) / rows.numel()
