"""What a training run reads: the batch source and validation blocks of the configured data (a text stream,
records, or a generated source such as Sudoku grids), and the validation blocks `ddlm eval` scores."""

from __future__ import annotations

import torch

from ..config import RunConfig, apply_overrides


def prepare_data(cfg: RunConfig, tokenizer=None):
    """(tokenizer, batch source, validation blocks) for the configured data source."""
    from ..data.batches import BlockBatches
    from ..data.prepare import prepare_text
    from ..data.sources import SOURCES

    from ..data.record_data import record_source, uses_records

    if cfg.data.source in SOURCES:
        return SOURCES[cfg.data.source](cfg, tokenizer)
    if uses_records(cfg.data):  # one record per row, <eos> and <pad>, the masks data.padding says
        return record_source(cfg, tokenizer)
    tokenizer, train_blocks, val_blocks = prepare_text(cfg.data, cfg.model.max_len, tokenizer)
    return tokenizer, BlockBatches(train_blocks, cfg.train.batch_size, cfg.train.seed), val_blocks


def validation_blocks(cfg: RunConfig, tokenizer, data: str | None = None) -> torch.Tensor:
    """The validation blocks of `data` (default: the configured source) in `tokenizer`'s tokens, for evaluation:
    the training part of a text corpus is split off but never encoded."""
    from ..data.prepare import prepare_text
    from ..data.sources import SOURCES

    from ..data.record_data import record_validation, uses_records

    if uses_records(cfg.data) and (data is None or data not in SOURCES):
        return record_validation(cfg, tokenizer, data)[0]  # a file given to a records model: its lines
    if data is not None:
        cfg = apply_overrides(cfg, [f"data.source={data}"])
    if cfg.data.source in SOURCES:
        return SOURCES[cfg.data.source](cfg, tokenizer)[2]
    return prepare_text(cfg.data, cfg.model.max_len, tokenizer, train=False)[2]
