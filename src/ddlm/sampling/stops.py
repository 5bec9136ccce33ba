"""Generation that stops: the end-of-record token (<eos>) as a stop predicate and the cut after it.

A model trained on records (`ddlm train --records ...`) writes r_1 .. r_n <eos> <pad> .. <pad>. Sampling
with `max_length=N` decodes within N positions and returns each row up to its first <eos>:

    AR           the core's stop hook ends a row once it has drawn <eos> (the run ends when every row has);
    masked       (MDLM, D3PM-absorbing, RDM without re-noising) a row is finished once some decided position
                 holds <eos> and every position before it is decided: what follows the first <eos> is
                 dropped anyway, so the steps it would cost are skipped. This leaves the distribution of the
                 kept prefix unchanged: the ancestral reverse process draws the kept positions from the same
                 conditionals whether or not the positions after them are decoded later;
    re-noising   (ReMDM, RDM's cond/uncond routing) no stop hook, since a decided <eos> may be revised:
                 the run goes to the end and the cut is made afterwards;
    sliding      blocks beyond the context stop for a row once a block has produced <eos> (`block_ended`).

`cut_at_end` then writes <pad> after the first end token (<eos>, or <pad> where a model put one first),
so no returned row holds an <eos> before real text, and counts each row's real tokens.

A row that has no end token within the N positions is not a record of at most N tokens: it is drawn again,
up to REDRAWS more times (`unended`; the redraws' network calls count in NFE), so the rows returned are the
model's records conditioned on ending within N, as a data.padding=skip model's are by its drawn length
n <= N. A row still unended after that is returned cut at N. (The training records of a row of N tokens all
end within it; an undertrained model that runs past N has not yet learned that they stop.)
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError


REDRAWS = 4  # extra draws of a row without an end token; a row with a 5% chance of running on ends ~1 in 3e6


def unended(tokens: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """(B,) bool: rows of tokens (B, L) that hold no end token (<eos>, or <pad> where a model put one first)."""
    return ~((tokens == eos_id) | (tokens == pad_id)).any(-1)


def first_end(tokens: torch.Tensor, end_ids) -> torch.Tensor:
    """(B,) index of the first position of tokens (B, L) holding one of `end_ids` (L where none does)."""
    end = torch.zeros_like(tokens, dtype=torch.bool)
    for i in end_ids:
        end |= tokens == i
    L = tokens.shape[1]
    return torch.where(end.any(-1), end.int().argmax(-1), torch.full_like(tokens[:, 0], L))


def eos_stop(eos_id: int) -> Callable:
    """The core's stop hook (state) -> (B,) bool: a decided <eos> with nothing undecided before it."""
    def stop(state) -> torch.Tensor:
        ended = (state.x == eos_id) & ~state.noisy  # (B, L) decided end tokens
        before = ended.int().cumsum(-1) == 0  # (B, L) positions before a row's first decided <eos>
        return ended.any(-1) & ~(state.noisy & before).any(-1)
    return stop


def block_ended(eos_id: int) -> Callable:
    """Sliding blocks' stop predicate: tokens (B, l) generated so far -> (B,) rows that produced <eos>."""
    def ended(tokens: torch.Tensor) -> torch.Tensor:
        return (tokens == eos_id).any(-1)
    return ended


def cut_at_end(tokens: torch.Tensor, eos_id: int, pad_id: int, skip_ids=()) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, L) -> (tokens with <pad> after the first <eos>/<pad> (B, L), lengths (B,) long).

    A length counts the tokens before the first end, less those in `skip_ids` (a leading <bos>): the
    tokens the row's text is decoded from. Positions after the end (undecided MASK, AR's BOS, anything a
    masked model drew there) become <pad>; the end token itself is kept."""
    end = first_end(tokens, (eos_id, pad_id))  # (B,)
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None]  # (1, L)
    out = torch.where(pos > end[:, None], torch.full_like(tokens, pad_id), tokens)
    body = pos < end[:, None]  # (B, L)
    for i in skip_ids:
        body &= tokens != i
    return out, body.sum(-1)


def check_max_length(tokenizer, max_length, length) -> int:
    """The window length for `max_length`, or a one-line UserError."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise UserError(f"max_length must be a positive whole number of tokens, got {max_length!r}")
    if length is not None:
        raise UserError("give either length (every sample exactly that long) or max_length (samples stop at "
                        "<eos>), not both")
    if getattr(tokenizer, "eos_id", None) is None:
        raise UserError("max_length needs a model that can end a text: this model's tokenizer has no <eos>; "
                        "train one on records (ddlm train --records lines|verses ...)")
    return max_length
