"""A conditional model from a user's LABEL<TAB>RECORD file: `ddlm train --records labelled-lines` sets
model.n_classes and model.class_names from the data, training feeds the labels, and conditional sampling
(by name or number, in Python and through `ddlm sample --cond`) gives each label's own pattern."""

import json
import random

import pytest
import torch

from cli_harness import run_cli
from ddlm.errors import UserError
from ddlm.pipeline import SequenceModel

ALPHABET = {"down": "xy", "up": "ab"}  # each label's records use only its two letters


TRAIN = ["--preset", "tiny", "--records", "labelled-lines", "--max-steps", "60", "--quiet", "train.threads=1",
         "model.max_len=8", "model.n_layers=1", "model.d_model=32", "train.batch_size=16", "train.lr=3e-3",
         "train.ema=0", "train.ckpt_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # data.padding=learn, the padding the molecules preset steers with (SVDD and SMC need it); at 60 steps a
    # skip model's null label still leans to one label (it balanced by ~1,500 steps here), a learn model's not
    tmp = tmp_path_factory.mktemp("labelled")
    rnd = random.Random(0)
    lines = []
    for i in range(200):
        label = ("down", "up")[i % 2]
        lines.append(f"{label}\t" + "".join(rnd.choice(ALPHABET[label]) for _ in range(rnd.randint(3, 6))))
    data = tmp / "toy.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp / "run"
    torch.set_num_threads(1)
    code, _, stderr = run_cli(["train", *TRAIN, "--data", str(data), "--out", str(out), "data.padding=learn"])
    assert code == 0, stderr
    return data, out


def own_fraction(texts, label):
    """Of all letters sampled, the fraction from `label`'s alphabet."""
    letters = "".join(texts)
    return sum(c in ALPHABET[label] for c in letters) / max(1, len(letters))


def test_the_labels_and_their_names_are_saved_with_the_model(trained):
    _, out = trained
    model = SequenceModel.from_pretrained(out)
    assert model.cfg.model.n_classes == 2 and model.cfg.model.class_names == ("down", "up")
    assert "class_names:\n  - down\n  - up" in (out / "config.yaml").read_text()


def test_conditional_samples_follow_their_label(trained):
    _, out = trained
    model = SequenceModel.from_pretrained(out)
    for label, number in (("down", 0), ("up", 1)):
        by_name = model.generate(n=40, steps=8, seed=1, cond=label)
        assert torch.equal(by_name.tokens, model.generate(n=40, steps=8, seed=1, cond=number).tokens)
        assert own_fraction(by_name.texts, label) > 0.9, (label, by_name.texts)
    plain = model.generate(n=40, steps=8, seed=1).texts  # the null label: both patterns
    assert 0.2 < own_fraction(plain, "up") < 0.8


def test_ddlm_sample_takes_a_label_name_or_number(trained):
    _, out = trained
    model = SequenceModel.from_pretrained(out)
    want = model.generate(n=4, steps=8, seed=2, cond=1, guidance=2.0).texts
    for cond in ("up", "1"):
        code, stdout, stderr = run_cli(["sample", str(out), "--n", "4", "--steps", "8", "--seed", "2",
                                        "--cond", cond, "--guidance", "2", "--json"])
        assert code == 0, stderr
        assert json.loads(stdout)["samples"] == want
    code, _, stderr = run_cli(["sample", str(out), "--n", "2", "--cond", "sideways"])
    assert code == 2 and stderr.count("\n") == 1
    assert "unknown class label 'sideways'; this model's labels are one of down, up or a number" in stderr


def test_a_skip_model_steers_its_drawn_lengths_by_label_and_guidance(trained, tmp_path):
    data, _ = trained
    out = tmp_path / "skip"
    code, _, stderr = run_cli(["train", *TRAIN, "--data", str(data), "--out", str(out)])  # the default: skip
    assert code == 0, stderr
    model = SequenceModel.from_pretrained(out)
    assert model.draws_lengths()
    for label in ("down", "up"):
        for w in (1.0, 2.0):  # the label alone, and guidance's second (null-label) pass under the same key mask
            out_ = model.generate(n=40, steps=8, seed=1, cond=label, guidance=w)
            assert out_.lengths is not None and own_fraction(out_.texts, label) > 0.9, (label, w, out_.texts)
            # records of 3..6 letters: every drawn length is a training length (+ <eos>), nothing past it
            assert all(3 <= len(t) <= 6 for t in out_.texts) and out_.lengths.tolist() == [len(t) for t in out_.texts]
    # SVDD values each candidate through the same per-row key mask (select_rows): the reward rises, lengths hold
    share_a = lambda texts: [t.count("a") / max(1, len(t)) for t in texts]  # noqa: E731
    plain = model.generate(n=40, steps=8, seed=0)
    svdd = model.generate(n=40, steps=8, seed=0, reward=share_a, svdd_candidates=4)
    assert sum(share_a(svdd.texts)) > sum(share_a(plain.texts)) + 4  # the mean share of "a" up by more than 0.1
    assert svdd.lengths.tolist() == [len(t) for t in svdd.texts] and all(3 <= len(t) <= 6 for t in svdd.texts)
    with pytest.raises(UserError, match="SMC resamples whole rows, which finished rows .* drawn lengths"):
        model.generate(n=2, steps=4, reward=share_a, smc_particles=2)


@pytest.mark.parametrize("extra, message", [
    (["model.n_classes=3"], "model.n_classes=3 but the data have 2 labels (down, up); set model.n_classes=2 or 0"),
    (["--process", "ar"], "the ar family samples left to right without labels"),
])
def test_labels_that_do_not_fit_the_model_are_refused(trained, tmp_path, extra, message):
    data, _ = trained
    code, _, stderr = run_cli(["train", "--preset", "tiny", "--data", str(data), "--records", "labelled-lines",
                               "--out", str(tmp_path / "run"), "--max-steps", "1", "--quiet", "train.threads=1",
                               "model.max_len=8", *extra])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr
