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
    SNN             mean over the valid samples of the largest Tanimoto similarity of the sample's fp to
                    the fps of the reference molecules (same Morgan fingerprint as IntDiv)
    Frag            cosine similarity of the BRICS fragment count vectors of the valid samples and of the
                    reference, over the union of fragments; a fragment counts once for each molecule
                    whose `BRICS.BRICSDecompose` set holds it
    Scaf            the same over Bemis-Murcko scaffolds (canonical SMILES of RDKit's MurckoScaffold, which
                    keeps carbonyls on rings); an acyclic molecule has no scaffold and is left out
                    (MOSES' code also leaves out 1-ring scaffolds and counts fragments per occurrence;
                    its paper says neither, and we follow the paper: README, Metrics)

RDKit is imported on first use; without it a UserError names the install command.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import warnings
from collections import Counter
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
        from rdkit.Chem import BRICS, QED, Crippen, Descriptors, rdFingerprintGenerator, rdMolDescriptors
        from rdkit.Chem.Scaffolds import MurckoScaffold
    except ImportError:
        raise UserError(f"molecule metrics need RDKit; install it with `{RDKIT_HINT}`") from None
    RDLogger.DisableLog("rdApp.*")
    return {"Chem": Chem, "DataStructs": DataStructs, "QED": QED, "Crippen": Crippen,
            "Descriptors": Descriptors, "rdFingerprintGenerator": rdFingerprintGenerator,
            "rdMolDescriptors": rdMolDescriptors, "BRICS": BRICS, "MurckoScaffold": MurckoScaffold}


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
        sim = _tanimoto(fps[start : start + chunk], counts[start : start + chunk], fps, counts)  # (c, N)
        total += float((sim**p).sum())
    return 1.0 - (total / (len(fps) ** 2)) ** (1.0 / p)


def _tanimoto(a: np.ndarray, a_bits: np.ndarray, b: np.ndarray, b_bits: np.ndarray) -> np.ndarray:
    """(n, m) float64 Tanimoto similarities of 0/1 float32 fingerprints a (n, B) and b (m, B), given their
    bit counts a_bits (n,) and b_bits (m,)."""
    # bit counts (<= 1024) are exact in float32; the ratio is taken in float64
    inter = (a @ b.T).astype(np.float64)  # (n, m) bits in common
    union = a_bits[:, None] + b_bits[None, :] - inter  # (n, m)
    # two empty fingerprints are identical: similarity 1, as MOSES sets it
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


def nearest_neighbour_similarity(fps: np.ndarray, ref_fps: np.ndarray, chunk: int = 1024) -> float | None:
    """MOSES SNN: the mean over the rows of `fps` (N, B) of the largest Tanimoto similarity to a row of
    `ref_fps` (R, B) (0/1 arrays, e.g. `fingerprints`). None if either is empty."""
    if len(fps) == 0 or len(ref_fps) == 0:
        return None
    fps, ref_fps = fps.astype(np.float32), ref_fps.astype(np.float32)
    bits, ref_bits = fps.sum(axis=1).astype(np.float64), ref_fps.sum(axis=1).astype(np.float64)  # (N,), (R,)
    total = 0.0
    for start in range(0, len(fps), chunk):  # (chunk, R) blocks bound the memory
        sim = _tanimoto(fps[start : start + chunk], bits[start : start + chunk], ref_fps, ref_bits)  # (c, R)
        total += float(sim.max(axis=1).sum())
    return total / len(fps)


def brics_fragments(mol) -> set[str]:
    """The distinct BRICS fragments of a molecule (RDKit `BRICS.BRICSDecompose`: SMILES with numbered
    attachment points such as `[16*]c1ccccc1`; a molecule with no BRICS bond is its own fragment)."""
    try:
        return set(_rdkit()["BRICS"].BRICSDecompose(mol))
    except Exception:  # RDKit raises on a few pathological molecules; they then add no fragment
        return set()


def scaffold(mol) -> str:
    """The canonical SMILES of the Bemis-Murcko scaffold of a molecule (RDKit `MurckoScaffold`: its rings,
    the linkers between them and the atoms double-bonded to either); "" for an acyclic molecule."""
    r = _rdkit()
    return r["Chem"].MolToSmiles(r["MurckoScaffold"].GetScaffoldForMol(mol))


def fragment_counts(mols) -> Counter:
    """fragment SMILES -> the number of molecules whose BRICS decomposition holds it (~4 ms a molecule)."""
    return Counter(f for mol in mols for f in brics_fragments(mol))


