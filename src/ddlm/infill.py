"""Infilling with spans of unknown length: `generate(infill="In the beginning [MASK] earth.")`.

Syntax (one text, `ddlm sample DIR --infill TEXT`):

    [MASK]      a span of unknown length: tried at every length of `span_lengths` (default 1..32, `lo:hi`
                on the command line); at most one per text
    [MASK:k]    a span of exactly k tokens (any number of them)

An unknown length needs a model trained on records (its tokenizer has <eos>): the text is laid out as a
record row of the context length, text <eos> <pad> .., so that every length gives a whole record of the
same row length and their bounds compare. The length is chosen by one of SCORES:

    marginal  (MDLM, the default there) the bound on -log p(the given text around a span of length k), the
              span's tokens summed out: MDLM's NELBO over the given positions with the span masked at every
              t (a masked model is an any-order autoregressive model; this is its bound with the span decoded
              last). The smallest bound's length is kept and the n samples are filled at that length.
              Cost: one bound call per length (BOUND_DRAWS rows each) plus one infill run.
    fill      (D3PM, RDM) each of the n samples draws a fill at every length, each filled row is scored by
              the family's `objective.bound` (BOUND_DRAWS draws, the same for every candidate of a sample:
              common random numbers) and the sample keeps its most likely filled text. This favours short
              spans: one fill of a long span is less likely than one of a short span even where long spans
              are likelier in total. Cost: K = hi - lo + 1 infill runs plus K * BOUND_DRAWS bound calls.

An AR model would score exactly but cannot fill a span before a fixed suffix, so infilling is for the
diffusion families. `out.nfe` and `out.seconds` count the scoring too (README: "Generation that stops").
"""

from __future__ import annotations

import re
import time

import torch

from .errors import UserError
from .sampling.core import Hooks
from .sampling.denoiser import SampleOutput
from .sampling.stops import cut_at_end

SPAN = re.compile(r"\[MASK(?::([^\]]*))?\]")
DEFAULT_SPAN_LENGTHS = (1, 32)
BOUND_DRAWS = 8  # noise draws per candidate's bound: enough to tell lengths apart, 8 network calls each
SCORES = ("marginal", "fill")
"""how a length is chosen: marginal = the bound of the text around the span, the span summed out (MDLM); fill =
fill every length and keep each sample's most likely filled text (any diffusion family)"""


def parse_span_lengths(spec) -> tuple[int, int]:
    """`"lo:hi"`, `"k"`, (lo, hi) or k -> (lo, hi) with 1 <= lo <= hi; a one-line UserError otherwise."""
    if spec is None:
        return DEFAULT_SPAN_LENGTHS
    try:
        if isinstance(spec, str):
            parts = spec.split(":")
            if len(parts) not in (1, 2):
                raise ValueError
            lo, hi = int(parts[0]), int(parts[-1])
        elif isinstance(spec, int) and not isinstance(spec, bool):
            lo = hi = spec
        else:
            lo, hi = (int(v) for v in spec)
    except (TypeError, ValueError):
        raise UserError(f"span lengths must look like LO:HI (e.g. 1:32) or one length, got {spec!r}") from None
    if not 1 <= lo <= hi:
        raise UserError(f"span lengths must satisfy 1 <= LO <= HI, got {lo}:{hi}")
    return lo, hi


def parse_template(model, template: str) -> list:
    """The text as segments: token ids (P,) of given text, an int k (a span of k tokens) or None (unknown)."""
    if not isinstance(template, str) or not SPAN.search(template):
        raise UserError("an infill text needs at least one [MASK] (a span of unknown length) or [MASK:k] "
                        f"(k tokens), e.g. 'In the beginning [MASK] earth.'; got {template!r}")
    if sum(m.group(1) is None for m in SPAN.finditer(template)) > 1:
        raise UserError("at most one [MASK] of unknown length per text (its length is searched); give the "
                        "others a length, e.g. [MASK:5]")
    segments, at = [], 0
    for m in SPAN.finditer(template):
        if m.start() > at:
            segments.append(model.encode(template[at: m.start()]))
        k = m.group(1)
        if k is not None and not (k.isdigit() and int(k) >= 1):
            raise UserError(f"a span's length must be a positive whole number, as in [MASK:5]; got {m.group(0)}")
        segments.append(None if k is None else int(k))
        at = m.end()
    if at < len(template):
        segments.append(model.encode(template[at:]))
    return segments


def layout(segments: list, k: int | None, row_length: int | None, eos: int | None, pad: int | None):
    """(fixed (L,) long, fixed_mask (L,) bool) with the unknown span k tokens long; with row_length (a
    records model) the text is followed by <eos> and <pad> up to row_length, all fixed."""
    ids, free = [], []
    for s in segments:
        n = (k if s is None else s) if not isinstance(s, torch.Tensor) else None
        if n is None:
            ids += s.tolist()
            free += [False] * len(s)
        else:
            ids += [0] * n  # placeholders: never read
            free += [True] * n
    if row_length is not None:
        ids += [eos] + [pad] * (row_length - len(ids) - 1)
        free += [False] * (row_length - len(free))
    return torch.tensor(ids, dtype=torch.long), ~torch.tensor(free, dtype=torch.bool)


