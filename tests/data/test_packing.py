"""Block packing and corpus encoding."""


import numpy as np
import pytest
import torch

from ddlm.data.corpora import load_text
from ddlm.data.packing import encode_corpus, pack_blocks
from ddlm.data.tokenizers import build_tokenizer
from ddlm.errors import UserError


def test_pack_blocks_shapes_and_content():
    blocks = pack_blocks(list(range(23)), 5)
    assert blocks.dtype == torch.long and blocks.shape == (4, 5)
    assert blocks.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    assert pack_blocks(torch.arange(10), 5).tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # exact fit
    assert pack_blocks(np.arange(7), 7).tolist() == [list(range(7))]
    assert pack_blocks(torch.arange(3, dtype=torch.int32), 1).tolist() == [[0], [1], [2]]


def test_pack_blocks_concatenates_documents():
    docs = [[1, 2, 3], torch.tensor([4, 5]), [6, 7, 8, 9]]
    assert pack_blocks(docs, 4).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_pack_blocks_errors():
    with pytest.raises(UserError, match="3 tokens.*block of 4"):
        pack_blocks([1, 2, 3], 4)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(UserError, match="block length"):
            pack_blocks([1, 2, 3], bad)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_encode_corpus_equals_encode(kind):
    # long enough (> one 64 KB piece) that BPE takes the batched path
    lines = [f"Verse {i}: and it came to pass, that the {i % 7}th day was good.\n\n" for i in range(2500)]
    text = "".join(lines) + "Ünïcödé ✓"
    tok = build_tokenizer(kind, text, vocab_size=300)
    ids = encode_corpus(tok, text)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == tok.encode(text)
    assert tok.decode(ids) == text
    assert encode_corpus(tok, "").tolist() == []


def test_char_encode_of_kjv_round_trips():
    # speed lives in benchmarks/, never in a timed test (a loaded 2-core machine fails any wall-clock bound)
    text = load_text("kjv")
    tok = build_tokenizer("char", text)
    ids = encode_corpus(tok, text)
    assert ids.numel() == len(text)
    blocks = pack_blocks(ids, 128)
    assert blocks.shape == (len(text) // 128, 128)
    assert tok.decode(blocks[0]) == text[:128]
