"""Records: exact packed rows and masks, the long-record rules and their report, the record split, the record
sources (file lines, KJV verses, Shakespeare) and their one-line refusals."""

import random

import pytest
import torch

from ddlm.config import DataConfig
from ddlm.data.prepare import prepare_records
from ddlm.data.records import (
    RECORD_SOURCES,
    describe_report,
    encode_records,
    load_records,
    pack_flat,
    pack_records,
    register_records,
    split_records,
)
from ddlm.data.tokenizers import build_tokenizer
from ddlm.errors import UserError

B, E, P = 7, 8, 9  # bos, eos, pad ids in the hand-made examples


def test_pack_three_records_with_bos_exactly():
    tokens, mask, report = pack_records([[1, 2, 3], [4], []], 6, B, E, P)
    assert tokens.tolist() == [
        [B, 1, 2, 3, E, P],
        [B, 4, E, P, P, P],
        [B, E, P, P, P, P],
    ]
    assert mask.tolist() == [
        [False, True, True, True, True, False],
        [False, True, True, False, False, False],
        [False, True, False, False, False, False],
    ]
    assert tokens.dtype == torch.long and mask.dtype == torch.bool
    assert report == {"n_records": 3, "n_rows": 3, "n_cut": 0, "n_skipped": 0, "longest": 3, "room": 4,
                      "rule": "skip"}


def test_pack_without_bos_and_a_record_that_exactly_fits():
    tokens, mask, report = pack_records([torch.tensor([1, 2, 3, 4, 5]), [6, 6]], 6, None, E, P)
    assert tokens.tolist() == [[1, 2, 3, 4, 5, E], [6, 6, E, P, P, P]]
    assert mask.tolist() == [[True] * 6, [True, True, True, False, False, False]]
    assert report["room"] == 5 and report["n_skipped"] == 0


def test_long_records_skip_cut_and_error():
    records = [[1, 2], [1, 2, 3, 4, 5], [3], [1, 2, 3, 4, 5, 6, 1]]  # room with <bos> in 6: 4 tokens
    tokens, mask, report = pack_records(records, 6, B, E, P, rule="skip")
    assert tokens.tolist() == [[B, 1, 2, E, P, P], [B, 3, E, P, P, P]]
    assert report == {"n_records": 4, "n_rows": 2, "n_cut": 0, "n_skipped": 2, "longest": 7, "room": 4,
                      "rule": "skip"}
    tokens, mask, report = pack_records(records, 6, B, E, P, rule="cut")
    # a cut record keeps its first 5 tokens and gets NO <eos>: it does not end there
    assert tokens.tolist() == [[B, 1, 2, E, P, P], [B, 1, 2, 3, 4, 5], [B, 3, E, P, P, P], [B, 1, 2, 3, 4, 5]]
    assert mask[1].tolist() == [False] + [True] * 5 and mask[3].tolist() == [False] + [True] * 5
    assert (report["n_cut"], report["n_skipped"], report["n_rows"]) == (2, 0, 4)
    with pytest.raises(UserError, match=r"record 2 has 5 tokens but a block of 6 holds at most 4 .*2 record\(s\)"
                                        r" are too long.*max_len to 9"):
        pack_records(records, 6, B, E, P, rule="error")


def test_every_record_too_long_is_refused_in_one_line():
    with pytest.raises(UserError, match="all 2 record.*max_len to at least 8") as e:
        pack_records([[1] * 5, [1] * 6], 6, B, E, P)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad, match", [
    (dict(block_len=0), "positive integer"),
    (dict(block_len=2), "no room"),
    (dict(rule="truncate"), "skip, cut, error"),
    (dict(eos=None), "special tokens"),
    (dict(pad=-1), "token id"),
])
def test_bad_arguments_are_user_errors(bad, match):
    args = dict(block_len=6, bos=B, eos=E, pad=P, rule="skip") | bad
    with pytest.raises(UserError, match=match):
        pack_records([[1, 2]], **args)
    with pytest.raises(UserError, match="no records"):
        pack_records([], 6, B, E, P)


def _slow_pack(lists, L, bos, eos, pad, rule):
    """The rows written out one by one: the reference for pack_flat's vectorised indexing."""
    head = [] if bos is None else [bos]
    rows, masks = [], []
    for ids in lists:
        if len(ids) + len(head) + 1 > L:
            if rule == "skip":
                continue
            body, end = ids[: L - len(head)], []
        else:
            body, end = ids, [eos]
        row = head + body + end
        rows.append(row + [pad] * (L - len(row)))
        masks.append([False] * len(head) + [True] * (len(body) + len(end)) + [False] * (L - len(row)))
    return rows, masks


def test_vectorised_packing_matches_row_by_row_reference():
    rng = random.Random(0)
    for trial in range(40):
        lists = [[rng.randrange(5) for _ in range(rng.randrange(0, 12))] for _ in range(rng.randrange(1, 30))]
        L, bos, rule = rng.randrange(3, 12), rng.choice([None, B]), rng.choice(["skip", "cut"])
        want_rows, want_masks = _slow_pack(lists, L, bos, E, P, rule)
        if not want_rows:
            continue
        tokens, mask, report = pack_records(lists, L, bos, E, P, rule)
        assert tokens.tolist() == want_rows and mask.tolist() == want_masks, (trial, lists, L, bos, rule)
        assert report["n_rows"] == len(want_rows)


