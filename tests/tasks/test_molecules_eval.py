"""The molecules task end to end: the records source, the presets, cutting sampled rows into molecules, scoring
(`ddlm molecules score`, `ddlm eval --task molecules`) and their one-line errors.

RDKit and the MOSES data are optional; the tests that need them skip with the install command as the reason.
"""

import importlib.util
import json

import pytest
import torch

from ddlm.cli import main
from ddlm.errors import UserError
from ddlm.tasks.molecules import data, score
from ddlm.tasks.molecules.tokenizer import SmilesTokenizer

needs_molsets = pytest.mark.skipif(importlib.util.find_spec("moses") is None,
                                   reason=f"MOSES data not installed: {data.INSTALL_HINT}")
needs_rdkit = pytest.mark.skipif(importlib.util.find_spec("rdkit") is None,
                                 reason="RDKit not installed: pip install 'ddlm[molecules]'")

# a small hand-made "training set" for novelty: CCO is in it (written OCC), benzene and Cl are not
TRAIN = {"CCO", "CC(C)C"}
SAMPLES = ["CCO", "OCC", "C1CC", "c1ccccc1", "", "Cl", "c1cccc1", "CCO"]  # 5 valid: CCO x3, benzene, Cl


@pytest.fixture
def small_refs(monkeypatch):
    """score.references -> the hand-made training set and no FCD reference (no 1.58M-molecule load)."""
    monkeypatch.setattr(score, "references", lambda fcd=True, seed=0, n_ref=score.FCD_REF: (TRAIN, None))


def test_read_smiles_file_fields_header_and_blank_lines(tmp_path):
    f = tmp_path / "s.smi"
    f.write_text("SMILES\nCCO ethanol\n\n  c1ccccc1\tbenzene\nCl\n")
    # the header goes, the first field of each line stays, a blank line is an empty (invalid) sample
    assert score.read_smiles_file(f) == ["CCO", "", "c1ccccc1", "Cl"]
    with pytest.raises(UserError, match="no such file") as e:
        score.read_smiles_file(tmp_path / "missing.smi")
    assert "\n" not in str(e.value)
    (tmp_path / "empty.smi").write_text("SMILES\n")
    with pytest.raises(UserError, match="no SMILES"):
        score.read_smiles_file(tmp_path / "empty.smi")


def test_rows_to_smiles_cuts_at_eos_or_pad_and_drops_bos():
    tok = SmilesTokenizer.from_smiles(["CCl", "c1cc[nH]c1"], specials=True)
    ids = {t: i for i, t in enumerate(tok.tokens)}
    c, cl, one, mask = ids["C"], ids["Cl"], ids["1"], tok.vocab_size  # [MASK] is the first id past the vocabulary
    bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id
    rows = torch.tensor([
        [c, cl, eos, c, c, pad],  # what follows <eos> is not part of the molecule
        [bos, c, c, eos, pad, pad],  # a leading <bos> is context
        [c, c, pad, c, cl, eos],  # <pad> ends a molecule too (never joins two fragments)
        [c, one, c, c, one, c],  # no end: the whole row
        [eos, c, c, c, c, c],  # an empty molecule
        [c, mask, c, eos, pad, pad],  # an undecoded position: "_" makes it invalid
    ])
    assert score.rows_to_smiles(tok, rows) == ["CCl", "CC", "CC", "C1CC1C", "", "C_C"]


@needs_rdkit
def test_score_smiles_exact_values(small_refs):
    m = score.score_smiles(SAMPLES, fcd=False)
    assert (m["n_samples"], m["n_valid"]) == (8, 5)
    assert m["validity"] == 5 / 8
    assert m["unique@1000"] == 3 / 5 and m["unique@1000_on"] == 5 and m["unique@10000_on"] == 5
    assert m["novelty"] == 2 / 3  # of the 3 distinct valid (CCO, benzene, Cl), CCO is in training
    assert m["fcd"] is None and m["fcd_ref"] is None and m["fcd_note"] == "not asked for"
    assert m["snn"] is None and m["frag"] is None and m["scaf"] is None and m["test_ref"] is None  # no reference
    same = score.score_smiles(["CCO", "OCC", "C(O)C"], fcd=False)
    assert same["int_div"] == 0.0 and same["uniqueness"] == 1 / 3  # one molecule written three ways
    with pytest.raises(UserError, match="no samples"):
        score.score_smiles([], fcd=False)


