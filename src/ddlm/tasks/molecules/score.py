"""Scoring generated molecules against MOSES: the references (training set for novelty, a random test
sample for FCD, SNN, Frag and Scaf), reading a SMILES file, cutting sampled token rows into molecules, and the
report.

`score_smiles(samples)` is what `ddlm molecules score FILE` and `ddlm eval DIR --task molecules` print:
`metrics.molecule_metrics` with the MOSES training set as the novelty reference and `FCD_REF` random test
molecules (seeded: the test file is not shuffled) as the reference of FCD, SNN, Frag and Scaf, plus how many
valid samples each unique@k was computed on (fewer than k when n is small; MOSES warns in that case, we say it).
"""

from __future__ import annotations

from pathlib import Path

from ddlm.errors import UserError

FCD_REF = 5000
("random MOSES test molecules FCD, SNN, Frag and Scaf are measured against (all four depend on its size: SNN rises "
 "with more neighbours to find, FCD falls; see the README floor)")


def read_smiles_file(path) -> list[str]:
    """One sample per line of a .smi / .txt / MOSES .csv file: the line's first whitespace-separated field.

    An empty line is an empty (invalid) sample; a first line `SMILES` (the MOSES csv header) is skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file; give a file of SMILES, one per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; give a file of SMILES, one per line") from None
    lines = text.splitlines()
    if lines and lines[0].strip() == "SMILES":
        lines = lines[1:]
    samples = [line.split()[0] if line.split() else "" for line in lines]
    if not samples:
        raise UserError(f"{path} holds no SMILES; give a file with one molecule per line")
    return samples


def rows_to_smiles(tokenizer, tokens) -> list[str]:
    """The molecule of each sampled row (B, L): the tokens after a leading <bos>, up to the first <eos> or <pad>.

    A row with neither is taken whole (it ran out of room; usually invalid). [MASK] or ids outside the
    vocabulary decode to the placeholder "_", which no SMILES parser accepts, so such a row is invalid.
    """
    bos, eos, pad = (getattr(tokenizer, name, None) for name in ("bos_id", "eos_id", "pad_id"))
    out = []
    for row in tokens.tolist():
        if bos is not None and row and row[0] == bos:
            row = row[1:]
        for i, t in enumerate(row):
            if t == eos or t == pad:
                row = row[:i]
                break
        out.append(tokenizer.decode(row))
    return out


def sampled_smiles(model, tokens) -> list[str]:
    """The SMILES of a model's sampled rows (B, L): `rows_to_smiles`, then decoded from SELFIES when the model
    was trained on SELFIES records (data.records=selfies-*)."""
    from .data import is_selfies, to_smiles

    strings = rows_to_smiles(model.tokenizer, tokens)
    return to_smiles(strings) if is_selfies(model.cfg.data) else strings


def references(seed: int = 0, n_ref: int = FCD_REF) -> tuple[set, list]:
    """(training SMILES as a set, `n_ref` random test SMILES drawn with `seed`).

    The set is the file's SMILES as written: MOSES stores canonical SMILES, and 2 in 10,000 differ from
    current RDKit's canonical form (README), so novelty is exact to about 1e-4.
    """
    from .data import load_sample, load_smiles

    train = set(load_smiles("train"))
    return train, load_sample("test", n_ref, seed)


def score_smiles(samples, fcd: bool = True, seed: int = 0, n_ref: int = FCD_REF, refs=None) -> dict:
    """The MOSES-style metrics of `samples` (see metrics.molecule_metrics) against the MOSES references.

    Adds `unique@K_on` (valid samples unique@K was computed on: min(K, n_valid)), `fcd_ref` (the size of
    the FCD reference, or None when FCD was not computed and why in `fcd_note`), `test_ref` (the size of the
    SNN/Frag/Scaf reference, computed whatever `fcd` says; None without a test sample).
    refs: (train_set, test_sample) from `references` to reuse across calls.
    """
    from .metrics import UNIQUE_AT, fcd_available, molecule_metrics

    samples = list(samples)
    if not samples:
        raise UserError("there are no samples to score; give at least one SMILES")
    train, test = refs if refs is not None else references(seed=seed, n_ref=n_ref)
    m = molecule_metrics(samples, train_set=train, test_sample=test, with_fcd=fcd)
    for k in UNIQUE_AT:
        m[f"unique@{k}_on"] = min(k, m["n_valid"])
    m["fcd_ref"] = len(test) if fcd and test is not None and m["fcd"] is not None else None
    m["test_ref"] = len(test) if test is not None else None
    if not fcd:
        m["fcd_note"] = "not asked for"
    elif not fcd_available():
        m["fcd_note"] = "fcd_torch is not installed (pip install scipy && pip install --no-deps fcd_torch==1.0.7)"
    elif m["fcd"] is None:
        m["fcd_note"] = "fewer than 2 valid samples"
    return m


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_report(m: dict, what: str) -> str:
    """The human-readable lines of a `score_smiles` result for `what` (e.g. 'samples.smi')."""
    from .metrics import UNIQUE_AT

    lines = [f"{what}: {m['n_samples']} samples, {m['n_valid']} valid"]
    lines.append(f"  validity     {_f(m['validity'])}")
    uniq = []
    for k in UNIQUE_AT:
        on = m[f"unique@{k}_on"]
        note = "" if on == k else f" (on {on} valid, fewer than {k})"
        uniq.append(f"@{k // 1000}k {_f(m[f'unique@{k}'])}{note}")
    lines.append("  uniqueness   " + ", ".join(uniq))
    lines.append(f"  novelty      {_f(m['novelty'])} (distinct valid not in the MOSES training set)")
    lines.append(f"  IntDiv       {_f(m['int_div'])} (IntDiv2 {_f(m['int_div2'])})")
    if m["fcd"] is not None:
        lines.append(f"  FCD/Test     {_f(m['fcd'])} (against {m['fcd_ref']} random MOSES test molecules)")
    else:
        lines.append(f"  FCD/Test     n/a ({m.get('fcd_note', 'not computed')})")
    ref = f"against {m['test_ref']} random MOSES test molecules" if m.get("test_ref") else "no reference"
    lines.append(f"  SNN/Test     {_f(m['snn'])}  Frag/Test {_f(m['frag'])}  Scaf/Test {_f(m['scaf'])} ({ref})")
    lines.append(f"  QED {_f(m['qed_mean'])}  logP {_f(m['logp_mean'], 2)}  MW {_f(m['mw_mean'], 1)}  "
                 f"rings {_f(m['rings_mean'], 2)}  SA {_f(m['sa_mean'], 2)}  (means over valid molecules)")
    return "\n".join(lines)
