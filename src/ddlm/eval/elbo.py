"""Likelihood evaluation: the diffusion NELBO (an upper bound on -log p) or the AR model's exact NLL,
in nats per token, bits per character and perplexity, with a 95% interval over the t-samples."""

from __future__ import annotations

import math

import torch

from ..data.batches import as_batch


@torch.no_grad()
def evaluate_nll(model, blocks: torch.Tensor, batch_size: int = 32, t_samples: int = 4, seed: int = 0,
                 chars_per_token: float | None = None, max_blocks: int | None = None,
                 progress: bool = False) -> dict:
    """Average bound over `blocks` (N, L) (or a Batch: only its counted positions are scored and counted);
    each of `t_samples` passes draws fresh (stratified) t and masks.

    Returns nll (nats/token), bpc, ppl (per token), n_tokens, ci95 (half-width on nll, nats/token), passes.
    """
    backbone, objective = model.backbone, model.family.objective
    was_training = backbone.training
    backbone.eval()
    data = as_batch(blocks)  # a Batch (tokens, loss mask, condition) or bare (N, L) blocks
    if max_blocks is not None:
        data = data.rows(slice(0, max_blocks))
    blocks = data.tokens
    device = model.device
    n_counted = max(data.n_counted(), 1)
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
                part = data.rows(slice(i, i + batch_size)).to(device)
                if part.mask is None and part.cond is None:  # the bare tensor, as before the batch contract
                    part = part.tokens
                total += objective.bound(backbone, part, generator=g).double().sum().item()
            per_pass.append(total / n_counted)  # nats per counted position
    finally:
        backbone.train(was_training)
    nll = sum(per_pass) / len(per_pass)
    if len(per_pass) > 1:
        sd = math.sqrt(sum((v - nll) ** 2 for v in per_pass) / (len(per_pass) - 1))
        ci = 1.96 * sd / math.sqrt(len(per_pass))
    else:
        ci = 0.0
    if chars_per_token is None:
        chars_per_token = chars_per_token_of(model.tokenizer, blocks, data.mask)
    return {"nll": nll, "bpc": nll / math.log(2) / chars_per_token, "ppl": math.exp(nll),
            "n_tokens": int(n_counted), "ci95": ci, "passes": len(per_pass),
            "exact": bool(model.family.exact_likelihood), "chars_per_token": chars_per_token}


def chars_per_token_of(tokenizer, blocks: torch.Tensor, mask: torch.Tensor | None = None, max_rows: int = 256) -> float:
    """Characters of decoded text per token (1 for a character tokenizer), for bits per character; with a loss
    mask (N, L) per counted token (padding decodes to nothing and is not counted)."""
    rows = blocks[:max_rows]
    chars = sum(len(tokenizer.decode(r.tolist())) for r in rows)
    n = rows.numel() if mask is None else max(int(mask[:max_rows].sum()), 1)
    return max(chars, 1) / n