@needs_rdkit
def test_score_smiles_reference_similarity_without_fcd():
    # --no-fcd skips FCD only: SNN, Frag and Scaf are measured against the same test reference
    m = score.score_smiles(SAMPLES, fcd=False, refs=(TRAIN, ["CCO", "c1ccccc1"]))
    assert m["fcd"] is None and m["fcd_note"] == "not asked for" and m["test_ref"] == 2
    # valid: CCO x3 and benzene (their own nearest neighbours, 1) and Cl (no bit shared with either, 0)
    assert m["snn"] == pytest.approx(4 / 5, abs=1e-12)
    # none has a BRICS bond, so each is its own fragment: {CCO: 3, benzene: 1, Cl: 1} . {CCO: 1, benzene: 1}
    assert m["frag"] == pytest.approx(4 / 22**0.5, abs=1e-12)
    assert m["scaf"] == 1.0  # benzene on both sides; CCO and Cl are acyclic
    text = score.format_report(m, "gen.smi")
    assert "SNN/Test     0.800  Frag/Test 0.853  Scaf/Test 1.000 (against 2 random MOSES test molecules)" in text


@needs_rdkit
def test_cli_score_json_and_text(tmp_path, capsys, small_refs):
    f = tmp_path / "gen.smi"
    f.write_text("\n".join(SAMPLES) + "\n")
    assert main(["molecules", "score", str(f), "--no-fcd", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["validity"] == 5 / 8 and m["novelty"] == 2 / 3 and m["file"] == str(f)
    assert main(["molecules", "score", str(f), "--no-fcd"]) == 0
    text = capsys.readouterr().out
    assert "validity     0.625" in text and "(on 5 valid, fewer than 1000)" in text
    assert "novelty      0.667" in text
    assert "SNN/Test     n/a  Frag/Test n/a  Scaf/Test n/a (no reference)" in text


def test_cli_score_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["molecules", "score", str(tmp_path / "none.smi")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    # without RDKit: one line naming the install command
    from ddlm.tasks.molecules import metrics

    f = tmp_path / "gen.smi"
    f.write_text("CCO\n")
    monkeypatch.setitem(__import__("sys").modules, "rdkit", None)
    metrics._rdkit.cache_clear()
    monkeypatch.setattr(score, "references", lambda fcd=True, seed=0, n_ref=0: (TRAIN, None))
    try:
        assert main(["molecules", "score", str(f), "--no-fcd"]) == 2
    finally:
        monkeypatch.undo()
        metrics._rdkit.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'ddlm[molecules]'" in err


def test_presets_load():
    from ddlm.config import load_preset

    full, tiny = load_preset("molecules"), load_preset("molecules-tiny")
    assert (full.data.source, full.data.records, full.data.tokenizer) == ("moses", "smiles-100k", "smiles")
    assert full.process.name == "mdlm" and full.model.max_len == 60 and full.train.threads == 1
    # the tiny preset builds on the full one: same data and context, a smaller model and subset
    assert (tiny.data.source, tiny.data.tokenizer, tiny.model.max_len) == ("moses", "smiles", 60)
    assert tiny.data.records == "smiles-5k" and tiny.model.n_layers == 1 and tiny.train.max_steps == 4


@needs_molsets
def test_moses_records_are_a_seeded_random_subset():
    from ddlm.data.records import load_records

    train = data.load_smiles("train")
    records = load_records("moses", "smiles-5k")
    assert len(records) == len(set(records)) == 5000 and set(records) <= set(train)
    assert records == data.sample_smiles(train, 5000, seed=data.RECORD_SEED)  # reproducible
    assert records[:10] != train[:10]  # not the head of the unshuffled file
    with pytest.raises(UserError, match="smiles-100k"):
        load_records("moses", "lines")  # the kinds are named


@needs_molsets
def test_smiles_tokenizer_from_the_records_covers_every_molecule():
    from ddlm.data.records import load_records
    from ddlm.data.tokenizers import build_tokenizer

    records = load_records("moses", "smiles-5k")
    tok = build_tokenizer("smiles", "\n".join(records), specials=True)
    assert tok.kind == "smiles" and tok.eos_id == tok.n_real + 1
    assert "\n" not in tok.tokens  # records are separated by <eos>, never by a newline the model could sample
    assert all(tok.decode(tok.encode(s)) == s for s in records[:500])
    with pytest.raises(UserError, match="smiles"):
        build_tokenizer("smiles-regex", "CCO")  # the valid names, smiles among them


@needs_molsets
@needs_rdkit
@pytest.mark.slow
def test_tiny_train_then_eval_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "molecules-tiny", "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "gen.smi"
    assert main(["eval", str(run), "--task", "molecules", "--samples", "24", "--no-fcd", "--seed", "3",
                 "--smiles-out", str(out), "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    smiles = out.read_text().splitlines()
    assert m["n_samples"] == len(smiles) == 24 and m["family"] == "mdlm" and m["nfe"] > 0
    # the printed validity is that of the written molecules
    from ddlm.tasks.molecules.metrics import to_mol

    assert m["n_valid"] == sum(to_mol(s) is not None for s in smiles)
    # the same seed gives the same molecules
    again = tmp_path / "again.smi"
    assert main(["eval", str(run), "--task", "molecules", "--samples", "24", "--no-fcd", "--seed", "3",
                 "--smiles-out", str(again), "--json"]) == 0
    assert again.read_text() == out.read_text()
    # a decoding order with its options: the molecules are that generate call's
    planned = tmp_path / "planned.smi"
    assert main(["eval", str(run), "--task", "molecules", "--samples", "24", "--no-fcd", "--seed", "3",
                 "--sampler", "planned", "--planner", "top_margin", "--planner-option", "gumbel=0.5",
                 "--smiles-out", str(planned), "--json"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (m["sampler"], m["planner"], m["planner_options"]) == ("planned", "top_margin", {"gumbel": "0.5"})
    from ddlm import SequenceModel
    from ddlm.tasks.molecules.score import sampled_smiles

    model = SequenceModel.from_pretrained(run)
    o = model.generate(24, sampler="planned", planner="top_margin", planner_options={"gumbel": 0.5}, seed=3,
                       batch_size=32, decode=False, max_length=model.cfg.model.max_len)
    assert planned.read_text().splitlines() == sampled_smiles(model, o.tokens)
    assert planned.read_text() != out.read_text()
    # an option of a sampler that takes none, or an order it would ignore: one line, before sampling
    for flag in (["--planner-option", "gumbel=0.5"], ["--planner", "top_margin"]):
        assert main(["eval", str(run), "--task", "molecules", "--samples", "2", "--no-fcd", *flag]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "add --sampler planned" in err


def test_eval_refuses_a_stream_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--quiet", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--task", "molecules", "--samples", "2", "--no-fcd"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--preset molecules" in err


@needs_rdkit
def test_selfies_records_decode_to_the_same_molecules(monkeypatch):
    pytest.importorskip("selfies", reason="pip install 'ddlm[molecules]'")
    from types import SimpleNamespace

    from ddlm.tasks.molecules.metrics import canonical

    smiles = ["CCOc1cccc(C(=O)Nc2ccn(Cc3ccccn3)n2)c1", "OCc1cc(-c2ccc(N3CCCC3)nn2)ccc1F", "Clc1ccc[nH]1"]
    monkeypatch.setattr(data, "training_records", lambda n=None: list(smiles))
    records = data.selfies_records(3)
    assert all(r.startswith("[") and r.endswith("]") for r in records)
    back = data.to_smiles(records + ["", "[C]_[O]"])  # an empty row and an undecoded [MASK] ("_") give ""
    assert [canonical(s) for s in back[:3]] == [canonical(s) for s in smiles] and back[3:] == ["", ""]
    # a model trained on SELFIES records has its samples decoded; one trained on SMILES has them as written
    tok = SmilesTokenizer.from_smiles(records, specials=True)
    rows = torch.tensor([tok.encode(records[2]) + [tok.eos_id]])
    model = SimpleNamespace(tokenizer=tok, cfg=SimpleNamespace(data=SimpleNamespace(source="moses",
                                                                                     records="selfies-100k")))
    assert canonical(score.sampled_smiles(model, rows)[0]) == canonical("Clc1ccc[nH]1")
    model.cfg.data.records = "smiles-100k"
    assert score.sampled_smiles(model, rows) == [records[2]]
