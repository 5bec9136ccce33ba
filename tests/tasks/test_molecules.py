"""The molecules task: MOSES data from the molsets wheel, the SMILES tokenizer, RDKit metrics.

RDKit (`pip install 'ddlm[molecules]'`) and the data (`pip install --no-deps molsets==0.3.1`) are optional:
the tests that need them skip with the install command as the reason.
"""

import importlib.util
import json
import os
import sys
from collections import Counter

import pytest

from ddlm.errors import UserError
from ddlm.tasks.molecules import data
from ddlm.tasks.molecules.tokenizer import SmilesTokenizer, smiles_tokens

needs_molsets = pytest.mark.skipif(
    importlib.util.find_spec("moses") is None, reason=f"MOSES data not installed: {data.INSTALL_HINT}"
)

# ---------------------------------------------------------------- tokenizer (no optional package needed)


@pytest.mark.parametrize(
    "smiles, tokens",
    [
        ("Clc1ccc[nH]c1", ["Cl", "c", "1", "c", "c", "c", "[nH]", "c", "1"]),
        ("C[C@@H](Br)O", ["C", "[C@@H]", "(", "Br", ")", "O"]),
        ("C%10CCCC%10", ["C", "%10", "C", "C", "C", "C", "%10"]),
        ("CSc1ccccc1", ["C", "S", "c", "1", "c", "c", "c", "c", "c", "1"]),  # S then c, not scandium
        ("[NH3+]CC(=O)[O-]", ["[NH3+]", "C", "C", "(", "=", "O", ")", "[O-]"]),
        ("C/C=C\\C.[13CH4]", ["C", "/", "C", "=", "C", "\\", "C", ".", "[13CH4]"]),
        ("N#CC@@C\nCC", ["N", "#", "C", "C", "@@", "C", "\n", "C", "C"]),
    ],
)
def test_smiles_tokens_split_atoms_brackets_and_ring_labels(smiles, tokens):
    assert smiles_tokens(smiles) == tokens
    tok = SmilesTokenizer.from_text(smiles)
    ids = tok.encode(smiles)
    assert len(ids) == len(tokens)
    assert tok.decode(ids) == smiles


def test_tokenizer_vocabulary_ids_unknown_tokens_and_placeholder(tmp_path):
    tok = SmilesTokenizer.from_smiles(["CCl", "c1cc[nH]c1"])
    assert tok.tokens == sorted(["C", "Cl", "c", "1", "[nH]"])
    assert tok.vocab_size == 5
    assert tok.encode("ClC") == [tok.tokens.index("Cl"), tok.tokens.index("C")]
    # "Br" was never seen: one line naming the token, not a KeyError
    with pytest.raises(UserError, match="'Br'"):
        tok.encode("CBr")
    # an id outside the vocabulary (a diffusion [MASK] == vocab_size) prints as "_"
    assert tok.decode([tok.tokens.index("C"), tok.vocab_size, tok.tokens.index("Cl")]) == "C_Cl"
    tok.save(tmp_path)
    saved = json.loads((tmp_path / "tokenizer.json").read_text())
    assert saved["kind"] == "smiles"
    again = SmilesTokenizer.from_dict(saved)
    assert again.tokens == tok.tokens and again.encode("c1cc[nH]c1") == tok.encode("c1cc[nH]c1")
    with pytest.raises(UserError):
        SmilesTokenizer(["Cl", "CC"])  # "CC" is two tokens, not a vocabulary entry


def _expected_token_count(smiles: str) -> int:
    """Token count by counting, independent of the regex: every bracket atom, Cl, Br and %NN is one token."""
    n, i = 0, 0
    while i < len(smiles):
        if smiles[i] == "[":
            i = smiles.index("]", i) + 1
        elif smiles[i : i + 2] in ("Cl", "Br", "@@"):
            i += 2
        elif smiles[i] == "%":
            i += 3
        else:
            i += 1
        n += 1
    return n


