"""Tokenizers: characters, UTF-8 bytes, or a byte-level BPE trained on the corpus.

All three share one small interface:

    kind: str                  "char" | "byte" | "bpe"
    n_real: int                real tokens: ids 0..n_real-1 are text
    specials: tuple[str, ...]  () or SPECIALS = ("<bos>", "<eos>", "<pad>")
    bos_id, eos_id, pad_id     n_real, n_real+1, n_real+2 when the tokenizer has specials, else None
    vocab_size: int            n_real + len(specials): every id a model embeds and predicts. A diffusion
                               process appends its own [MASK] id == vocab_size (not a tokenizer token).
    encode(text) -> list[int]  real tokens only: text never encodes to a special id, even "<eos>"
    encode_batch(texts) -> list[list[int]]
    encode_tensor(text)        (char and byte only) encode as a LongTensor, fast on a whole corpus
    decode(ids) -> str         ids: list[int] or a 1-D tensor. Special ids decode to nothing; ids
                               outside 0..vocab_size-1 (such as [MASK]) decode to PLACEHOLDER ("_")
                               instead of crashing, so that a half-denoised sample can still be printed.
    save(directory)            writes <directory>/tokenizer.json: {"format": 2, "kind": ..., "specials": [...], ...}

Why specials come AFTER the real tokens (and only when asked for, `specials=True`): the ids of text stay
what they were (byte id == byte value, Sudoku digit d == id d-1, a char id == rank of its code point), so
a tokenizer.json of format 1 (no "format" key, written before specials existed) loads as a tokenizer
without specials whose ids, vocab_size and decode are exactly the old ones, and the saved models keep
their embedding sizes. Stream-trained models need no specials (a stream has no record ends), so they are
built without them and stay as before; record data builds its tokenizer with them.

`build_tokenizer(kind, text, vocab_size, specials)` makes one from training text, `load_tokenizer(dir)`
reads a saved one back.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ddlm.errors import UserError

PLACEHOLDER = "_"
"what an id outside the vocabulary (e.g. [MASK]) decodes to"

FILENAME = "tokenizer.json"
FORMAT = 2
"tokenizer.json format: 1 = no specials (no 'format' key), 2 = a 'specials' list"
SPECIALS = ("<bos>", "<eos>", "<pad>")
"the special tokens, in id order after the real tokens"
DEFAULT_BPE_VOCAB = 1024
PIECE_CHARS = 1 << 16  # ~64 KB pieces for batched encoding and BPE training


def _as_id_list(ids) -> list[int]:
    """A list of ints from a list, a tuple, a numpy array or a 1-D tensor."""
    if hasattr(ids, "dim") or hasattr(ids, "ndim"):
        ndim = ids.dim() if hasattr(ids, "dim") else ids.ndim
        if ndim != 1:
            raise UserError(
                f"decode takes a 1-D sequence of ids, got {ndim} dimensions; decode each row separately"
            )
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


def safe_pieces(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Cut `text` into pieces of about `piece_chars` characters whose concatenation is `text`.

    Cuts fall only just after a lone newline between two non-whitespace characters ("x\ny").
    Byte-level BPE pre-tokenisation (the GPT-2 pattern) always makes that "\n" a token of its own,
    at the end of a piece as inside the whole text, so encoding the pieces one by one gives exactly
    the ids of encoding the whole text; for characters and bytes any cut is safe anyway.
    Text without such a newline stays one piece.
    """
    pieces, start, n = [], 0, len(text)
    while n - start > piece_chars:
        cut, search = n, start + max(piece_chars, 2)
        while True:
            nl = text.find("\n", search)
            if nl == -1 or nl + 1 >= n:
                break
            if not text[nl - 1].isspace() and not text[nl + 1].isspace():
                cut = nl + 1
                break
            search = nl + 1
        pieces.append(text[start:cut])
        start = cut
    if start < n or not pieces:
        pieces.append(text[start:])
    return pieces


class SpecialTokens:
    """BOS/EOS/PAD after the real tokens. A subclass sets n_real and calls _set_specials(flag)."""

    n_real: int
    specials: tuple = ()

    def _set_specials(self, specials: bool) -> None:
        if not isinstance(specials, bool):
            raise UserError(f"specials must be true or false, got {specials!r}")
        self.specials = SPECIALS if specials else ()
        self.vocab_size = self.n_real + len(self.specials)

    def _special_id(self, index: int):
        return self.n_real + index if self.specials else None

    @property
    def bos_id(self):
        """Id of <bos> (begin of a record), None without specials."""
        return self._special_id(0)

    @property
    def eos_id(self):
        """Id of <eos> (end of a record), None without specials."""
        return self._special_id(1)

    @property
    def pad_id(self):
        """Id of <pad> (filler after a record's <eos>), None without specials."""
        return self._special_id(2)

    @property
    def special_ids(self) -> tuple:
        return tuple(range(self.n_real, self.vocab_size))

    def _header(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "specials": list(self.specials)}


