"""SequenceModel.generate's arguments: a prompt with fixed positions, fixed without a mask, one row or n rows,
the length taken from fixed, one-line errors for every bad input; batches; the step cap; the recorded seed."""

from __future__ import annotations

import pytest
import torch

import ddlm
from ddlm import SequenceModel
from ddlm import pipeline
from ddlm.errors import UserError


def _lord(model, length=16, at=6, free=0):
    fixed = torch.full((length,), free, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.bool)
    fixed[at: at + 4], mask[at: at + 4] = model.encode("Lord"), True
    return fixed, mask


def test_prompt_and_fixed_positions_combine(tiny_run):
    _, model = tiny_run
    fixed, mask = _lord(model)
    out = model.generate(n=3, length=16, steps=16, prompt="And", fixed=fixed, fixed_mask=mask, seed=1)
    assert all(t.startswith("And") and t[6:10] == "Lord" for t in out.texts), out.texts


def test_prompt_and_fixed_may_agree_but_not_disagree(tiny_run):
    _, model = tiny_run
    fixed, mask = _lord(model, at=0)  # "Lord" at 0..3
    out = model.generate(n=2, length=16, steps=8, prompt="Lo", fixed=fixed, fixed_mask=mask, seed=0)
    assert all(t.startswith("Lord") for t in out.texts)
    with pytest.raises(UserError, match="prompt and fixed disagree at position 0") as e:
        model.generate(n=2, length=16, prompt="And", fixed=fixed, fixed_mask=mask)
    assert "\n" not in str(e.value)


def test_fixed_without_mask_takes_negative_entries_as_free(tiny_run):
    _, model = tiny_run
    fixed, _ = _lord(model, free=-1)
    out = model.generate(n=2, steps=16, fixed=fixed, seed=2)
    assert out.tokens.shape == (2, 16)
    assert all(t[6:10] == "Lord" for t in out.texts)
    assert not (out.tokens < 0).any() and not (out.tokens == model.process.mask_id).any()
    everything = model.generate(n=1, fixed=model.encode("In the beginning"), seed=0)  # no -1: all kept
    assert everything.texts == ["In the beginning"]


def test_length_comes_from_fixed(tiny_run):
    _, model = tiny_run
    fixed, mask = _lord(model, length=12, at=2)
    out = model.generate(n=2, steps=12, fixed=fixed, fixed_mask=mask, seed=0)
    assert out.tokens.shape == (2, 12) and all(t[2:6] == "Lord" for t in out.texts)
    with pytest.raises(UserError, match="fixed has 12 positions but length is 16"):
        model.generate(n=2, length=16, fixed=fixed, fixed_mask=mask)


def test_one_row_is_shared_and_n_rows_are_per_sample(tiny_run):
    _, model = tiny_run
    fixed, mask = _lord(model)
    out = model.generate(n=3, steps=8, fixed=fixed[None], fixed_mask=mask, seed=0)  # (1, L) row, (L,) mask
    assert all(t[6:10] == "Lord" for t in out.texts)
    rows = torch.stack([model.encode(w * 4) for w in ("abcd", "efgh", "ijkl")])  # (3, 16)
    mask3 = torch.zeros(3, 16, dtype=torch.bool)
    mask3[:, :4] = True
    out = model.generate(n=3, steps=8, fixed=rows, fixed_mask=mask3, seed=0, batch_size=2)  # rows cross batches
    assert [t[:4] for t in out.texts] == ["abcd", "efgh", "ijkl"]
    with pytest.raises(UserError, match="fixed has 2 rows but n is 3") as e:
        model.generate(n=3, fixed=rows[:2], fixed_mask=mask3[:2])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"fixed_mask": torch.ones(16, dtype=torch.bool)}, "fixed_mask was given without fixed"),
    ({"fixed": torch.zeros(16)}, "integer token ids"),
    ({"fixed": torch.zeros(1, 2, 16, dtype=torch.long)}, r"shape \(L,\) or \(n, L\)"),
    ({"fixed": [[1, 2], [3]]}, "a tensor or a list of token ids"),
    ({"fixed": torch.zeros(16, dtype=torch.long), "fixed_mask": torch.ones(8, dtype=torch.bool)},
     "fixed has 16 positions but fixed_mask has 8"),
    ({"fixed": torch.zeros(16, dtype=torch.long), "fixed_mask": torch.full((16,), 2)}, "fixed_mask must be booleans"),
    ({"fixed": torch.full((16,), 10_000)}, "fixed tokens must be in 0.."),
    ({"prompt": 5}, "prompt must be a text"),
    ({"n": 0}, "n .the number of samples. must be a positive whole number"),
    ({"batch_size": 0}, "batch_size must be a positive whole number"),
    ({"steps": 0}, "steps must be a positive whole number"),
    ({"length": 2.5}, "length must be a positive whole number"),
    ({"seed": -1}, "seed must be a whole number"),
    ({"temperature": -1.0}, r"temperature must be in \[0, 100\]"),
    ({"planner_options": ["gumbel=1"]}, "planner_options must be a dict"),
    ({"sampler": "planned", "planner": "top_prob", "planner_options": {"tau": 1}},
     "planner top_prob does not take option.s. tau; its options: gumbel, schedule"),
    ({"sampler": "planned", "planner_options": {"schedule": "sqrt"}}, "schedule must be one of linear, cosine"),
    ({"planner_options": {"gumbel": 0.5}}, "the ancestral sampler takes no planner options"),
])
def test_bad_arguments_are_one_line_user_errors(tiny_run, kwargs, message):
    _, model = tiny_run
    with pytest.raises(UserError, match=message) as e:
        model.generate(**{"n": 2, **kwargs})
    assert "\n" not in str(e.value)


