"""Tokenizers: exact round trips, the unknown-character error, BPE determinism and save/load."""

import json
import random
import subprocess
import sys

import pytest
import torch

from ddlm.data.tokenizers import (
    PLACEHOLDER,
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    build_tokenizer,
    load_tokenizer,
    safe_pieces,
)
from ddlm.errors import UserError

UNICODE = "Größe: naïve café — 東京 🙂\nline two\ttab\r\nend ∑x²"


def _english(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = "the and of to in that he shall unto lord god said his for thou thy be it is not them".split()
    return "\n".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + rng.choice(".,;:!?")
        for _ in range(n_lines)
    )


@pytest.fixture(scope="module")
def bpe_text():
    return _english() + "\n" + UNICODE


@pytest.fixture(scope="module")
def bpe(bpe_text):
    return build_tokenizer("bpe", bpe_text, vocab_size=300)


def test_char_vocabulary_is_sorted_set_and_round_trips_unicode():
    tok = build_tokenizer("char", UNICODE)
    assert tok.kind == "char"
    assert tok.chars == sorted(set(UNICODE))
    assert tok.vocab_size == len(set(UNICODE))
    ids = tok.encode(UNICODE)
    assert len(ids) == len(UNICODE)
    assert ids == [sorted(set(UNICODE)).index(c) for c in UNICODE]  # id = rank of the code point
    assert tok.decode(ids) == UNICODE
    assert tok.decode(torch.tensor(ids)) == UNICODE
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_char_encode_tensor_matches_encode():
    tok = CharTokenizer.from_text(UNICODE)
    t = tok.encode_tensor(UNICODE)
    assert t.dtype == torch.long and t.tolist() == tok.encode(UNICODE)


def test_char_unknown_characters_raise_user_error_naming_them():
    tok = build_tokenizer("char", "abc ")
    with pytest.raises(UserError) as e:
        tok.encode("abz Q")
    msg = str(e.value)
    assert "'z'" in msg and "'Q'" in msg and "character-level" in msg
    many = "".join(chr(0x4E00 + i) for i in range(15))
    with pytest.raises(UserError, match="and 5 more"):
        tok.encode(many)


def test_byte_round_trip_unicode_and_ids_are_utf8():
    tok = build_tokenizer("byte", "ignored", vocab_size=1024)  # vocab_size only matters for BPE
    assert tok.kind == "byte" and tok.vocab_size == 256
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE
    assert tok.decode(torch.tensor(ids)) == UNICODE
    assert tok.encode_tensor(UNICODE).tolist() == ids
    # a cut multi-byte character decodes to U+FFFD rather than raising
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_out_of_vocabulary_ids_decode_to_placeholder(kind, bpe):
    tok = bpe if kind == "bpe" else build_tokenizer(kind, "ab")
    a, b = tok.encode("a"), tok.encode("b")
    mask = tok.vocab_size  # the [MASK] id a diffusion process appends
    assert tok.decode(a + [mask] + b + [mask + 7, -1]) == "a" + PLACEHOLDER + "b" + PLACEHOLDER * 2
    assert tok.decode(torch.tensor([mask, mask])) == PLACEHOLDER * 2


def test_decode_rejects_2d_tensor():
    with pytest.raises(UserError, match="1-D"):
        ByteTokenizer().decode(torch.zeros(2, 3, dtype=torch.long))


def test_bpe_vocab_size_round_trip_and_ids_in_range(bpe, bpe_text):
    assert bpe.kind == "bpe"
    assert 256 < bpe.vocab_size <= 300
    ids = bpe.encode(bpe_text)
    assert len(ids) < len(bpe_text.encode("utf-8"))  # merges were learned and used
    assert 0 <= min(ids) and max(ids) < bpe.vocab_size
    assert bpe.decode(ids) == bpe_text
    # the byte alphabet is complete: text never seen in training still round-trips
    unseen = "Zebra ⊕ ƒ 𝔘 \x01"
    assert bpe.decode(bpe.encode(unseen)) == unseen


def test_bpe_vocab_size_exact_on_enough_text():
    tok = build_tokenizer("bpe", _english(2000, seed=1), vocab_size=280)
    assert tok.vocab_size == 280