def _specials_of(data: dict) -> bool:
    """Whether a tokenizer.json dict has specials; format 1 files (no key) have none."""
    specials = data.get("specials", [])
    if specials not in ([], list(SPECIALS)):
        raise UserError(f"unknown special tokens {specials!r} in tokenizer.json; expected {list(SPECIALS)} or []")
    return bool(specials)


class CharTokenizer(SpecialTokens):
    """One token per Unicode character; the vocabulary is the sorted set of training characters.

    Id i is the i-th character in code-point order. Characters never seen in training cannot be
    encoded (a UserError names them); ids outside the vocabulary decode to "_".
    """

    kind = "char"

    def __init__(self, chars: Iterable[str], specials: bool = False):
        chars = sorted(set(chars))
        if not chars:
            raise UserError("cannot build a character tokenizer from empty text")
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise UserError(f"character vocabulary entries must be single characters, got {bad[:5]!r}")
        self.chars = chars
        self.n_real = len(chars)
        self._set_specials(specials)
        # sorted code points: encoding is a vectorised binary search, fast on a 4 MB corpus
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # (V,)

    @classmethod
    def from_text(cls, text: str, specials: bool = False) -> "CharTokenizer":
        return cls(set(text), specials)

    def _encode_array(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")  # (n,)
        idx = np.searchsorted(self._codepoints, cps)  # (n,)
        idx_clipped = np.minimum(idx, self.n_real - 1)
        unknown = self._codepoints[idx_clipped] != cps
        if unknown.any():
            missing = sorted({chr(c) for c in np.unique(cps[unknown]).tolist()})
            shown = ", ".join(repr(c) for c in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UserError(
                f"text has {len(missing)} character(s) not in the vocabulary: {shown}{more}; "
                f"this model's tokenizer is character-level and knows only the "
                f"{self.n_real} characters of its training text"
            )
        return idx.astype(np.int64)

    def encode(self, text: str) -> list[int]:
        return self._encode_array(text).tolist()

    def encode_tensor(self, text: str):
        """encode(text) as a 1-D LongTensor without a Python list in between (fast on a corpus)."""
        import torch

        return torch.from_numpy(self._encode_array(text))  # (n,)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        chars, n, v = self.chars, self.n_real, self.vocab_size
        return "".join(chars[i] if 0 <= i < n else "" if n <= i < v else PLACEHOLDER for i in _as_id_list(ids))

    def to_dict(self) -> dict:
        return {**self._header(), "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        return cls(list(data["chars"]), _specials_of(data))

    def save(self, directory) -> None:
        _write(directory, self.to_dict())


class ByteTokenizer(SpecialTokens):
    """One token per UTF-8 byte: 256 ids, any text encodes; invalid byte runs decode to U+FFFD."""

    kind = "byte"
    n_real = 256

    def __init__(self, specials: bool = False):
        self._set_specials(specials)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str):
        """encode(text) as a 1-D LongTensor without a Python list in between (fast on a corpus)."""
        import torch

        return torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))  # (n,)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        # a placeholder id splits the byte stream so that the bytes around it decode on their own
        out, run = [], bytearray()
        for i in _as_id_list(ids):
            if 0 <= i < 256:
                run.append(i)
            elif 256 <= i < self.vocab_size:
                continue  # a special token decodes to nothing
            else:
                out.append(run.decode("utf-8", errors="replace"))
                out.append(PLACEHOLDER)
                run = bytearray()
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def to_dict(self) -> dict:
        return self._header()

    @classmethod
    def from_dict(cls, data: dict) -> "ByteTokenizer":
        return cls(_specials_of(data))

    def save(self, directory) -> None:
        _write(directory, self.to_dict())