def test_batches_give_the_same_samples_as_iter_generate_and_bound_the_sampler(tiny_run, monkeypatch):
    _, model = tiny_run
    sizes = []
    real = model.family.sample
    monkeypatch.setattr(model.family, "sample", lambda net, proc, n, *a, **k: sizes.append(n) or real(net, proc, n, *a, **k))
    out = model.generate(n=5, length=16, steps=8, seed=3, batch_size=2)
    assert sizes == [2, 2, 1] and out.tokens.shape == (5, 16) and len(out.texts) == 5
    parts = list(model.iter_generate(n=5, length=16, steps=8, seed=3, batch_size=2))
    assert [len(p.texts) for p in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p.tokens for p in parts]), out.tokens)
    assert sum(p.nfe for p in parts) == out.nfe and all(p.seed == 3 for p in parts)
    sizes.clear()
    whole = model.generate(n=5, length=16, steps=8, seed=3)  # default batch 64: one call
    assert sizes == [5] and whole.tokens.shape == (5, 16)


def test_a_result_too_large_for_memory_is_refused_but_streaming_is_not(tiny_run, monkeypatch):
    _, model = tiny_run
    monkeypatch.setattr(pipeline, "memory_bytes", lambda: 2**30)  # a 1 GiB machine: 512 MiB allowed
    with pytest.raises(UserError, match="GiB for the result") as e:
        model.generate(n=10**8, length=16)
    assert "\n" not in str(e.value)
    parts = model.iter_generate(n=10**8, length=16, steps=2, batch_size=4)  # nothing kept: allowed
    assert next(parts).tokens.shape == (4, 16)
    parts.close()
    with pytest.raises(UserError, match="use a smaller batch size"):
        model.iter_generate(n=10**8, length=16, batch_size=10**7)


def test_steps_are_capped_at_the_positions_to_decode(tiny_run, monkeypatch):
    _, model = tiny_run
    out = model.generate(n=2, length=8, steps=128, seed=0)
    assert out.nfe <= 8
    out = model.generate(n=2, length=8, steps=128, prompt="And ", seed=0)
    assert out.nfe <= 4
    steps = []
    real = model.family.sample
    monkeypatch.setattr(model.family, "sample", lambda *a, **k: steps.append(k["steps"]) or real(*a, **k))
    model.generate(n=2, length=40, steps=128, stride=8, seed=0)  # context 16: windows 16 + 8 + 8 + 8 new
    assert steps == [16, 8, 8, 8]
    steps.clear()
    model.generate(n=2, length=16, steps=5, seed=0)  # fewer steps than positions: as asked
    assert steps == [5]
    steps.clear()
    model.generate(n=2, length=8, steps=32, sampler="remask", seed=0)  # re-masking revises: every step kept
    assert steps == [32]


def test_rdm_routing_that_renoises_keeps_its_steps(tiny_run, monkeypatch):
    _, mdlm = tiny_run
    steps = []
    for condition, expected in (("cond", 32), ("none", 8)):
        cfg = ddlm.apply_overrides(mdlm.cfg, ["process.name=rdm-absorbing", f"process.routing_condition={condition}"])
        model = SequenceModel(cfg, mdlm.tokenizer)
        real = model.family.sample
        monkeypatch.setattr(model.family, "sample", lambda *a, real=real, **k: steps.append(k["steps"]) or real(*a, **k))
        model.generate(n=1, length=8, steps=32, sampler="routing", seed=0)
        assert steps[-1] == expected, condition
    model.generate(n=1, length=8, steps=32, sampler="ancestral", seed=0)  # never re-noises: capped
    assert steps[-1] == 8


def test_seed_is_random_unless_given_and_recorded(tiny_run):
    _, model = tiny_run
    a, b = model.generate(n=2, length=16, steps=8), model.generate(n=2, length=16, steps=8)
    assert isinstance(a.seed, int) and isinstance(b.seed, int) and a.seed != b.seed
    again = model.generate(n=2, length=16, steps=8, seed=a.seed)
    assert again.seed == a.seed and again.texts == a.texts


def test_autoregressive_rows_keep_their_own_prompts(tiny_run):
    _, mdlm = tiny_run
    cfg = ddlm.apply_overrides(mdlm.cfg, ["process.name=ar"])
    model = SequenceModel(cfg, mdlm.tokenizer)
    rows = torch.stack([model.encode("And God"), model.encode("The Lord")[:7]])  # (2, 7)
    fixed = torch.cat([rows, torch.full((2, 9), -1)], dim=1)  # (2, 16): a 7-token prefix per row
    out = model.generate(n=2, fixed=fixed, seed=0)
    assert out.texts[0].startswith("And God") and out.texts[1].startswith("The Lor")
    with pytest.raises(UserError, match="can only continue a prefix"):
        model.generate(n=1, fixed=torch.tensor([-1, 5, -1, -1]))