def generate_infill(model, template: str, span_lengths=None, *, n: int = 1, seed=None, decode: bool = True,
                    length=None, prompt=None, fixed=None, max_length=None, score: str | None = None,
                    **options) -> SampleOutput:
    """SequenceModel.generate(infill=...): n filled texts (see the module docstring). `out.span_lengths` (n,)
    holds the length each sample's unknown span took (None without one). score: "marginal" (MDLM's default)
    or "fill" (the others'; see SCORES)."""
    from .pipeline import draw_seed

    if length is not None or prompt or fixed is not None or max_length is not None:
        raise UserError("infill lays out the whole text itself; drop length, prompt, fixed and max_length")
    if model.family.causal:
        raise UserError("an autoregressive model can only continue a prefix; infill with a diffusion model")
    segments = parse_template(model, template)
    unknown = any(s is None for s in segments)
    tok, context = model.tokenizer, model.cfg.model.max_len
    records = tok.eos_id is not None
    if unknown and not records:
        raise UserError("a [MASK] of unknown length needs a model that can end a text (a tokenizer with <eos>): "
                        "train one on records (ddlm train --records ...), or give the span a length: [MASK:5]")
    given = sum(len(s) if isinstance(s, torch.Tensor) else (s or 0) for s in segments) + (1 if records else 0)
    lo, hi = parse_span_lengths(span_lengths) if unknown else (0, 0)
    if given + lo > context:
        raise UserError(f"the text needs {given + lo} tokens (with its <eos> and the shortest span) but the model's "
                        f"context is {context}; shorten the text or the span lengths")
    ks = list(range(lo, min(hi, context - given) + 1)) if unknown else [None]
    row_length = context if records else None
    seed = draw_seed() if seed is None else seed
    score = score or ("marginal" if hasattr(model.family.objective, "scored") else "fill")
    if score not in SCORES:
        raise ValueError(f"unknown infill score {score!r}; one of {', '.join(SCORES)}")
    start = time.perf_counter()
    candidates, nfe, row_evals = [], 0, 0
    if len(ks) > 1 and score == "marginal":  # the most likely length first, then n fills of that length
        layouts = [layout(segments, k, row_length, tok.eos_id, tok.pad_id) for k in ks]
        scores = marginal_scores(model, torch.stack([f for f, _ in layouts]), ~torch.stack([m for _, m in layouts]),
                                 seed) + _length_cost(model, given, ks)
        best = int(scores.argmin())
        ks, nfe, row_evals = [ks[best]], len(layouts), len(layouts) * BOUND_DRAWS
    for j, k in enumerate(ks):
        f, m = layout(segments, k, row_length, tok.eos_id, tok.pad_id)
        out = _fill(model, n, f, m, (seed + j) % 2**63, **options)
        candidates.append(out.tokens)
        nfe, row_evals = nfe + out.nfe, row_evals + out.row_evals
    tokens = torch.stack(candidates)  # (K, n, L)
    chosen = torch.zeros(n, dtype=torch.long)  # (n,) index into ks per sample
    if len(ks) > 1:
        scores, calls = bound_scores(model, tokens, seed, options.get("batch_size") or 64)
        scores = scores + _length_cost(model, given, ks)[:, None]
        chosen = scores.argmin(0)  # (n,) the most likely length's index per sample
        nfe, row_evals = nfe + calls, row_evals + tokens.shape[0] * tokens.shape[1] * BOUND_DRAWS
    best = tokens[chosen, torch.arange(n)]  # (n, L)
    out = SampleOutput(best, nfe, row_evals, time.perf_counter() - start, seed=seed)
    if records:
        out.tokens, out.lengths = cut_at_end(best, tok.eos_id, tok.pad_id, (tok.bos_id,))
    out.texts = [model.decode(r) for r in out.tokens] if decode else None
    out.span_lengths = torch.tensor([ks[i] for i in chosen.tolist()]) if unknown else None
    return out


def _fill(model, n, fixed, fixed_mask, seed, *, steps=None, sampler=None, planner=None, temperature=None,
          batch_size=64, planner_options=None) -> SampleOutput:
    """generate(n, fixed=..., fixed_mask=...) whose free positions never draw a special token: a span is
    text in the middle of a record, so an <eos> (or <pad>, <bos>) there would end or break it."""
    req = model._request(n, None, steps, sampler, planner, temperature, None, fixed, fixed_mask, None, seed,
                         batch_size, False, 0, False, keep_all=True, planner_options=planner_options)
    specials = [i for i in model.tokenizer.special_ids if i is not None]
    if specials:
        req["opts"] = dict(req["opts"], hooks=Hooks(logits_transform=_forbid(specials)))
    parts = list(model._batches(req, False, False, False))
    return SampleOutput(torch.cat([p.tokens for p in parts]), sum(p.nfe for p in parts),
                        sum(p.row_evals for p in parts), sum(p.seconds for p in parts))