def test_bpe_rejects_too_small_vocab():
    with pytest.raises(UserError, match="256"):
        build_tokenizer("bpe", "hello", vocab_size=100)


def test_bpe_training_is_deterministic_across_processes(bpe_text, tmp_path):
    # the Rust trainer uses hash maps; a fresh process (new hash seeds) must learn the same merges
    (tmp_path / "text.txt").write_text(bpe_text, encoding="utf-8")
    code = (
        "import json, sys; from ddlm.data.tokenizers import build_tokenizer; "
        "t = open(sys.argv[1], encoding='utf-8').read(); "
        "print(json.dumps(build_tokenizer('bpe', t, vocab_size=300).to_dict()))"
    )
    cmd = [sys.executable, "-c", code, str(tmp_path / "text.txt")]
    outs = [subprocess.run(cmd, capture_output=True, text=True, check=True).stdout for _ in range(2)]
    here = build_tokenizer("bpe", bpe_text, vocab_size=300).to_dict()
    assert json.loads(outs[0]) == json.loads(outs[1]) == here


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_save_load_round_trip(kind, bpe, bpe_text, tmp_path):
    tok = bpe if kind == "bpe" else build_tokenizer(kind, bpe_text)
    tok.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved["kind"] == kind
    back = load_tokenizer(tmp_path / "model")
    assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
    assert back.encode(bpe_text) == tok.encode(bpe_text)
    assert back.decode(tok.encode(bpe_text)) == bpe_text
    assert load_tokenizer(tmp_path / "model" / "tokenizer.json").vocab_size == tok.vocab_size


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a valid"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "wordpiece"}', encoding="utf-8")
    with pytest.raises(UserError, match="char, byte, bpe"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"kind": "bpe", "tokenizer": {"model": 3}}', encoding="utf-8")
    with pytest.raises(UserError, match="corrupt"):
        load_tokenizer(tmp_path)


def test_unknown_kind_lists_valid_names():
    with pytest.raises(UserError) as e:
        build_tokenizer("sentencepiece", "abc")
    assert all(name in str(e.value) for name in TOKENIZERS)


def test_registry():
    assert TOKENIZERS == {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer}


def test_safe_pieces_never_change_bpe_ids(bpe):
    # random texts full of the whitespace patterns (runs of newlines, "\r", tabs, contractions)
    # where a careless cut would change GPT-2 pre-tokenisation
    rng = random.Random(0)
    alphabet = "ab c\n\n\t\r.'sé9 "
    n_pieces = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        pieces = safe_pieces(text, rng.randint(1, 20))
        n_pieces += len(pieces)
        assert "".join(pieces) == text
        assert [i for p in pieces for i in bpe.encode(p)] == bpe.encode(text)
    assert n_pieces > 600  # the texts really were cut


# --- special tokens ---------------------------------------------------------------------------------


def test_specials_come_after_the_real_tokens_and_leave_text_ids_alone(bpe_text):
    for kind in ("char", "byte", "bpe"):
        plain = build_tokenizer(kind, bpe_text, vocab_size=300)
        tok = build_tokenizer(kind, bpe_text, vocab_size=300, specials=True)
        n = plain.vocab_size
        assert plain.specials == () and plain.bos_id is None and plain.eos_id is None and plain.pad_id is None
        assert tok.specials == ("<bos>", "<eos>", "<pad>") and tok.n_real == n
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == (n, n + 1, n + 2) and tok.vocab_size == n + 3
        assert tok.special_ids == (n, n + 1, n + 2)
        assert tok.encode(bpe_text) == plain.encode(bpe_text)  # same ids for text
        # text that spells a special token is text, not the token
        assert max(tok.encode("<eos>" if kind != "char" else "e")) < n
    assert build_tokenizer("byte", "", specials=True).eos_id == 257


