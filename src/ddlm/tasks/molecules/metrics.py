"""Metrics of generated molecules, computed with RDKit directly (MOSES' own metric code no longer
imports with current RDKit), following the definitions of MOSES (Polykovskiy et al. 2020):

    validity        fraction of samples that RDKit parses and sanitises (an empty string is invalid)
    unique@k        among the first k valid samples, the fraction of distinct canonical SMILES
    novelty         among the distinct valid samples, the fraction not in the training set
    IntDiv_p        1 - (mean over ALL ordered pairs (i, j) of valid samples, i == j included, of
                    Tanimoto(fp_i, fp_j) ** p) ** (1/p); fp = Morgan bit vector, radius 2, 1024 bits
    properties      QED, Crippen logP, molecular weight, ring count, synthetic accessibility (SA_Score
                    from RDKit's Contrib, Ertl & Schuffenhauer 2009), averaged over valid samples
    FCD             Fréchet ChemNet distance to a reference sample, when `fcd_torch` is installed

RDKit is imported on first use; without it a UserError names the install command.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings
from typing import Iterable, Sequence

import numpy as np

from ddlm.errors import UserError

RDKIT_HINT = "pip install 'ddlm[molecules]' (or pip install rdkit)"
FP_RADIUS = 2
FP_BITS = 1024
UNIQUE_AT = (1000, 10000)


@functools.lru_cache(maxsize=1)
def _rdkit():
    """The RDKit modules used here, with RDKit's parse warnings silenced (invalid samples are expected)."""
    try:
        from rdkit import Chem, DataStructs, RDLogger
        from rdkit.Chem import QED, Crippen, Descriptors, rdFingerprintGenerator, rdMolDescriptors
    except ImportError:
        raise UserError(f"molecule metrics need RDKit; install it with `{RDKIT_HINT}`") from None
    RDLogger.DisableLog("rdApp.*")
    return {"Chem": Chem, "DataStructs": DataStructs, "QED": QED, "Crippen": Crippen,
            "Descriptors": Descriptors, "rdFingerprintGenerator": rdFingerprintGenerator,
            "rdMolDescriptors": rdMolDescriptors}


