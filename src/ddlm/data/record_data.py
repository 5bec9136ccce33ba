"""Records in training and evaluation: the packed rows of records.py turned into what each family trains on.

Every family gets the same row, one record per row (no <bos> of the tokenizer's own):

    r_1 ... r_n <eos> <pad> ... <pad>                     length model.max_len

and data.padding says which positions count in the loss and which the attention sees:

    family            counted in the loss             attention (key-padding)
    mdlm, d3pm-*,     learn: every position (r, <eos>   learn: every position
    rdm-*               and the <pad> after it)
                      skip:  r and <eos>                skip:  r and <eos>
    ar (causal)       r and <eos>, whatever padding says   causal: <pad> comes after <eos> and never reaches
                                                        a counted position

"learn" is LLaDA's SFT recipe (Nie et al. 2025, arXiv 2502.09992): the model learns <eos> and the <pad> that
follows it, so a window decoded at full length carries its own end. "skip" scores only the record and its <eos>
and hides the padding from attention; such a model is told the record's length by the number of positions it
attends to, so its bound is a bound given the length (eval/records.py adds the length's cost).

The AR family needs a first token to predict r_1 from: its process puts its BOS (id V) in front of every row
(`ARProcess.shift`), so the input row is `BOS r_1 ... r_n <eos> <pad>...`, r_1 is predicted from BOS and <eos>
from r_n, and the AR sampler, which starts from that BOS, starts a record. A tokenizer <bos> at position 0 would
be a second BOS that the sampler never puts there.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .batches import Batch, BlockBatches

PADDING = ("learn", "skip")
"data.padding: the treatment of <pad> in the loss and the attention of non-causal families (table above)"


def uses_records(data_cfg) -> bool:
    """Whether the data config asks for records (data.records is a kind, not none)."""
    return data_cfg.records not in ("none", "", None)


def check_padding(padding) -> None:
    if padding not in PADDING:
        raise UserError(f"unknown data.padding {padding!r}; choose learn (<pad> counts in the loss, LLaDA's SFT) "
                        "or skip (the loss and attention skip <pad>)")


def learns_padding(cfg, vocab_size: int) -> bool:
    """True when <pad> counts in the loss (data.padding=learn and a non-causal family)."""
    from ..families import build_family

    check_padding(cfg.data.padding)
    return cfg.data.padding == "learn" and not build_family(cfg.process, vocab_size).causal


def record_batch(tokens: torch.Tensor, mask: torch.Tensor, learn_padding: bool):
    """The rows (N, L) as the objectives take them: a bare tensor when every position counts (learn: the very
    code path of a stream), else a Batch whose loss mask, and key-padding mask, is `mask` (record and <eos>)."""
    return tokens if learn_padding else Batch(tokens, mask)


def prepare_record_data(cfg, tokenizer=None, train: bool = True, with_labels: bool = False):
    """(tokenizer, train part, validation part, reports) of cfg's records; each part is (tokens (N, L), mask
    (N, L) bool) from pack_records (train part None when train=False), reports the pack reports of the parts
    (describe_report gives their lines). A new tokenizer is built with <bos> <eos> <pad>.
    with_labels=True adds the rows' labels (labels.RecordLabels, or None for unlabelled records)."""
    from .prepare import prepare_records

    check_padding(cfg.data.padding)
    tokenizer, tr, val, *labels = prepare_records(cfg.data, cfg.model.max_len, tokenizer, train=train, bos=False,
                                                  with_labels=with_labels)
    reports = ([tr[2]] if tr is not None else []) + [val[2]]
    return (tokenizer, (tr[:2] if tr is not None else None), val[:2], reports, *labels)


def record_source(cfg, tokenizer=None):
    """(tokenizer, batch source, validation data) for training on records: BlockBatches over the training rows
    (its `report_lines` say what was packed, skipped or cut, for the Trainer to log once). Labelled records
    (data/labels.py) put each row's label in the batch's cond (B,) and their names in `batches.class_names`;
    validation stays unlabelled (the null label: the bound of the unconditional model)."""
    from .labels import describe_labels
    from .records import describe_report

    tokenizer, (tokens, mask), (val_tokens, val_mask), reports, labels = prepare_record_data(cfg, tokenizer,
                                                                                              with_labels=True)
    learn = learns_padding(cfg, tokenizer.vocab_size)
    batches = BlockBatches(tokens, cfg.train.batch_size, cfg.train.seed, masks=None if learn else mask,
                           labels=None if labels is None else labels.train)
    batches.class_names = () if labels is None else labels.names
    batches.report_lines = [describe_report(reports[0], "training records"),
                            describe_report(reports[1], "validation records")]
    if labels is not None:
        batches.report_lines.append(describe_labels(labels))
    if learn and cfg.model.positions == "rotary":
        batches.report_lines.append(POSITION_BLIND)
    return tokenizer, batches, record_batch(val_tokens, val_mask, learn)


# Measured on MOSES SELFIES, 3000 steps (README, Molecules): a rotary-only model ended 21 of 300 rows at a <pad>
# drawn before any <eos> (11 of them empty texts) and wrote records 27.6 tokens long against the data's 34.5;
# with rotary+learned positions 6 rows (none empty), 34.2 tokens, and a lower bound (0.706 nats/token, not 0.736).
POSITION_BLIND = ("note: with data.padding=learn and model.positions=rotary the model cannot tell its positions "
                  "apart while a row is all MASK, so its first draws (often <pad>) land anywhere; "
                  "model.positions=rotary+learned adds absolute positions")


def record_validation(cfg, tokenizer, data: str | None = None):
    """The validation rows of cfg's records (or of `data`: a file's records are its lines) for evaluation, as
    the model was trained on them, with the pack report: (validation data, real mask (N, L), report)."""
    from .records import RECORD_SOURCES

    if data is not None:
        from ..config import apply_overrides

        # a file given to a model of labelled lines is read as labelled lines (its labels left out)
        kind = cfg.data.records if data in RECORD_SOURCES or cfg.data.records == "labelled-lines" else "lines"
        cfg = apply_overrides(cfg, [f"data.source={data}", f"data.records={kind}"])
    tokenizer, _, (tokens, mask), reports = prepare_record_data(cfg, tokenizer, train=False)
    return record_batch(tokens, mask, learns_padding(cfg, tokenizer.vocab_size)), mask, reports[0]


def training_lengths(cfg, tokenizer) -> torch.Tensor:
    """Tokens (record + <eos>) of every packed training record (n,), for the length prior of eval/records.py."""
    _, (tokens, mask), _, _ = prepare_record_data(cfg, tokenizer, train=True)
    return mask.sum(-1)