def test_encode_records_matches_encode_for_every_tokenizer():
    records = ["In the beginning", "", "naïve — 東京", "and God said"]
    for kind in ("char", "byte", "bpe"):
        tok = build_tokenizer(kind, "\n".join(records * 20), vocab_size=260, specials=True)
        flat, lengths = encode_records(tok, records)
        ids = [tok.encode(r) for r in records]
        assert lengths.tolist() == [len(x) for x in ids] and flat.tolist() == sum(ids, [])
        t1, m1, _ = pack_flat(flat, lengths, 40, tok.bos_id, tok.eos_id, tok.pad_id)
        t2, m2, _ = pack_records(ids, 40, tok.bos_id, tok.eos_id, tok.pad_id)
        assert torch.equal(t1, t2) and torch.equal(m1, m2)
        assert [tok.decode(row) for row in t1] == records  # specials decode to nothing


def test_split_records_is_interleaved_and_exact():
    train, val = split_records(list(range(20)), 0.25)
    assert val == [3, 7, 11, 15, 19] and train == [i for i in range(20) if i % 4 != 3]
    train, val = split_records(list(range(10)), 0.3)
    assert val == [3, 6, 9] and len(train) == 7
    with pytest.raises(UserError, match="3 record.*at least 4 records"):
        split_records([1, 2, 3], 0.25)


def test_describe_report_is_one_line():
    _, _, report = pack_records([[1] * 5, [1]], 6, B, E, P)
    assert describe_report(report, "training records") == (
        "training records: 2 in 1 rows of up to 4 tokens, longest 5 tokens; 1 longer records skipped")


def test_file_lines_skip_blank_lines(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("first line\n\n   \nsecond  line \r\nthird\n", encoding="utf-8")
    assert load_records(str(f), "lines") == ["first line", "second  line ", "third"]


def test_bad_record_sources_are_one_line_user_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blank.txt").write_text("\n  \n\t\n", encoding="utf-8")
    (tmp_path / "ok.txt").write_text("a\nb\n", encoding="utf-8")
    cases = [
        ((str(tmp_path / "empty.txt"), "lines"), "empty"),
        ((str(tmp_path / "blank.txt"), "lines"), "empty \\(or only whitespace\\)"),
        ((str(tmp_path / "ok.txt"), "verses"), "a file's records are its lines"),
        (("sudoku", "lines"), "the sudoku source has no records"),
        (("kjv", "speeches"), "kjv source has no records of kind 'speeches'; it has: verses, lines"),
        (("kjv", "none"), "data.records is none"),
    ]
    for args, match in cases:
        with pytest.raises(UserError, match=match) as e:
            load_records(*args)
        assert "\n" not in str(e.value)


def test_task_hook_and_prepare_records(monkeypatch):
    monkeypatch.setitem(RECORD_SOURCES, "toy-molecules", {})
    register_records("toy-molecules", "lines", lambda: ["CCO", "c1ccccc1", "CC(=O)O", "N#N"] * 5)
    cfg = DataConfig(source="toy-molecules", records="lines", tokenizer="char", val_fraction=0.25)
    tok, train, val = prepare_records(cfg, 10, bos=True)
    assert tok.specials == ("<bos>", "<eos>", "<pad>") and tok.n_real == len(set("CCOc1ccccc1CC(=O)ON#N"))
    tokens, mask, report = val  # records 3, 7, 11, 15, 19: all "N#N"
    assert tokens.tolist() == [[tok.bos_id] + tok.encode("N#N") + [tok.eos_id] + [tok.pad_id] * 5] * 5
    assert report["n_records"] == 5 and train[2]["n_records"] == 15
    assert train[2]["n_skipped"] == 0 and [tok.decode(r) for r in train[0][:3]] == ["CCO", "c1ccccc1", "CC(=O)O"]
    _, no_train, _ = prepare_records(cfg, 10, tokenizer=tok, train=False)
    assert no_train is None
    with pytest.raises(UserError, match="no <eos>/<pad>"):
        prepare_records(cfg, 10, tokenizer=build_tokenizer("char", "CON#c1()="))
    with pytest.raises(UserError, match="record 2 has 8 tokens"):
        prepare_records(DataConfig(source="toy-molecules", records="lines", long_records="error"), 8)


def test_kjv_verses_are_the_31103_records():
    records = load_records("kjv", "verses")
    assert len(records) == 31_103 and load_records("kjv", "lines") == records
    assert records[0] == "In the beginning God created the heaven and the earth."
    assert all(r.strip() and "\n" not in r for r in records)


def test_shakespeare_lines_and_speeches():
    from ddlm.data.corpora import shakespeare

    lines = load_records("shakespeare", "lines")
    assert len(lines) == sum(1 for line in shakespeare().split("\n") if line.strip())
    speeches = load_records("shakespeare", "speeches")
    hamlet = next(s for s in speeches if "To be, or not to be" in s)
    assert hamlet.startswith("Ham.\nTo be, or not to be,--that is the question:--\n")
    assert all(s.strip() and "\n\n" not in s for s in speeches)


def test_stream_preparation_refuses_records_instead_of_streaming_them():
    from ddlm.data.prepare import prepare_text

    with pytest.raises(UserError, match="data.records=lines: .*set data.records=none"):
        prepare_text(DataConfig(source="kjv", records="lines"), 64)