def test_decode_drops_specials_and_keeps_the_mask_placeholder(bpe_text):
    for kind in ("char", "byte", "bpe"):
        tok = build_tokenizer(kind, bpe_text, vocab_size=300, specials=True)
        ids = tok.encode("the lord")
        row = [tok.bos_id] + ids[:3] + [tok.eos_id] + ids[3:] + [tok.pad_id, tok.pad_id]
        assert tok.decode(row) == "the lord"
        assert tok.decode(torch.tensor(row)) == "the lord"
        # [MASK] (== vocab_size, appended by a diffusion process) and negatives still print as "_"
        assert tok.decode(ids[:2] + [tok.vocab_size] + [-1]) == tok.decode(ids[:2]) + PLACEHOLDER * 2


def test_specials_round_trip_through_tokenizer_json(tmp_path, bpe_text):
    for kind in ("char", "byte", "bpe"):
        tok = build_tokenizer(kind, bpe_text, vocab_size=300, specials=True)
        tok.save(tmp_path / kind)
        data = json.loads((tmp_path / kind / "tokenizer.json").read_text(encoding="utf-8"))
        assert data["format"] == 2 and data["specials"] == ["<bos>", "<eos>", "<pad>"] and data["kind"] == kind
        back = load_tokenizer(tmp_path / kind)
        assert (back.vocab_size, back.n_real, back.eos_id, back.specials) == (
            tok.vocab_size, tok.n_real, tok.eos_id, tok.specials)
        assert back.encode(bpe_text) == tok.encode(bpe_text)
        plain = build_tokenizer(kind, bpe_text, vocab_size=300)
        plain.save(tmp_path / (kind + "0"))
        assert json.loads((tmp_path / (kind + "0") / "tokenizer.json").read_text())["specials"] == []
        assert load_tokenizer(tmp_path / (kind + "0")).specials == ()


def test_format_1_tokenizer_json_loads_without_specials_as_before(tmp_path, bpe):
    # the files ddlm wrote before special tokens existed: no "format", no "specials"
    (tmp_path / "tokenizer.json").write_text('{"kind": "char", "chars": "123456789"}', encoding="utf-8")
    tok = load_tokenizer(tmp_path)
    assert tok.vocab_size == 9 and tok.specials == () and tok.eos_id is None
    assert tok.encode("9513") == [8, 4, 0, 2] and tok.decode([8, 4, 9, 0]) == "95_1"
    (tmp_path / "tokenizer.json").write_text('{"kind": "byte"}', encoding="utf-8")
    assert load_tokenizer(tmp_path).vocab_size == 256 and load_tokenizer(tmp_path).decode([104, 256, 105]) == "h_i"
    old = {"kind": "bpe", "tokenizer": json.loads(bpe._tok.to_str())}
    (tmp_path / "tokenizer.json").write_text(json.dumps(old), encoding="utf-8")
    back = load_tokenizer(tmp_path)
    assert back.vocab_size == bpe.vocab_size and back.specials == ()
    assert back.encode(UNICODE) == bpe.encode(UNICODE)


def test_committed_sudoku_tokenizer_loads_unchanged():
    from pathlib import Path

    tok = load_tokenizer(Path(__file__).resolve().parents[2] / "models" / "sudoku")
    assert tok.vocab_size == 9 and tok.chars == list("123456789") and tok.specials == ()


def test_newer_format_and_unknown_specials_are_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"format": 3, "kind": "byte"}', encoding="utf-8")
    with pytest.raises(UserError, match="format 3.*upgrade ddlm"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"format": 2, "kind": "byte", "specials": ["<s>"]}', encoding="utf-8")
    with pytest.raises(UserError, match="unknown special tokens"):
        load_tokenizer(tmp_path)


def test_smiles_tokenizer_has_the_same_specials(tmp_path):
    from ddlm.tasks.molecules.tokenizer import SmilesTokenizer

    tok = SmilesTokenizer.from_smiles(["CCl", "c1ccccc1"], specials=True)
    n = tok.n_real
    assert tok.tokens == ["1", "C", "Cl", "c"] and (tok.bos_id, tok.eos_id, tok.pad_id) == (4, 5, 6)
    assert tok.decode([n, 1, 2, n + 1, n + 2, tok.vocab_size]) == "CCl_"
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)  # "smiles" loads through load_tokenizer as well
    assert isinstance(back, SmilesTokenizer) and back.vocab_size == 7 and back.encode("CCl") == [1, 2]
    assert SmilesTokenizer.from_smiles(["CCl"]).vocab_size == 2