class BPETokenizer(SpecialTokens):
    """Byte-level BPE (Sennrich et al. 2016; GPT-2 byte alphabet) trained with Hugging Face `tokenizers`.

    The 256 byte symbols are always in the vocabulary, so any text encodes. `n_real` is the trained
    size, at most the requested one (a small corpus may stop early); the specials, when asked for, are
    kept by this wrapper, not by the `tokenizers` object, so that text such as "<eos>" never encodes
    to them.
    """

    kind = "bpe"

    def __init__(self, tokenizer, specials: bool = False):
        self._tok = tokenizer  # a tokenizers.Tokenizer
        self.n_real = tokenizer.get_vocab_size()
        self._set_specials(specials)

    @classmethod
    def train(cls, text: str, vocab_size: int | None = None, specials: bool = False) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        if not isinstance(vocab_size, int) or vocab_size < 256:
            raise UserError(
                f"a byte-level BPE vocabulary needs at least the 256 byte tokens, got vocab_size={vocab_size!r}; "
                "use vocab_size >= 256 (e.g. 1024)"
            )
        if not text:
            raise UserError("cannot train a BPE tokenizer on empty text")
        tok = Tokenizer(models.BPE())
        # no prefix space: a piece must encode the same on its own as inside the whole text
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
        )
        pieces = safe_pieces(text)
        tok.train_from_iterator(iter(pieces), trainer=trainer, length=len(pieces))
        return cls(tok, specials)

    def encode(self, text: str) -> list[int]:
        if len(text) <= PIECE_CHARS:
            return self._tok.encode(text, add_special_tokens=False).ids
        # same ids as one call (see safe_pieces), but the pieces are encoded in parallel
        return [i for ids in self.encode_batch(safe_pieces(text)) for i in ids]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        out, run = [], []
        for i in _as_id_list(ids):
            if 0 <= i < self.n_real:
                run.append(i)
            elif self.n_real <= i < self.vocab_size:
                continue  # a special token decodes to nothing
            else:
                out.append(self._tok.decode(run) if run else "")
                out.append(PLACEHOLDER)
                run = []
        out.append(self._tok.decode(run) if run else "")
        return "".join(out)

    def to_dict(self) -> dict:
        return {**self._header(), "tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_dict(cls, data: dict) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(json.dumps(data["tokenizer"])), _specials_of(data))

    def save(self, directory) -> None:
        _write(directory, self.to_dict())


Tokenizer = CharTokenizer | ByteTokenizer | BPETokenizer


def _write(directory, data: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILENAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash never leaves half a tokenizer


def _check_kind(kind) -> None:
    if kind not in TOKENIZERS and kind not in LAZY_TOKENIZERS:
        valid = ", ".join([*TOKENIZERS, *LAZY_TOKENIZERS])
        raise UserError(f"unknown tokenizer {kind!r}; valid tokenizers are: {valid}")


def build_tokenizer(kind: str, text: str, vocab_size: int | None = None, specials: bool = False) -> Tokenizer:
    """A tokenizer of `kind` fitted to `text`. `vocab_size` is used by "bpe" only (char and byte
    vocabularies are fixed by the text and by UTF-8), so a config may always pass it; it counts the
    real tokens, the specials (`specials=True`: <bos> <eos> <pad>, for record data) come on top."""
    _check_kind(kind)
    if kind in LAZY_TOKENIZERS:  # a task's tokenizer (smiles): its vocabulary is the tokens of `text`
        module, name = LAZY_TOKENIZERS[kind].split(":")
        return getattr(importlib.import_module(module), name).from_text(text, specials)
    if kind == "char":
        return CharTokenizer.from_text(text, specials)
    if kind == "byte":
        return ByteTokenizer(specials)
    return BPETokenizer.train(text, vocab_size, specials)


def load_tokenizer(directory) -> Tokenizer:
    """Read the tokenizer saved by `save(directory)` (a path to tokenizer.json itself also works)."""
    path = Path(directory)
    if path.is_dir() or path.name != FILENAME:
        path = path / FILENAME
    if not path.is_file():
        raise UserError(f"no tokenizer found: {path} does not exist; give the directory a model was saved to")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = data["kind"]
        version = data.get("format", 1)  # format 1 files (no key, no specials) load as they always did
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f"{path} is not a valid ddlm tokenizer file ({type(e).__name__}); save the tokenizer again"
        ) from None
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT:
        raise UserError(
            f"{path} has tokenizer format {version!r}, this ddlm reads formats 1..{FORMAT}; upgrade ddlm to load it"
        )
    if kind in LAZY_TOKENIZERS:
        module, name = LAZY_TOKENIZERS[kind].split(":")
        cls = getattr(importlib.import_module(module), name)
    else:
        _check_kind(kind)
        cls = TOKENIZERS[kind]
    try:
        return cls.from_dict(data)
    except UserError:
        raise
    except Exception as e:  # the `tokenizers` library raises its own exception types
        raise UserError(
            f"{path} holds a corrupt {kind} tokenizer ({type(e).__name__}); save the tokenizer again"
        ) from None


TOKENIZERS = {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer}
LAZY_TOKENIZERS = {"smiles": "ddlm.tasks.molecules.tokenizer:SmilesTokenizer"}
"task tokenizers that load_tokenizer reads back, imported only then (module:class)"