@needs_molsets
def test_tokenizer_round_trips_moses_training_smiles():
    sample = data.load_sample("train", 3000, seed=123)
    tok = SmilesTokenizer.from_smiles(sample)
    for s in sample:
        ids = tok.encode(s)
        assert tok.decode(ids) == s
        assert len(ids) == _expected_token_count(s)
    # the whole sample as one corpus, records separated by newlines, encodes to the same ids
    corpus_tok = SmilesTokenizer.from_text("\n".join(sample))
    assert set(corpus_tok.tokens) == set(tok.tokens) | {"\n"}


# ---------------------------------------------------------------- data


@needs_molsets
def test_moses_splits_sizes_and_first_rows():
    train = data.load_smiles("train")
    assert len(train) == 1_584_663
    assert train[0] == "CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1"
    assert len(data.load_smiles("test")) == 176_074
    scaffolds = data.load_smiles("test_scaffolds")
    assert len(scaffolds) == 176_225 and scaffolds[0] == "O=C(C1CCCCC1)N1CC(=O)N2CCCc3ccccc3C2C1"
    assert "moses" not in sys.modules  # the data are read without running the package's own code


@needs_molsets
def test_sample_is_seeded_random_and_distinct():
    test = data.load_smiles("test")
    a = data.load_sample("test", 500, seed=7)
    assert a == data.load_sample("test", 500, seed=7)
    assert a != data.load_sample("test", 500, seed=8)
    assert len(set(a)) == 500 and set(a) <= set(test)
    assert a[:10] != test[:10]  # not the head of the (unshuffled) file
    # drawn from the whole file: some rows come from its second half
    position = {s: i for i, s in enumerate(test)}
    assert max(position[s] for s in a) > len(test) // 2
    with pytest.raises(UserError, match="at most 176074"):
        data.sample_smiles(test, len(test) + 1)
    with pytest.raises(UserError, match="unknown MOSES split"):
        data.load_smiles("valid")


def test_missing_molsets_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    data._load.cache_clear()
    try:
        with pytest.raises(UserError, match=r"pip install --no-deps molsets==0\.3\.1") as e:
            data.load_smiles("test")
        assert "\n" not in str(e.value)
    finally:
        data._load.cache_clear()


# ---------------------------------------------------------------- metrics (RDKit)


@pytest.fixture(scope="module")
def rd():
    pytest.importorskip("rdkit", reason="RDKit not installed: pip install 'ddlm[molecules]'")
    from ddlm.tasks.molecules import metrics

    return metrics


def test_validity_uniqueness_novelty_exact(rd):
    samples = [
        "CCO",  # valid
        "OCC",  # valid, the same molecule as CCO
        "C1CC",  # unclosed ring: does not parse
        "c1ccccc1",  # benzene
        "c1cccc1",  # parses, fails sanitisation (cannot be kekulised)
        "C(C)(C)(C)(C)C",  # parses, fails sanitisation (pentavalent carbon)
        "",  # empty: invalid
        "Cl",  # HCl: valid
    ]
    assert [rd.to_mol(s) is not None for s in samples] == [True, True, False, True, False, False, False, True]
    assert rd.canonical("OCC") == rd.canonical("CCO") == "CCO"
    m = rd.molecule_metrics(samples, train_set=["OCC", "C1CC"], with_properties=False)
    assert m["n_samples"] == 8 and m["n_valid"] == 4
    assert m["validity"] == 4 / 8
    assert m["uniqueness"] == 3 / 4  # CCO, c1ccccc1, Cl among 4 valid
    assert m["unique@1000"] == 3 / 4  # fewer than k valid: all of them
    assert rd.uniqueness(["CCO", "CCO", "c1ccccc1"], k=2) == 1 / 2  # only the first k count
    assert m["novelty"] == 2 / 3  # CCO is in training (written OCC there); benzene and Cl are new
    assert m["qed_mean"] is None
    json.dumps(m)  # JSON-friendly


def test_no_valid_sample_gives_none_not_a_crash(rd):
    m = rd.molecule_metrics(["C1CC", "((", ""], train_set={"CCO"})
    assert m["validity"] == 0.0
    assert m["uniqueness"] is None and m["novelty"] is None and m["int_div"] is None and m["qed_mean"] is None
    assert rd.molecule_metrics([])["validity"] == 0.0


def test_properties_against_rdkit_and_hand_values(rd):
    from rdkit import Chem
    from rdkit.Chem import QED, Crippen

    benzene, aspirin, naphthalene = "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "c1ccc2ccccc2c1"
    qed = [QED.qed(Chem.MolFromSmiles(s)) for s in (benzene, aspirin)]
    m = rd.molecule_metrics([benzene, aspirin])
    assert m["qed_mean"] == pytest.approx(sum(qed) / 2, abs=1e-12)
    assert m["logp_mean"] == pytest.approx(sum(Crippen.MolLogP(Chem.MolFromSmiles(s)) for s in (benzene, aspirin)) / 2)
    p = rd.properties(rd.to_mol(benzene))
    assert p["mw"] == pytest.approx(6 * 12.011 + 6 * 1.008, abs=1e-3)  # C6H6 from standard atomic weights
    assert p["rings"] == 1
    assert rd.properties(rd.to_mol(aspirin))["mw"] == pytest.approx(9 * 12.011 + 8 * 1.008 + 4 * 15.999, abs=1e-3)
    # ring count = bonds - atoms + fragments; the bridged bicyclo[2.1.1]hexane has 2 rings (not RDKit's symmetrised 3)
    cases = ("CCO", naphthalene, "C1CC2CC1C2", "C1CC1.c1ccccc1", "C12C3C4C1C5C2C3C45")  # the last: cubane
    assert [rd.properties(rd.to_mol(s))["rings"] for s in cases] == [0, 2, 2, 2, 5]


def test_sa_score_matches_rdkit_reference_table(rd):
    from rdkit import RDConfig

    # RDKit's own reference SA scores (3 decimals) for 100 ZINC molecules, shipped beside sascorer.py
    table = os.path.join(RDConfig.RDContribDir, "SA_Score", "data", "zim.100.txt")
    if not os.path.isfile(table):
        pytest.skip(f"this RDKit build has no {table}")
    with open(table) as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:] if line.strip()]
    assert len(rows) == 100
    for smiles, _name, expected in rows:
        assert rd.properties(rd.to_mol(smiles))["sa"] == pytest.approx(float(expected), abs=5.1e-4), smiles


def test_internal_diversity_follows_the_moses_definition(rd):
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    assert rd.internal_diversity([rd.to_mol("CCO")] * 5) == 0.0
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    smiles = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "c1ccc2ccccc2c1"]
    fps = [gen.GetFingerprint(rd.to_mol(s)) for s in smiles]
    sims = [DataStructs.TanimotoSimilarity(a, b) for a in fps for b in fps]  # all 25 ordered pairs, i == j too
    mols = [rd.to_mol(s) for s in smiles]
    assert rd.internal_diversity(mols) == pytest.approx(1 - sum(sims) / 25, abs=1e-12)
    assert rd.internal_diversity(mols, chunk=2) == pytest.approx(1 - sum(sims) / 25, abs=1e-12)
    assert rd.internal_diversity(mols, p=2) == pytest.approx(1 - (sum(s * s for s in sims) / 25) ** 0.5, abs=1e-12)
    s01 = DataStructs.TanimotoSimilarity(fps[0], fps[1])
    assert rd.internal_diversity(mols[:2]) == pytest.approx((1 - s01) / 2, abs=1e-12)


