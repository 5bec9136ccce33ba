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
import os
import random
from pathlib import Path

import numpy as np

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
    return [e for e in map(_selfies_of, training_records(n)) if e]


# ---- QED-labelled kinds: smiles-5k-qed4, smiles-100k-qed4, selfies-5k-qed4, selfies-100k-qed4 -------------
QED_BINS = 4
"the -qed4 kinds: labels qed-q1..qed-q4, the QED quartile of each molecule among the drawn training molecules"


def cache_dir() -> Path:
    """Where computed molecule properties are kept between runs: $DDLM_CACHE, else $XDG_CACHE_HOME/ddlm, else
    ~/.cache/ddlm (the MOSES data themselves are read from the molsets wheel and cached in memory only)."""
    root = os.environ.get("DDLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ddlm")
    return Path(root)


@functools.lru_cache(maxsize=4)
def training_qed(n: int) -> np.ndarray:
    """(n,) float64: RDKit's QED of `training_records(n)`, in that order (0 for a molecule RDKit refuses; MOSES
    has none). ~2.3 ms a molecule on one busy core (12 s for 5k, ~4 min for 100k), so the values are cached on
    disk (cache_dir(), keyed by n, the seed, molsets' and RDKit's versions) and computed once per machine."""
    from rdkit import __version__ as rdkit_version

    from .metrics import _rdkit, to_mol

    path = cache_dir() / f"moses-train-qed-n{n}-seed{RECORD_SEED}-molsets{MOLSETS_VERSION}-rdkit{rdkit_version}.npy"
    if path.is_file():
        try:
            values = np.load(path)
            if values.shape == (n,):
                return values
        except (OSError, ValueError):
            pass  # a damaged cache file is computed again and replaced
    qed = _rdkit()["QED"]
    values = np.array([0.0 if (m := to_mol(s)) is None else qed.qed(m) for s in training_records(n)],
                      dtype=np.float64)  # (n,)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, values)
        os.replace(tmp, path)  # atomic: a concurrent run reads the old file or the whole new one
    except OSError:
        pass  # an unwritable cache costs the computation next time, nothing else
    return values


def qed_edges(n: int) -> np.ndarray:
    """(QED_BINS - 1,) the QED quartile edges of the n drawn training molecules (bin k: edges[k-1] <= QED <
    edges[k])."""
    return np.quantile(training_qed(n), np.arange(1, QED_BINS) / QED_BINS)


def qed_labelled(n: int, selfies: bool = False):
    """`training_records(n)` (or its SELFIES) labelled qed-q1..qed-q4 by the QED quartile of each molecule."""
    from ddlm.data.labels import Labelled

    edges = qed_edges(n)
    bins = np.searchsorted(edges, training_qed(n), side="right")  # (n,) 0..QED_BINS-1
    labels = [f"qed-q{int(b) + 1}" for b in bins]
    records = training_records(n)
    if selfies:
        encoded = [_selfies_of(s) for s in records]
        records, labels = zip(*[(e, lab) for e, lab in zip(encoded, labels) if e]) if any(encoded) else ((), ())
    about = (f"QED quartiles of the {n} drawn training molecules, edges "
             + " ".join(f"{e:.4f}" for e in edges) + " (qed-q1 lowest, qed-q4 highest)")
    return Labelled(list(records), list(labels), about)


def _selfies_of(smiles: str) -> str:
    """The SELFIES of `smiles`, or "" if SELFIES cannot encode it."""
    try:
        import selfies
    except ImportError:
        raise UserError("SELFIES records need the package 'selfies'; install it with "
                        "`pip install 'ddlm[molecules]'`") from None
    try:
        return selfies.encoder(smiles) or ""
    except selfies.EncoderError:
        return ""


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
for _n, _size in ((100_000, "100k"), (5_000, "5k")):
    register_records("moses", f"smiles-{_size}-qed{QED_BINS}", functools.partial(qed_labelled, _n))
    register_records("moses", f"selfies-{_size}-qed{QED_BINS}", functools.partial(qed_labelled, _n, selfies=True))
