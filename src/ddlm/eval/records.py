"""The likelihood bound of a records model per record, in bits per character.

    bpc = (sum over records of the bound in nats [+ the length's cost]) / ln 2 / (real characters)

The bound is the family's (the NELBO of a diffusion model, the exact NLL of AR) over the positions the model
was trained to score: the record and its <eos> (and, with data.padding=learn, the <pad> that follows, whose
nats a trained model makes ~0; the bound of the padded row still bounds -log p(record), since the padding
is fixed by the record). <eos> is scored (its bits are in the numerator) but is not a character (the
denominator counts the characters of the decoded records; specials decode to nothing).

A data.padding=skip model attends to exactly the record and its <eos>, so it is told the length and its bound
is -log p(record | length). To make it a bound on -log p(record), comparable with the others, its length is
paid for under the training records' lengths: -log p(n), p(n) = (count(n) + 1/L) / (N + 1) over the lengths
n = 1..L (record + <eos>) of the N training rows (one pseudo-record spread over the L lengths), i.e. the model
that draws a length from the training data and then the record given its length (as its sampler does). `length_bpc` reports that part.
"""

from __future__ import annotations

import math

import torch

from .elbo import evaluate_nll


def length_prior(train_lengths: torch.Tensor, block_len: int) -> torch.Tensor:
    """-log p(n) (block_len + 1,) in nats for n = 0..block_len: the training lengths (N,) (record + <eos>)
    smoothed by one pseudo-record spread over n = 1..block_len (sampling/lengths.py prior_probs); n = 0 never
    occurs (infinite cost)."""
    from ..sampling.lengths import prior_probs

    return -torch.log(prior_probs(torch.bincount(train_lengths.long(), minlength=block_len + 1), block_len))


def length_nats_for(model) -> torch.Tensor | None:
    """The length prior (L + 1,) a model needs for a bound on -log p(record): a non-causal data.padding=skip
    model's (from its training records' lengths), None for the others (their bound already pays the length)."""
    if not model.draws_lengths():
        return None
    return -torch.log(model.length_probs())  # the saved training lengths (or counted again), as length_prior


@torch.no_grad()
def evaluate_records(model, data, real_mask: torch.Tensor, *, batch_size: int = 32, t_samples: int = 4,
                     seed: int = 0, max_blocks: int | None = None, length_nats: torch.Tensor | None = None,
                     progress: bool = False) -> dict:
    """Bound per record over the validation rows `data` (a bare (N, L) tensor or a Batch, as the model was
    trained), `real_mask` (N, L) True at each record's tokens and <eos>. `length_nats` (L + 1,) from
    length_prior: added per record (skip models). Returns evaluate_nll's fields plus n_records, n_chars,
    bpc (per real character, length included), bpc_ci95, nats_per_record, length_bpc."""
    rows = data.tokens if hasattr(data, "tokens") else data  # (N, L)
    if max_blocks is not None:
        rows, real_mask = rows[:max_blocks], real_mask[:max_blocks]
    n_chars = max(sum(len(model.tokenizer.decode(r.tolist())) for r in rows), 1)
    m = evaluate_nll(model, data, batch_size=batch_size, t_samples=t_samples, seed=seed, max_blocks=max_blocks,
                     progress=progress, chars_per_token=1.0)
    total, ci_total = m["nll"] * m["n_tokens"], m["ci95"] * m["n_tokens"]  # nats over every record
    length_total = 0.0
    if length_nats is not None:
        length_total = float(length_nats[real_mask.sum(-1)].sum())
    n_records = len(rows)
    m.update(n_records=n_records, n_chars=n_chars,
             bpc=(total + length_total) / math.log(2) / n_chars, bpc_ci95=ci_total / math.log(2) / n_chars,
             nats_per_record=(total + length_total) / n_records, length_bpc=length_total / math.log(2) / n_chars,
             chars_per_token=n_chars / max(m["n_tokens"], 1), records=True)
    return m


def describe(m: dict, family: str, data: str, kind: str) -> str:
    """One line for evaluate_records' result."""
    what = "exact NLL" if m["exact"] else f"NELBO bound, {m['passes']} t-sample{'s' if m['passes'] != 1 else ''}"
    ci = f" ± {m['bpc_ci95']:.4f} (95%)" if (m["exact"] or m["passes"] > 1) else " (no interval from one t-sample)"
    records = f"{m['n_records']:,} record{'s' if m['n_records'] != 1 else ''}"
    line = (f"{family} on {data} {kind} validation ({records}, {m['n_chars']:,} characters; {what}): "
            f"{m['bpc']:.4f}{ci} bits per character, {m['nats_per_record']:.2f} nats per record "
            "(<eos> scored, not counted as a character)")
    if m["length_bpc"]:
        line += (f"; includes {m['length_bpc']:.4f} bpc for the length under the training lengths (padding=skip: "
                 "the model is given the length)")
    return line
