"""The MOSES benchmark SMILES (Polykovskiy et al. 2020), read from the PyPI wheel `molsets`.

The wheel ships `moses/dataset/data/{train,test,test_scaffolds}.csv.gz`: a header line `SMILES`, then
one molecule a line (1,584,663 / 176,074 / 176,225 molecules). Only those data files are read: the
`moses` Python package itself is never imported, because its code needs old versions of its
dependencies (it is installed with `--no-deps`).

The files are NOT shuffled (the first rows of a split are not a random sample of it), so take
subsets with `sample_smiles`, never by slicing the head of a split.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import random
from pathlib import Path

from ddlm.data.records import register_records
from ddlm.errors import UserError

SPLITS = ("train", "test", "test_scaffolds")
MOLSETS_VERSION = "0.3.1"
INSTALL_HINT = f"pip install --no-deps molsets=={MOLSETS_VERSION}"


def data_dir() -> Path:
    """The folder holding the MOSES csv.gz files, found without importing the `moses` package."""
    # find_spec on a top-level name locates the package without executing its __init__
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the MOSES molecules need the package 'molsets'; install it with `{INSTALL_HINT}`")
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset" / "data"
        if (folder / "train.csv.gz").is_file():
            return folder
    raise UserError(f"package 'moses' is installed but has no dataset/data/train.csv.gz; reinstall it with `{INSTALL_HINT}`")


@functools.lru_cache(maxsize=len(SPLITS))
def _load(split: str) -> tuple[str, ...]:
    path = data_dir() / f"{split}.csv.gz"
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall it with `{INSTALL_HINT}`")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip() != "SMILES":
        raise UserError(f"{path} does not start with the header 'SMILES'; reinstall it with `{INSTALL_HINT}`")
    return tuple(s for s in (line.strip() for line in lines[1:]) if s)


def load_smiles(split: str = "train") -> list[str]:
    """All SMILES of a MOSES split ("train", "test" or "test_scaffolds"), in file order.

    A split is read once per process and cached (the training split takes ~1 s and ~150 MB).
    """
    if split not in SPLITS:
        raise UserError(f"unknown MOSES split {split!r}; valid splits are: {', '.join(SPLITS)}")
    return list(_load(split))


def sample_smiles(smiles: list[str], n: int, seed: int = 0) -> list[str]:
    """`n` distinct rows of `smiles` drawn uniformly at random without replacement, reproducibly.

    The same (list, n, seed) always gives the same sample, in the order drawn.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"sample size must be a non-negative integer, got {n!r}")
    if n > len(smiles):
        raise UserError(f"cannot sample {n} molecules from {len(smiles)}; ask for at most {len(smiles)}")
    return random.Random(seed).sample(list(smiles), n)


def load_sample(split: str, n: int, seed: int = 0) -> list[str]:
    """`sample_smiles(load_smiles(split), n, seed)`: a random subset of a MOSES split."""
    return sample_smiles(load_smiles(split), n, seed)


RECORD_KINDS = {"smiles": None, "smiles-100k": 100_000, "smiles-5k": 5_000}
"records of the `moses` source (data.source=moses, data.records=KIND): kind -> training molecules kept (None: all)"
RECORD_SEED = 0


def training_records(n: int | None = None) -> list[str]:
    """The MOSES training SMILES in a seeded random order (the file is not shuffled, and the records' split
    into training and validation rows is interleaved); with `n`, a uniform random subset of n, in random order."""
    train = load_smiles("train")
    return sample_smiles(train, len(train) if n is None else n, seed=RECORD_SEED)


def selfies_records(n: int | None = None) -> list[str]:
    """`training_records(n)` written as SELFIES (Krenn et al. 2020; PyPI `selfies`): every token string decodes
    to a valid molecule. A molecule SELFIES cannot encode is left out. ~4 ms a molecule on a busy CPU."""
    try:
        import selfies
    except ImportError:
        raise UserError("SELFIES records need the package 'selfies'; install it with "
                        "`pip install 'ddlm[molecules]'`") from None
    out = []
    for s in training_records(n):
        try:
            encoded = selfies.encoder(s)
        except selfies.EncoderError:
            continue
        if encoded:
            out.append(encoded)
    return out


def is_selfies(data_cfg) -> bool:
    """Whether a model was trained on SELFIES records (its samples decode to SMILES through `to_smiles`)."""
    return data_cfg.source == "moses" and str(data_cfg.records).startswith("selfies")


def to_smiles(selfies_strings: list[str]) -> list[str]:
    """SMILES of SELFIES strings ("" for one that does not decode, e.g. an undecoded [MASK] placeholder)."""
    import selfies

    out = []
    for s in selfies_strings:
        try:
            out.append(selfies.decoder(s) or "")
        except selfies.DecoderError:
            out.append("")
    return out


for _kind, _n in RECORD_KINDS.items():
    register_records("moses", _kind, functools.partial(training_records, _n))
register_records("moses", "selfies-100k", functools.partial(selfies_records, 100_000))
register_records("moses", "selfies-5k", functools.partial(selfies_records, 5_000))
