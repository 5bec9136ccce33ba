"""From a DataConfig to (tokenizer, train blocks, validation blocks)."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import UserError


def prepare_text(cfg: DataConfig, block_len: int, tokenizer=None, train: bool = True):
    """Load the corpus, split it, build (or reuse) the tokenizer and pack both parts into blocks.
    train=False (evaluation, with the model's tokenizer): the training part is not encoded, and None is returned
    in its place."""
    from .corpora import load_text, split_text
    from .packing import encode_corpus, pack_blocks
    from .tokenizers import build_tokenizer

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