def _forbid(ids):
    def transform(logp, state):  # (B, L', V): no mass on `ids`, the rest renormalised
        logp = logp.clone()
        logp[..., ids] = -torch.inf
        return logp.log_softmax(-1)
    return transform


@torch.no_grad()
def bound_scores(model, tokens: torch.Tensor, seed: int, batch_size: int) -> tuple[torch.Tensor, int]:
    """Mean bound (K, n) in nats of candidate rows tokens (K, n, L) over BOUND_DRAWS noise draws, each draw
    seeded the same for every candidate (common random numbers); and the network calls it took."""
    was_training = model.backbone.training
    model.backbone.eval()
    device = model.device
    objective = model.family.objective
    K, n, _ = tokens.shape
    total = torch.zeros(K, n, dtype=torch.float64)
    calls = 0
    g = torch.Generator(device=device)
    learn = _learns_padding(model)
    try:
        for d in range(BOUND_DRAWS):
            for k in range(K):
                for s in range(0, n, batch_size):
                    g.manual_seed((seed * 1_000_003 + d * 7919 + s) % 2**63)
                    rows = _as_trained(model, tokens[k, s: s + batch_size].to(device), learn)
                    total[k, s: s + batch_size] += objective.bound(model.backbone, rows, generator=g).double().cpu()
                    calls += 1
    finally:
        model.backbone.train(was_training)
    return total / BOUND_DRAWS, calls


@torch.no_grad()
def marginal_scores(model, rows: torch.Tensor, span: torch.Tensor, seed: int) -> torch.Tensor:
    """A bound (K,) in nats on -log p(the given tokens of row k, its span left unknown) for K layouts rows
    (K, L) whose span positions span (K, L) are free: MDLM's NELBO over the given positions only, with the
    span masked at every t. A masked diffusion model is an any-order autoregressive model, and this is its
    bound with the span decoded last, i.e. summed out: the likelihood of the text around a span of that
    length, whatever fills it. BOUND_DRAWS draws of (t, mask) per layout, the same for every layout."""
    from .data.batches import Batch

    objective, backbone = model.family.objective, model.backbone
    was_training = backbone.training
    backbone.eval()
    learn = _learns_padding(model)
    mask_id = objective.process.mask_id
    g = torch.Generator(device=model.device)
    out = torch.zeros(len(rows), dtype=torch.float64)
    try:
        for k in range(len(rows)):
            g.manual_seed(seed % 2**63)  # common random numbers: every layout sees the same t and noise
            x0 = rows[k].to(model.device).expand(BOUND_DRAWS, -1)  # (D, L)
            free = span[k].to(model.device).expand(BOUND_DRAWS, -1)
            t = objective.sample_t(BOUND_DRAWS, g, model.device)  # (D,) stratified where the model's is
            xt = torch.where(free, mask_id, objective.process.sample_xt(x0, t, g))
            # the row as trained (learn: every position; skip: the record and <eos>, the span's placeholders
            # included, so that attention sees the span as it would see masked text), the span never scored
            b = Batch(x0) if learn else Batch(x0, mask=x0 != model.tokenizer.pad_id)
            nll, _, _ = objective.scored(backbone, b, xt, t)  # (D, L) at the masked counted positions
            nll = torch.where(free, torch.zeros_like(nll), nll)
            out[k] = (objective.weight(t) * nll.sum(-1)).double().mean().cpu()
    finally:
        backbone.train(was_training)
    return out


def _length_cost(model, given: int, ks: list) -> torch.Tensor:
    """-log p(n) (K,) of the record lengths n = given + k (tokens, <eos> included) of a data.padding=skip
    model, whose bounds are given the length (sampling/lengths.py); zeros for the others, whose bounds hold it."""
    if not model.draws_lengths() or ks == [None]:
        return torch.zeros(len(ks), dtype=torch.float64)
    return -torch.log(model.length_probs())[torch.tensor([given + k for k in ks])]


def _learns_padding(model) -> bool:
    """Whether the model's loss counted <pad> (data.padding=learn, the default; stream models: no <pad>)."""
    from .data.record_data import learns_padding, uses_records

    return not uses_records(model.cfg.data) or learns_padding(model.cfg, model.tokenizer.vocab_size)


def _as_trained(model, rows: torch.Tensor, learn: bool):
    """Rows (b, L) as the model was trained to score them (data/record_data.py): the whole row (learn), or a
    Batch counting and attending to the record and its <eos> only (skip: a bound given the length, to which
    generate_infill adds the length's cost under the training lengths, _length_cost)."""
    if learn or model.tokenizer.eos_id is None:
        return rows
    from .data.batches import Batch
    from .sampling.stops import first_end

    end = first_end(rows, (model.tokenizer.eos_id,))  # (b,)
    return Batch(rows, torch.arange(rows.shape[1], device=rows.device)[None] <= end[:, None])
