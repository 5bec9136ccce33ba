"""Steering through SequenceModel.generate and `ddlm sample`: labels, guidance, SVDD, SMC, their NFE and errors."""

import json

import pytest
import torch

from ddlm.config import ModelConfig, RunConfig
from ddlm.data.tokenizers import build_tokenizer
from ddlm.errors import UserError
from ddlm.pipeline import SequenceModel

L = 12


def _model(n_classes=3, seed=0):
    cfg = RunConfig(model=ModelConfig(n_layers=1, d_model=32, n_heads=2, max_len=L, n_classes=n_classes))
    torch.manual_seed(seed)
    model = SequenceModel(cfg, build_tokenizer("char", "abcdefgh"))
    with torch.no_grad():  # sharpen a random init so that labels and rewards make visible choices
        model.backbone.head.weight.mul_(30.0)
        if model.backbone.label is not None:
            model.backbone.label.weight.mul_(50.0)
    return model.eval()


def count_a(texts):
    return [t.count("a") for t in texts]


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    model = _model()
    kw = dict(n=6, steps=6, seed=3)
    plain, cond = model.generate(**kw), model.generate(cond=1, **kw)
    assert torch.equal(model.generate(cond=1, guidance=0.0, **kw).tokens, plain.tokens)
    assert torch.equal(model.generate(cond=1, guidance=1.0, **kw).tokens, cond.tokens)
    assert not torch.equal(cond.tokens, plain.tokens)
    assert torch.equal(model.generate(cond=-1, **kw).tokens, plain.tokens)  # the null label = no label
    guided = model.generate(cond=1, guidance=2.0, **kw)
    assert guided.nfe == 2 * cond.nfe  # the null-label pass is counted


def test_per_sample_labels_follow_their_rows_across_batches():
    model = _model()
    labels = [0, 1, 2, 1, 0]
    mixed = model.generate(n=5, steps=4, seed=1, cond=labels, batch_size=2)
    for i, c in enumerate(labels):  # each row as a one-label run with the same draws would give it
        alone = model.generate(n=5, steps=4, seed=1, cond=c, batch_size=2)
        assert torch.equal(mixed.tokens[i], alone.tokens[i])


def test_svdd_and_smc_raise_the_reward_and_count_their_calls():
    model = _model(0)
    kw = dict(n=16, steps=6, seed=0)
    plain = model.generate(**kw)
    svdd = model.generate(reward=count_a, svdd_candidates=8, **kw)
    smc = model.generate(reward=count_a, smc_particles=8, smc_alpha=0.2, **kw)
    base = sum(count_a(plain.texts))
    assert sum(count_a(svdd.texts)) > base + 16 and sum(count_a(smc.texts)) > base + 16
    assert torch.equal(model.generate(reward=count_a, svdd_candidates=1, **kw).tokens, plain.tokens)
    assert torch.equal(model.generate(reward=count_a, smc_particles=1, **kw).tokens, plain.tokens)
    assert svdd.nfe > plain.nfe and svdd.row_evals > plain.row_evals  # value calls are counted
    assert smc.row_evals >= 8 * plain.row_evals  # 8 particles per sample


@pytest.mark.parametrize("kw,msg", [
    (dict(guidance=2.0), "guidance needs something to guide towards: a class label"),
    (dict(cond=5), "out of range"),
    (dict(cond=0, guidance=-1.0), "guidance scale"),
    (dict(svdd_candidates=4), "need a reward"),
    (dict(reward=count_a), "add svdd_candidates"),
    (dict(reward=count_a, svdd_candidates=2, smc_particles=2), "choose one"),
    (dict(reward=count_a, smc_particles=2, smc_alpha=0.0), "smc_alpha must be > 0"),
    (dict(reward="nope", svdd_candidates=2), "unknown reward 'nope'"),
    (dict(reward=count_a, svdd_candidates=2, sampler="remask"), "SVDD and SMC steer"),
    (dict(reward=count_a, svdd_candidates=0), "svdd_candidates"),
    (dict(svdd_alpha=0.5), "svdd_alpha goes with"),
])
def test_bad_steering_requests_are_one_line_errors(kw, msg):
    model = _model()
    with pytest.raises(UserError, match=msg) as e:
        model.generate(n=2, steps=2, seed=0, **kw)
    assert "\n" not in str(e.value)


def test_a_reward_that_raises_is_named_in_one_line():
    def broken(texts):
        raise KeyError("no such property")

    with pytest.raises(UserError, match="the reward 'broken' raised KeyError") as e:
        _model(0).generate(n=2, steps=2, seed=0, reward=broken, svdd_candidates=2)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="returned 1 values for"):
        _model(0).generate(n=2, steps=2, seed=0, reward=lambda texts: [0.0], svdd_candidates=2)


def test_an_unconditional_model_refuses_labels():
    with pytest.raises(UserError, match="unconditional"):
        _model(0).generate(n=2, steps=2, cond=0)


def test_cli_sample_cond_guidance_and_reward(tmp_path, capsys, monkeypatch):
    from ddlm.cli import main

    (tmp_path / "myreward.py").write_text("def count_a(texts):\n    return [t.count('a') for t in texts]\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    model = _model()
    model.save_pretrained(tmp_path / "m")
    assert main(["sample", str(tmp_path / "m"), "--n", "3", "--steps", "4", "--seed", "2", "--cond", "1",
                 "--guidance", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = model.generate(n=3, steps=4, seed=2, cond=1, guidance=2.0)
    assert got["samples"] == want.texts and got["nfe"] == want.nfe
    assert main(["sample", str(tmp_path / "m"), "--n", "2", "--steps", "4", "--seed", "2", "--cond", "0",
                 "--reward", "myreward:count_a", "--svdd", "4"]) == 0
    text = capsys.readouterr().out
    want = model.generate(n=2, steps=4, seed=2, cond=0, reward=count_a, svdd_candidates=4)
    assert all(t in text for t in want.texts) and f"NFE {want.nfe}" in text
    assert main(["sample", str(tmp_path / "m"), "--n", "2", "--guidance", "2"]) == 2
    assert "guidance needs something to guide towards: a class label" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "m"), "--n", "2", "--reward", "myreward:nothing", "--smc", "2"]) == 2
    assert "cannot load the reward 'myreward:nothing'" in capsys.readouterr().err


def test_rewards_see_a_record_up_to_its_first_eos():
    from ddlm.guidance.steer import texts_of

    tok = build_tokenizer("char", "abc", specials=True)
    model = SequenceModel(RunConfig(model=ModelConfig(n_layers=1, d_model=16, n_heads=2, max_len=6)), tok)
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    rows = torch.tensor([[a, b, tok.eos_id, a, a, tok.pad_id], [b, b, b, b, b, b]])
    assert texts_of(model, rows) == ["ab", "bbbbbb"]