@functools.lru_cache(maxsize=1)
def _sascorer():
    """RDKit's Contrib/SA_Score/sascorer.py, loaded from the installed wheel by path (it is not a package)."""
    from rdkit import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score", "sascorer.py")
    if not os.path.isfile(path):
        raise UserError(f"RDKit has no {path}; reinstall RDKit from PyPI (`pip install rdkit`)")
    spec = importlib.util.spec_from_file_location("_ddlm_rdkit_sascorer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def to_mol(smiles: str):
    """The sanitised RDKit molecule of `smiles`, or None if it does not parse, sanitise, or has no atom."""
    Chem = _rdkit()["Chem"]
    if not isinstance(smiles, str) or not smiles.strip():
        return None
    try:
        mol = Chem.MolFromSmiles(smiles)  # sanitises by default
    except Exception:  # RDKit raises on a few pathological inputs instead of returning None
        return None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES of `smiles`, or None if it is not a valid molecule."""
    mol = to_mol(smiles)
    return None if mol is None else _rdkit()["Chem"].MolToSmiles(mol)


def valid_canonical(samples: Iterable[str]) -> list[str]:
    """The canonical SMILES of the valid samples, in order, duplicates kept."""
    return [c for c in map(canonical, samples) if c is not None]


def validity(samples: Sequence[str]) -> float:
    """Fraction of samples that are valid molecules (0.0 for no samples)."""
    samples = list(samples)
    return sum(to_mol(s) is not None for s in samples) / len(samples) if samples else 0.0


def uniqueness(canonical_valid: Sequence[str], k: int | None = None) -> float | None:
    """Fraction of distinct SMILES among the first `k` (all if None) of `canonical_valid`.

    Fewer than k given: computed on all of them (as MOSES does, which warns). None if empty.
    """
    head = list(canonical_valid if k is None else canonical_valid[:k])
    return len(set(head)) / len(head) if head else None


def novelty(canonical_valid: Sequence[str], train_set) -> float | None:
    """Fraction of the distinct `canonical_valid` SMILES that are not in `train_set` (a set of canonical
    SMILES; see `canonical_set`). None if there is no valid sample."""
    distinct = set(canonical_valid)
    if not distinct:
        return None
    return len(distinct - train_set) / len(distinct)


def canonical_set(smiles: Iterable[str]) -> set[str]:
    """The set of canonical SMILES of the valid molecules in `smiles` (e.g. a training set).

    About 0.1 ms a molecule: the 1.58M MOSES training SMILES take minutes, so compute it once.
    """
    return {c for c in map(canonical, smiles) if c is not None}


def fingerprints(mols) -> np.ndarray:
    """Morgan bit vectors (radius 2, 1024 bits) of RDKit molecules: a (N, 1024) uint8 array of 0/1."""
    gen = _rdkit()["rdFingerprintGenerator"].GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)
    out = np.zeros((len(mols), FP_BITS), dtype=np.uint8)
    for i, mol in enumerate(mols):
        out[i] = gen.GetFingerprintAsNumPy(mol)
    return out


def internal_diversity(mols, p: int = 1, chunk: int = 1024) -> float | None:
    """MOSES IntDiv_p of RDKit molecules: 1 - (mean over all N*N ordered pairs of Tanimoto**p) ** (1/p).

    Self-pairs count (similarity 1), as in MOSES, so N identical molecules give exactly 0 and two
    molecules with similarity s give 1 - ((2 + 2 s**p) / 4) ** (1/p). None for no molecule.
    """
    if len(mols) == 0:
        return None
    fps = fingerprints(mols).astype(np.float32)  # (N, B)
    counts = fps.sum(axis=1).astype(np.float64)  # (N,) bits set per molecule
    total = 0.0
    for start in range(0, len(fps), chunk):  # (chunk, N) blocks bound the memory at 10k+ molecules
        # bit counts (<= 1024) are exact in float32; the ratio is taken in float64
        inter = (fps[start : start + chunk] @ fps.T).astype(np.float64)  # (c, N) bits in common
        union = counts[start : start + chunk, None] + counts[None, :] - inter  # (c, N)
        # two empty fingerprints are identical: similarity 1, as MOSES sets it
        sim = np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)
        total += float((sim**p).sum())
    return 1.0 - (total / (len(fps) ** 2)) ** (1.0 / p)


def properties(mol) -> dict:
    """QED, logP (Crippen), molecular weight (average masses), ring count (SSSR size) and SA score of a molecule."""
    r = _rdkit()
    return {
        "qed": float(r["QED"].qed(mol)),
        "logp": float(r["Crippen"].MolLogP(mol)),
        "mw": float(r["Descriptors"].MolWt(mol)),
        # smallest set of smallest rings: bonds - atoms + fragments. RDKit's CalcNumRings counts the
        # *symmetrised* SSSR, which gives 3 for the 2-ring bicyclo[2.1.1]hexane C1CC2CC1C2
        "rings": len(r["Chem"].GetSSSR(mol)),
        "sa": float(_sascorer().calculateScore(mol)),
    }


def fcd_available() -> bool:
    """Whether `fcd_torch` can be imported (FCD is computed only then)."""
    try:
        import fcd_torch  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _fcd_model():
    from fcd_torch import FCD

    return FCD(device="cpu", n_jobs=1)


@functools.lru_cache(maxsize=2)
def _fcd_stats(smiles: tuple) -> dict:
    """ChemNet activation mean and covariance of a SMILES tuple, kept for the next call with the same
    reference (a 5,000-molecule reference costs as much as the samples, ~20 s on one thread)."""
    return _fcd_model().precalc(list(smiles))


def fcd(samples: Sequence[str], reference: Sequence[str]) -> float | None:
    """Fréchet ChemNet distance between two SMILES lists with `fcd_torch` on the CPU; None if it is not
    installed (`pip install --no-deps fcd_torch`, which also needs scipy)."""
    if not fcd_available():
        return None
    with warnings.catch_warnings():  # fcd_torch's own numpy/scipy deprecation noise
        warnings.simplefilter("ignore", DeprecationWarning)
        model = _fcd_model()
        return float(model.metric(_fcd_stats(tuple(reference)), model.precalc(list(samples))))


def _stats(values: list[float], name: str) -> dict:
    if not values:
        return {f"{name}_mean": None, f"{name}_median": None}
    arr = np.asarray(values, dtype=np.float64)
    return {f"{name}_mean": float(arr.mean()), f"{name}_median": float(np.median(arr))}


def molecule_metrics(
    samples: Sequence[str], train_set=None, test_sample=None, with_properties: bool = True
) -> dict:
    """The MOSES-style metrics of generated SMILES as one JSON-friendly dict.

    samples: generated SMILES strings. train_set: training SMILES (any iterable; a `set` is taken as
    already canonical, see `canonical_set`, anything else is canonicalised here) for novelty.
    test_sample: reference SMILES for FCD (computed only if `fcd_torch` is installed).
    with_properties=False skips QED/logP/MW/rings/SA (QED and SA cost ~2 ms a molecule); their fields are None.
    Fields with nothing to measure (no valid sample, no train_set, ...) are None.
    """
    samples = list(samples)
    mols = [to_mol(s) for s in samples]
    valid = [m for m in mols if m is not None]
    Chem = _rdkit()["Chem"]
    canon = [Chem.MolToSmiles(m) for m in valid]  # (n_valid,) in sample order
    props = [properties(m) for m in valid] if with_properties else []
    qed = [p["qed"] for p in props]
    out = {
        "n_samples": len(samples),
        "n_valid": len(valid),
        "validity": len(valid) / len(samples) if samples else 0.0,
        "uniqueness": uniqueness(canon),
        **{f"unique@{k}": uniqueness(canon, k) for k in UNIQUE_AT},
        "novelty": None,
        "int_div": internal_diversity(valid, p=1),
        "int_div2": internal_diversity(valid, p=2),
    }
    if train_set is not None:
        train = train_set if isinstance(train_set, (set, frozenset)) else canonical_set(train_set)
        out["novelty"] = novelty(canon, train)
    out.update(_stats(qed, "qed"))
    out["qed_p90"] = float(np.percentile(qed, 90)) if qed else None
    for name in ("logp", "mw", "rings", "sa"):
        out.update(_stats([p[name] for p in props], name))
    value = fcd(canon, test_sample) if test_sample is not None and len(canon) > 1 else None
    out["fcd"] = None if value is None or not math.isfinite(value) else value
    return out
