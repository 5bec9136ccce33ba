"""A SMILES tokenizer: one token per atom, bond, branch or ring-closure label.

The pattern follows the SMILES grammar (Weininger 1988; OpenSMILES):

    bracket atom   "[" ... "]" as ONE token, whatever is inside: [nH], [C@@H], [NH3+], [13CH3], [Na+]
    two letters    Cl, Br: the only two-letter elements of the organic subset written without brackets
                   (outside brackets "Sc" is S then aromatic c, never scandium)
    ring label     %NN: a two-digit ring-closure number (10..99); a single digit is a ring label too
    chirality      @@ (and @) if ever written outside brackets
    anything else  one character: B C N O P S F I b c n o p s *, bonds - = # $ : / \\ ~, branches ( ),
                   the dot, a newline between records, ...

Every character of the text falls in exactly one token, so `"".join(tokens) == text` holds for any
input by construction and decode(encode(s)) == s for every string the vocabulary covers.

The interface is that of `ddlm.data.tokenizers` (kind, vocab_size, encode, encode_batch, decode,
to_dict/from_dict, save): ids 0..n_real-1 are real tokens; with `specials=True` <bos> <eos> <pad> follow
them (ids n_real, n_real+1, n_real+2) and decode to nothing; a diffusion process appends its own [MASK]
id == vocab_size, and ids outside the vocabulary decode to PLACEHOLDER ("_").
"""

from __future__ import annotations

import re
from typing import Iterable

from ddlm.data.tokenizers import PLACEHOLDER, SpecialTokens, _as_id_list, _specials_of, _write
from ddlm.errors import UserError

# alternatives are tried left to right: longer tokens before the characters they start with
SMILES_PATTERN = re.compile(
    r"\[[^\[\]\n]*\]"  # a bracket atom, whole (no nested brackets, no newline inside)
    r"|Cl|Br"  # two-letter organic-subset atoms
    r"|%\d\d"  # two-digit ring-closure label
    r"|@@"  # clockwise chirality mark
    r"|.",  # any other single character (re.S: a newline too)
    re.S,
)


def smiles_tokens(text: str) -> list[str]:
    """The SMILES tokens of `text`, in order; their concatenation is `text`."""
    return SMILES_PATTERN.findall(text)


class SmilesTokenizer(SpecialTokens):
    """SMILES regex tokens; the vocabulary is the sorted set of tokens seen in the training text.

    Id i is the i-th token in sorted order. A token never seen in training cannot be encoded (a
    UserError names it).
    """

    kind = "smiles"

    def __init__(self, tokens: Iterable[str], specials: bool = False):
        tokens = sorted(set(tokens))
        if not tokens:
            raise UserError("cannot build a SMILES tokenizer from empty text")
        bad = [t for t in tokens if smiles_tokens(t) != [t]]
        if bad:
            raise UserError(f"SMILES vocabulary entries must each be one SMILES token, got {bad[:5]!r}")
        self.tokens = tokens
        self.n_real = len(tokens)
        self._set_specials(specials)
        self._ids = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def from_text(cls, text: str, specials: bool = False) -> "SmilesTokenizer":
        """The vocabulary of every token in `text` (a corpus, records separated by newlines). With specials
        (records, each ended by <eos>) the newline only separates records and is not a token: a model that
        could sample it would write two molecules on two lines for one sample."""
        tokens = set(smiles_tokens(text))
        if specials:
            tokens.discard("\n")
        return cls(tokens, specials)

    @classmethod
    def from_smiles(cls, smiles: Iterable[str], specials: bool = False) -> "SmilesTokenizer":
        """The vocabulary of every token in a list of SMILES strings (no newline token); records need
        specials=True (an <eos> after each molecule, <pad> to the block length)."""
        vocab: set[str] = set()
        for s in smiles:
            vocab.update(smiles_tokens(s))
        return cls(vocab, specials)

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        try:
            return [ids[t] for t in smiles_tokens(text)]
        except KeyError:
            missing = sorted({t for t in smiles_tokens(text) if t not in ids})
            shown = ", ".join(repr(t) for t in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise UserError(
                f"text has {len(missing)} SMILES token(s) not in the vocabulary: {shown}{more}; "
                f"this tokenizer knows only the {self.n_real} tokens of its training text"
            ) from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        tokens, n, v = self.tokens, self.n_real, self.vocab_size
        return "".join(tokens[i] if 0 <= i < n else "" if n <= i < v else PLACEHOLDER for i in _as_id_list(ids))

    def to_dict(self) -> dict:
        return {**self._header(), "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> "SmilesTokenizer":
        return cls(data["tokens"], _specials_of(data))

    def save(self, directory) -> None:
        _write(directory, self.to_dict())