def test_snn_is_the_mean_nearest_neighbour_tanimoto(rd):
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    def snn(gen, ref):
        return rd.molecule_metrics(gen, test_sample=ref, with_properties=False, with_fcd=False)["snn"]

    drugs = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC", "c1ccc2ccccc2c1"]
    assert snn(drugs, drugs) == 1.0  # every molecule is its own nearest neighbour
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fp = {s: gen.GetFingerprint(rd.to_mol(s)) for s in drugs}
    # one pair: exactly RDKit's Tanimoto of the two fingerprints
    assert snn(["CCO"], ["c1ccccc1O"]) == pytest.approx(DataStructs.TanimotoSimilarity(fp["CCO"], fp["c1ccccc1O"]),
                                                       abs=1e-12)
    # two against three: the mean of each generated molecule's best match; invalid samples do not count
    ref = drugs[2:]
    best = [max(DataStructs.BulkTanimotoSimilarity(fp[g], [fp[r] for r in ref])) for g in drugs[:2]]
    assert snn(drugs[:2] + ["C1CC", ""], ref) == pytest.approx(sum(best) / 2, abs=1e-12)
    fps, ref_fps = rd.fingerprints([rd.to_mol(s) for s in drugs[:2]]), rd.fingerprints([rd.to_mol(s) for s in ref])
    assert rd.nearest_neighbour_similarity(fps, ref_fps, chunk=1) == pytest.approx(sum(best) / 2, abs=1e-12)


def test_frag_and_scaf_are_cosines_of_fragment_and_scaffold_counts(rd):
    def sims(gen, ref):
        m = rd.molecule_metrics(gen, test_sample=ref, with_properties=False, with_fcd=False)
        return m["frag"], m["scaf"]

    drugs = ["CCOC(=O)c1ccccc1", "CC(=O)Nc1ccc(O)cc1", "c1ccc2ccccc2c1", "c1ccccc1Cc1ccccc1", "CCN(CC)CC"]
    assert sims(drugs, drugs) == (1.0, 1.0)
    assert sims(drugs, list(reversed(drugs))) == (1.0, 1.0)  # counts, not order
    # scaffolds benzene, pyridine against cyclohexane, naphthalene; no BRICS fragment in common either
    assert sims(["CCc1ccccc1", "Cc1ccncc1"], ["CC1CCCCC1", "c1ccc2ccccc2c1"]) == (0.0, 0.0)
    # by hand: BRICS fragments (BRICSDecompose) of
    #   G: CCOC(=O)c1ccccc1 -> [1*]C([6*])=O [16*]c1ccccc1 [3*]O[3*] [4*]CC; CCc1ccccc1 -> [16*]c1ccccc1 [8*]CC;
    #      CCN(CC)CC -> [4*]CC [5*]N([5*])[5*]          counts (phenyl 2, [4*]CC 2, four others 1): |G|^2 = 12
    #   R: c1ccccc1Cc1ccccc1 -> [16*]c1ccccc1 [8*]C[8*] (two phenyls, counted once: one molecule);
    #      CCN(CC)CC -> [4*]CC [5*]N([5*])[5*]; Cc1ccccc1 -> itself   all counts 1: |R|^2 = 5
    #   dot = 2 (phenyl) + 2 ([4*]CC) + 1 (amine) = 5
    # scaffolds: G benzene x2 (the amine is acyclic: left out); R diphenylmethane, benzene -> 2 / (2 sqrt 2)
    frag, scaf = sims(["CCOC(=O)c1ccccc1", "CCc1ccccc1", "CCN(CC)CC"],
                      ["c1ccccc1Cc1ccccc1", "CCN(CC)CC", "Cc1ccccc1"])
    assert frag == pytest.approx(5 / 60**0.5, abs=1e-12)
    assert scaf == pytest.approx(2**-0.5, abs=1e-12)
    assert rd.scaffold(rd.to_mol("O=C(C)c1ccccc1")) == "c1ccccc1"  # the acetyl's carbonyl is not on the ring
    assert rd.scaffold(rd.to_mol("CC1=CC(=O)CC1")) == "O=C1C=CCC1"  # a carbonyl on a ring belongs to it
    # acyclic molecules have no scaffold: 0 against a reference with scaffolds, None when neither has one
    assert sims(["CCO", "CCN(CC)CC"], drugs)[1] == 0.0
    assert sims(["CCO", "CCN(CC)CC"], ["CCCCO"])[1] is None
    assert rd.cosine_similarity(Counter({"a": 1, "b": 2}), Counter({"a": 2, "b": 4})) == pytest.approx(1.0)


