"""Labelled records: a class label per record, for class-conditional training and classifier-free guidance.

Two ways in:

    a file, data.records=labelled-lines    every non-empty line is  LABEL<TAB>RECORD  (split at the first TAB)
    a task's record kind                   its fn returns `Labelled(records, labels)` (e.g. moses smiles-5k-qed4:
                                           the QED quartile of each molecule)

Labels are strings; the K distinct ones are numbered 0..K-1 in sorted order (`label_ids`), and the names are
saved with the model (model.class_names), so `ddlm sample DIR --cond NAME` takes a name as well as a number.
Training puts each row's label in `Batch.cond` (B,) and drops it with probability train.cond_dropout
(guidance/conditions.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

LABELLED_LINES = "labelled-lines"
"data.records for a file of LABEL<TAB>RECORD lines"


@dataclass
class Labelled:
    """Records with a string label each, in the same order; `about` is one line saying what the labels mean
    (printed with the training report), e.g. the bin edges of a property."""

    records: list[str]
    labels: list[str]
    about: str = ""

    def __post_init__(self):
        if len(self.records) != len(self.labels):
            raise ValueError(f"{len(self.records)} records but {len(self.labels)} labels")


@dataclass
class RecordLabels:
    """The labels of the packed rows: train (N_train,) long and val (N_val,) long (None when not prepared),
    numbered by `names` (label i is names[i])."""

    train: torch.Tensor | None
    val: torch.Tensor
    names: tuple[str, ...]
    about: str = ""


def parse_labelled_lines(text: str, source: str) -> Labelled:
    """The LABEL<TAB>RECORD lines of `text` (blank lines skipped); a bad line is a one-line UserError naming it."""
    records, labels = [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        line = line.rstrip("\r")
        if "\t" not in line:
            raise UserError(f"{source} line {number} has no TAB; with data.records={LABELLED_LINES} every line "
                            "is LABEL<TAB>RECORD")
        label, record = line.split("\t", 1)
        if not label.strip():
            raise UserError(f"{source} line {number} has an empty label before its TAB; give every line a label")
        if not record.strip():
            raise UserError(f"{source} line {number} has no record after its TAB; write LABEL<TAB>RECORD")
        records.append(record)
        labels.append(label.strip())
    return Labelled(records, labels)


def label_ids(labels: list[str], source: str = "the data") -> tuple[torch.Tensor, tuple[str, ...]]:
    """(ids (n,) long, names): the distinct labels sorted, label i = names[i]. One class only is refused
    (nothing to condition on)."""
    names = tuple(sorted(set(labels)))
    if len(names) < 2:
        raise UserError(f"all {len(labels)} records of {source} have the label {names[0]!r}; conditioning needs "
                        "at least two labels (or use data.records=lines for unlabelled records)")
    index = {name: i for i, name in enumerate(names)}
    return torch.tensor([index[x] for x in labels], dtype=torch.long), names


def kept_rows(lengths: torch.Tensor, block_len: int, bos: bool, rule: str) -> torch.Tensor:
    """(n,) bool: the records pack_flat lays in a row (rule skip drops the ones too long for a block), so that
    a label follows its record to its row."""
    room = block_len - int(bos) - 1
    return lengths <= room if rule == "skip" else torch.ones(len(lengths), dtype=torch.bool)


def describe_labels(labels: RecordLabels) -> str:
    """One line: each label's name and its training rows, and what the labels mean."""
    counts = torch.bincount(labels.train, minlength=len(labels.names)).tolist() if labels.train is not None else []
    parts = [f"{name} {c}" for name, c in zip(labels.names, counts)] or list(labels.names)
    line = f"training labels ({len(labels.names)} classes, model.class_names): " + ", ".join(parts)
    return line + (f"; {labels.about}" if labels.about else "")
