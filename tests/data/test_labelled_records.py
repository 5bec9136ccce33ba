"""Labelled records (data/labels.py): LABEL<TAB>RECORD lines reach the batch rows with their labels in order,
the names are numbered in sorted order and saved with the model, bad lines are one-line refusals, and the
moses -qed4 kinds label molecules by the QED quartile of the drawn training set."""

import collections
import importlib.util

import pytest
import torch

from ddlm.config import apply_overrides, load_preset
from ddlm.data.labels import label_ids, parse_labelled_lines
from ddlm.data.prepare import prepare_records
from ddlm.data.record_data import record_source
from ddlm.errors import UserError


def tiny(*overrides):
    return apply_overrides(load_preset("tiny"), ["train.threads=1", *overrides])


def test_labels_are_numbered_in_sorted_order():
    ids, names = label_ids(["pear", "apple", "pear", "fig"])
    assert names == ("apple", "fig", "pear")
    assert ids.tolist() == [2, 0, 2, 1]


def test_every_row_of_a_batch_carries_its_own_lines_label(tmp_path):
    # label = the record's first letter, so a row's tokens say which label it must carry
    words = ["apple", "bean", "cherry", "avocado", "banana", "carrot", "apricot", "basil", "celery", "almond",
             "bran", "cumin", "artichoke", "beet", "chive", "anise", "barley", "clove", "acorn", "borage"]
    path = tmp_path / "words.tsv"
    path.write_text("".join(f"{w[0].upper()}\t{w}\n" + ("\n" if i == 3 else "") for i, w in enumerate(words)))
    cfg = tiny(f"data.source={path}", "data.records=labelled-lines", "model.max_len=8", "train.batch_size=5",
               "data.val_fraction=0.1")
    tokenizer, batches, _ = record_source(cfg)
    assert batches.class_names == ("A", "B", "C")
    # 'artichoke' (9 letters) does not fit 8 - 1 (<eos>) positions and is skipped: its label goes with it
    assert len(batches.blocks) == len(batches.labels) == 17
    for step in range(6):
        batch = batches.batch(step)
        assert batch.cond is not None and batch.cond.shape == (5,)
        for row, label in zip(batch.tokens, batch.cond.tolist()):
            first = tokenizer.decode([int(row[0])])
            assert "ABC".index(first.upper()) == label
    # the same rows, split over two ranks, keep their labels
    full = batches.batch(2)
    half = batches.batch(2, rank=1, world=2)
    assert torch.equal(half.cond, full.cond[1::2]) and torch.equal(half.tokens, full.tokens[1::2])


def test_validation_rows_and_unlabelled_records_keep_their_old_shape(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_text("".join(f"{'xy'[i % 2]}\t{'ab'[i % 2] * (1 + i % 3)}\n" for i in range(40)))
    cfg = tiny(f"data.source={path}", "data.records=labelled-lines", "model.max_len=8").data
    tok, train, val, labels = prepare_records(cfg, 8, with_labels=True)
    assert labels.names == ("x", "y") and len(labels.train) == len(train[0]) and len(labels.val) == len(val[0])
    for rows, ids in ((train[0], labels.train), (val[0], labels.val)):
        first = [tok.decode([int(r[0])]) for r in rows]
        assert [("a", "b")[i] for i in ids.tolist()] == first
    plain = tiny(f"data.source={path}", "data.records=lines").data
    assert len(prepare_records(plain, 8)) == 3  # without with_labels: (tokenizer, train, val) as before
    assert prepare_records(plain, 8, with_labels=True)[3] is None


@pytest.mark.parametrize("text, message", [
    ("a\tone\nb two\n", "line 2 has no TAB"),
    ("a\tone\n\n\tthree\n", "line 3 has an empty label"),
    ("a\tone\nb\t  \n", "line 2 has no record after its TAB"),
    ("same\tone\nsame\ttwo\n", "have the label 'same'; conditioning needs at least two labels"),
])
def test_bad_labelled_lines_are_one_line_refusals(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    cfg = tiny(f"data.source={path}", "data.records=labelled-lines").data
    with pytest.raises(UserError, match=message) as e:
        prepare_records(cfg, 8, with_labels=True)
    assert "\n" not in str(e.value)


def test_a_tab_inside_the_record_stays_in_the_record():
    got = parse_labelled_lines("k\tleft\tright\r\n", "f")
    assert got.labels == ["k"] and got.records == ["left\tright"]


@pytest.mark.slow  # QED of 5,000 molecules: ~12 s on one busy core (then cached on disk)
def test_the_qed4_kind_gives_four_near_equal_bins(tmp_path, monkeypatch):
    if importlib.util.find_spec("rdkit") is None or importlib.util.find_spec("moses") is None:
        pytest.skip("needs RDKit and the MOSES data: pip install 'ddlm[molecules]' and molsets --no-deps")
    monkeypatch.setenv("DDLM_CACHE", str(tmp_path))
    from ddlm.data.records import load_labelled
    from ddlm.tasks.molecules import data
    from ddlm.tasks.molecules.metrics import to_mol
    from rdkit.Chem import QED

    data.training_qed.cache_clear()
    records, labels, about = load_labelled("moses", "smiles-5k-qed4")
    assert records == data.training_records(5000)  # the smiles-5k molecules, in their order
    counts = collections.Counter(labels)
    assert sorted(counts) == ["qed-q1", "qed-q2", "qed-q3", "qed-q4"]
    assert all(1240 <= c <= 1260 for c in counts.values()), counts
    edges = data.qed_edges(5000)
    assert "edges " + " ".join(f"{e:.4f}" for e in edges) in about
    for smiles, label in list(zip(records, labels))[:40]:  # each label is the bin of the molecule's own QED
        q = QED.qed(to_mol(smiles))
        assert f"qed-q{int(sum(q >= e for e in edges)) + 1}" == label
    assert list(tmp_path.glob("moses-train-qed-n5000-*.npy"))  # cached for the next run
    data.training_qed.cache_clear()
    assert load_labelled("moses", "smiles-5k-qed4")[1] == labels  # from the cache file