def scaffold_counts(mols) -> Counter:
    """scaffold SMILES -> the number of molecules with that scaffold; acyclic molecules (the empty scaffold)
    are left out, as MOSES does."""
    counts = Counter(scaffold(mol) for mol in mols)
    counts.pop("", None)
    return counts


def cosine_similarity(a: Counter, b: Counter) -> float | None:
    """sum_k a_k b_k / (|a| |b|) over the union of keys of two count vectors: 1.0 for proportional counts, 0.0
    for disjoint keys or when one side is empty; None when both are empty (nothing to compare)."""
    if not a and not b:
        return None
    if not a or not b:
        return 0.0
    dot = sum(v * b.get(k, 0) for k, v in a.items())  # integer counts: exact
    return float(dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values())))


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


REF_CACHE_MIN = 1000
"references at least this large keep their fragment and scaffold counts on disk (smaller ones take under 4 s)"


@functools.lru_cache(maxsize=2)
def reference_stats(smiles: tuple) -> dict:
    """What SNN, Frag and Scaf need of a reference SMILES tuple: `fps` (R, B) fingerprints of its valid
    molecules, `frag` and `scaf` counts. Kept for the next call with the same reference; for a reference of
    REF_CACHE_MIN molecules or more the counts are also kept on disk (`data.cache_dir()`, keyed by a hash of
    the SMILES and RDKit's version), since BRICS costs ~4 ms a molecule (~20 s for 5,000 on one thread)."""
    from rdkit import __version__ as rdkit_version

    from .data import cache_dir

    mols = [m for m in map(to_mol, smiles) if m is not None]
    out = {"n": len(mols), "fps": fingerprints(mols)}
    path = None
    if len(smiles) >= REF_CACHE_MIN:
        digest = hashlib.sha1("\n".join(smiles).encode("utf-8")).hexdigest()[:16]
        path = cache_dir() / f"reference-frag-scaf-{digest}-n{len(smiles)}-rdkit{rdkit_version}.json"
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            out.update(frag=Counter(cached["frag"]), scaf=Counter(cached["scaf"]))
            return out
        except (OSError, ValueError, KeyError, TypeError):
            pass  # missing or damaged: computed again and (re)written
    out.update(frag=fragment_counts(mols), scaf=scaffold_counts(mols))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"frag": out["frag"], "scaf": out["scaf"]}), encoding="utf-8")
            os.replace(tmp, path)  # atomic: a concurrent run reads the old file or the whole new one
        except OSError:
            pass  # an unwritable cache costs the computation next time, nothing else
    return out


def reference_similarity(valid_mols, reference: Sequence[str]) -> dict:
    """MOSES SNN, Frag and Scaf of valid RDKit molecules against reference SMILES (its invalid entries are
    skipped): {"snn", "frag", "scaf"}, each None when there is nothing to compare (no molecule on a side)."""
    ref = reference_stats(tuple(reference))
    if not valid_mols or ref["n"] == 0:
        return {"snn": None, "frag": None, "scaf": None}
    return {"snn": nearest_neighbour_similarity(fingerprints(valid_mols), ref["fps"]),
            "frag": cosine_similarity(fragment_counts(valid_mols), ref["frag"]),
            "scaf": cosine_similarity(scaffold_counts(valid_mols), ref["scaf"])}


def _stats(values: list[float], name: str) -> dict:
    if not values:
        return {f"{name}_mean": None, f"{name}_median": None}
    arr = np.asarray(values, dtype=np.float64)
    return {f"{name}_mean": float(arr.mean()), f"{name}_median": float(np.median(arr))}


def molecule_metrics(
    samples: Sequence[str], train_set=None, test_sample=None, with_properties: bool = True,
    with_fcd: bool = True,
) -> dict:
    """The MOSES-style metrics of generated SMILES as one JSON-friendly dict.

    samples: generated SMILES strings. train_set: training SMILES (any iterable; a `set` is taken as
    already canonical, see `canonical_set`, anything else is canonicalised here) for novelty.
    test_sample: reference SMILES for `snn`, `frag`, `scaf` and `fcd` (FCD only if `fcd_torch` is installed
    and with_fcd). with_properties=False skips QED/logP/MW/rings/SA (QED and SA cost ~2 ms a molecule); their
    fields are None. Fields with nothing to measure (no valid sample, no train_set, ...) are None.
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
    value = fcd(canon, test_sample) if with_fcd and test_sample is not None and len(canon) > 1 else None
    out["fcd"] = None if value is None or not math.isfinite(value) else value
    if test_sample is not None:
        out.update(reference_similarity(valid, test_sample))
    else:
        out.update(snn=None, frag=None, scaf=None)
    return out
