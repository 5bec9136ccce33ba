"""From a DataConfig to (tokenizer, train blocks, validation blocks)."""

from __future__ import annotations

import torch

from ..config import DataConfig
from ..errors import UserError


def prepare_text(cfg: DataConfig, block_len: int, tokenizer=None, train: bool = True):
    """Load the corpus, split it, build (or reuse) the tokenizer and pack both parts into blocks.
    train=False (evaluation, with the model's tokenizer): the training part is not encoded, and None is returned
    in its place."""
    from .corpora import load_text, split_text
    from .packing import encode_corpus, pack_blocks
    from .tokenizers import build_tokenizer

    if cfg.records not in ("none", ""):
        # records are laid one per row by prepare_records; silently streaming them would be wrong
        raise UserError(f"data.records={cfg.records}: prepare_text streams a corpus, records are packed by "
                        "prepare_records (as ddlm train does); call that, or set data.records=none")
    if not 0.0 < cfg.val_fraction < 0.5:
        raise UserError(f"data.val_fraction must be in (0, 0.5), got {cfg.val_fraction}")
    text = load_text(cfg.source)
    train_text, val_text = split_text(text, cfg.val_fraction)
    if tokenizer is None:
        # a character vocabulary must cover validation text too; BPE learns merges from training text only
        source = text if cfg.tokenizer == "char" else train_text
        tokenizer = build_tokenizer(cfg.tokenizer, source, cfg.vocab_size if cfg.tokenizer == "bpe" else None)
    blocks = pack_blocks(encode_corpus(tokenizer, train_text), block_len) if train else None
    val = pack_blocks(encode_corpus(tokenizer, val_text), block_len)
    return tokenizer, blocks, val


def prepare_records(cfg: DataConfig, block_len: int, tokenizer=None, train: bool = True, bos: bool = False,
                    with_labels: bool = False):
    """Records of cfg.source (kind cfg.records) split, tokenized and packed one per row (data/records.py).

    Returns (tokenizer, train, val); train and val are (tokens (N, L) long, mask (N, L) bool, report) from
    pack_records, train is None when train=False. A new tokenizer is built with specials (<bos> <eos> <pad>);
    a given one must have them. bos=True puts <bos> in front of every record (the AR family needs it).
    Long records follow cfg.long_records; print describe_report(report) of each part once.
    with_labels=True adds a fourth element: the rows' labels (labels.RecordLabels) of labelled records
    (data/labels.py), or None for unlabelled ones.
    """
    from .labels import RecordLabels, kept_rows, label_ids
    from .records import encode_records, load_labelled, pack_flat, split_records
    from .tokenizers import build_tokenizer

    if not 0.0 < cfg.val_fraction < 0.5:
        raise UserError(f"data.val_fraction must be in (0, 0.5), got {cfg.val_fraction}")
    records, labels, about = load_labelled(cfg.source, cfg.records)
    # (n,) over all records, one numbering for both parts; checked first (one class only is refused)
    ids, names = label_ids(labels, cfg.source) if with_labels and labels is not None else (None, ())
    train_idx, val_idx = split_records(list(range(len(records))), cfg.val_fraction)
    train_records, val_records = [records[i] for i in train_idx], [records[i] for i in val_idx]
    if tokenizer is None:
        # a character vocabulary must cover validation records too; BPE learns merges from training records only
        # (a SMILES-token vocabulary too: a rare token only in validation would be unencodable)
        text = ("".join(records) if cfg.tokenizer == "char"
                else "\n".join(records if cfg.tokenizer == "smiles" else train_records))
        tokenizer = build_tokenizer(cfg.tokenizer, text, cfg.vocab_size if cfg.tokenizer == "bpe" else None,
                                    specials=True)
    elif getattr(tokenizer, "eos_id", None) is None:
        raise UserError("this tokenizer has no <eos>/<pad> (it was made for a stream); records need a model "
                        "trained on records, or set data.records=none")

    kept = {}

    def pack(part, name):
        flat, lengths = encode_records(tokenizer, part)
        kept[name] = kept_rows(lengths, block_len, bos, cfg.long_records)  # (n,) the records that get a row
        return pack_flat(flat, lengths, block_len, tokenizer.bos_id if bos else None, tokenizer.eos_id,
                            tokenizer.pad_id, cfg.long_records)

    out = (tokenizer, pack(train_records, "train") if train else None, pack(val_records, "val"))
    if not with_labels:
        return out
    if ids is None:
        return (*out, None)

    def rows(idx, name):  # the labels of a part's rows, in row order
        return ids[torch.tensor(idx, dtype=torch.long)][kept[name]]

    return (*out, RecordLabels(rows(train_idx, "train") if train else None, rows(val_idx, "val"), names, about))