def test_reference_similarity_fields_are_none_with_nothing_to_compare(rd):
    m = rd.molecule_metrics(["CCO", "c1ccccc1"], with_properties=False)
    assert (m["snn"], m["frag"], m["scaf"]) == (None, None, None)  # no reference
    m = rd.molecule_metrics(["C1CC", ""], test_sample=["CCO"], with_properties=False, with_fcd=False)
    assert (m["snn"], m["frag"], m["scaf"]) == (None, None, None)  # no valid sample
    json.dumps(m)


def test_reference_counts_are_kept_on_disk(rd, monkeypatch, tmp_path):
    monkeypatch.setenv("DDLM_CACHE", str(tmp_path))
    monkeypatch.setattr(rd, "REF_CACHE_MIN", 1)
    ref = ("CCOC(=O)c1ccccc1", "c1ccccc1Cc1ccccc1", "CCN(CC)CC")
    rd.reference_stats.cache_clear()
    try:
        first = rd.reference_stats(ref)
        (path,) = tmp_path.glob("reference-frag-scaf-*.json")
        rd.reference_stats.cache_clear()

        def no_brics(mols):
            raise AssertionError("the counts should come from the disk")

        monkeypatch.setattr(rd, "fragment_counts", no_brics)
        again = rd.reference_stats(ref)
        assert again["frag"] == first["frag"] and again["scaf"] == first["scaf"] and again["frag"]["[4*]CC"] == 2
        monkeypatch.undo()
        monkeypatch.setenv("DDLM_CACHE", str(tmp_path))
        monkeypatch.setattr(rd, "REF_CACHE_MIN", 1)
        path.write_text("{not json")  # a damaged file is computed again and replaced
        rd.reference_stats.cache_clear()
        assert rd.reference_stats(ref)["frag"] == first["frag"]
        assert json.loads(path.read_text())["scaf"] == {"c1ccccc1": 1, "c1ccc(Cc2ccccc2)cc1": 1}
    finally:
        rd.reference_stats.cache_clear()


def test_missing_rdkit_is_one_line_with_the_install_command(rd, monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)  # `import rdkit` now raises ImportError
    rd._rdkit.cache_clear()
    try:
        with pytest.raises(UserError, match=r"pip install 'ddlm\[molecules\]'"):
            rd.validity(["CCO"])
    finally:
        monkeypatch.undo()
        rd._rdkit.cache_clear()
    assert rd.validity(["CCO"]) == 1.0


def test_fcd_is_none_without_fcd_torch(rd, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcd_torch", None)
    m = rd.molecule_metrics(["CCO", "c1ccccc1"], test_sample=["CCN", "c1ccccc1C"], with_properties=False)
    assert m["fcd"] is None


@pytest.mark.slow
def test_fcd_is_zero_on_identical_sets_and_large_between_different_ones(rd):
    pytest.importorskip("fcd_torch", reason="optional: pip install scipy && pip install --no-deps fcd_torch")
    drugs = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
             "c1ccc2c(c1)c(=O)c1ccccc1[nH]2", "COc1ccc2[nH]cc(CCNC(C)=O)c2c1", "O=C(O)c1ccccc1O"]
    alkanes = ["C" * n for n in range(3, 9)]
    assert abs(rd.fcd(drugs, drugs)) < 1e-3
    assert rd.fcd(drugs, alkanes) > 1.0
