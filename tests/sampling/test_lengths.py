"""Generation that stops (sampling/stops.py, generate(max_length=...)): exact oracles of a toy whose records
have several lengths (<eos> then <pad>), sampled by MDLM (ancestral, planned) and AR, checked by chi-square
on the lengths and on the whole joint; <eos> never before text; sliding blocks stop."""

import sys
from pathlib import Path

import pytest
import torch

from ddlm.config import apply_overrides, load_preset
from ddlm.data.tokenizers import CharTokenizer
from ddlm.errors import UserError
from ddlm.pipeline import SequenceModel
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling.blockwise import sample_blockwise
from ddlm.sampling.core import Hooks
from ddlm.sampling.denoiser import SampleOutput
from ddlm.sampling.loop import sample_masked
from ddlm.sampling.stops import cut_at_end, eos_stop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_models import length_chi_square, record_toy, toy_model  # noqa: E402


def _check_ends(toy, tokens, lengths):
    """Each row: `lengths` real tokens, then one end token (<eos>, or <pad> where a sampler put it first), then
    only <pad>: no <eos> before or inside the text, nothing after the end."""
    pos = torch.arange(tokens.shape[1])[None]
    assert ((tokens < toy.R) == (pos < lengths[:, None])).all()  # real tokens exactly before the end
    assert ((tokens == toy.eos_id).sum(-1) <= 1).all()
    assert ((tokens == toy.pad_id) | (pos <= lengths[:, None])).all()


def _check_rows(toy, tokens, lengths):
    """Every row is a record of the toy's layout: text, one <eos>, <pad> after; lengths = its text tokens."""
    _check_ends(toy, tokens, lengths)
    assert torch.equal(lengths, toy.lengths(tokens))
    assert ((tokens == toy.eos_id).sum(-1) == 1).all()


def test_cut_at_end_pads_after_the_first_end_and_counts_text_tokens():
    eos, pad, bos, mask = 3, 4, 2, 5
    x = torch.tensor([[0, 1, eos, 0, eos], [bos, 1, 1, 0, 1], [1, pad, 0, eos, mask], [eos, mask, 1, 1, 1]])
    out, lengths = cut_at_end(x, eos, pad, (bos,))
    assert out.tolist() == [[0, 1, eos, pad, pad], [bos, 1, 1, 0, 1], [1, pad, pad, pad, pad],
                            [eos, pad, pad, pad, pad]]
    assert lengths.tolist() == [2, 4, 1, 0]


def test_stop_hook_finishes_a_row_only_when_everything_before_its_eos_is_decided():
    class State:
        pass

    s = State()
    s.x = torch.tensor([[0, 3, 5, 5], [5, 3, 0, 0], [0, 1, 0, 1], [1, 5, 3, 3]])
    s.noisy = s.x == 5
    assert eos_stop(3)(s).tolist() == [True, False, False, False]


@pytest.mark.slow
def test_mdlm_ancestral_with_the_stop_hook_reproduces_lengths_and_joint():
    """Ancestral sampling (1000 steps, so that two positions rarely unmask in one step) with the core's stop
    hook: a row ends as soon as its first <eos> and all before it are decided, which leaves the distribution
    of the kept record exact; chi-square on lengths and on the joint, and fewer row evaluations than
    decoding every position."""
    toy = record_toy()
    proc = MaskingProcess(toy.V, LogLinear())
    runs = {}
    for stop in (False, True):
        g = torch.Generator().manual_seed(0)
        hooks = Hooks(stop=eos_stop(toy.eos_id)) if stop else None
        runs[stop] = sample_masked(toy.oracle(), proc, 4000, toy.L, 1000, cached=True, generator=g, hooks=hooks)
    tokens, lengths = cut_at_end(runs[True].tokens, toy.eos_id, toy.pad_id, (toy.bos_id,))
    _check_ends(toy, tokens, lengths)
    # ancestral steps may unmask two positions at once, drawn independently (e.g. <pad> then <eos>): rare at
    # 1000 steps, and outside the toy's support; the rest follow the toy exactly
    ok = toy.lengths(tokens) == lengths
    assert (~ok).sum() <= 0.002 * len(ok), int((~ok).sum())
    tokens, lengths = tokens[ok], lengths[ok]
    _check_rows(toy, tokens, lengths)
    stat, crit = length_chi_square(lengths, toy.length_p)
    assert stat < crit, (stat, crit)
    stat, crit = toy.chi_square(tokens)
    assert stat < crit, (stat, crit)
    assert (runs[True].tokens == proc.mask_id).any()  # some rows really stopped with positions undecided
    assert runs[True].row_evals < 0.95 * runs[False].row_evals  # 18,483 against 19,955 rows evaluated


@pytest.mark.parametrize("family,sampler", [("mdlm", "planned"), ("ar", None)])
def test_generate_max_length_reproduces_the_toys_records(family, sampler):
    """generate(max_length=L) through the pipeline, with the exact denoiser (MDLM committing one random
    position per step, exact) or the exact next-token model (AR, stopping at <eos>)."""
    toy = record_toy()
    model = toy_model(toy, family)
    kw = {"sampler": sampler, "planner": "random"} if sampler else {}
    out = model.generate(n=3000, max_length=toy.L, steps=toy.L, seed=0, batch_size=3000, **kw)
    _check_rows(toy, out.tokens, out.lengths)
    assert [len(t) for t in out.texts] == out.lengths.tolist()  # one character per token, specials dropped
    assert all("<" not in t for t in out.texts)
    stat, crit = length_chi_square(out.lengths, toy.length_p)
    assert stat < crit, (stat, crit)
    stat, crit = toy.chi_square(out.tokens)
    assert stat < crit, (stat, crit)
    if family == "ar":  # stops at the longest row's <eos>: 1 + max length draws, not the whole window
        assert out.nfe == 1 + int(out.lengths.max())


def test_ar_stops_when_every_row_has_its_eos():
    toy = record_toy({2: 1.0}, length=6)
    out = toy_model(toy, "ar").generate(n=8, max_length=6, seed=0)
    assert out.lengths.tolist() == [2] * 8 and out.nfe == 3  # two tokens and <eos>: three calls of six


def test_rows_that_do_not_end_within_max_length_are_drawn_again():
    """Records of 1, 2 or 4 tokens (p 0.2, 0.3, 0.5) sampled within max_length=3: a 4-token record cannot end
    there, so every row is drawn until it ends (up to REDRAWS more times): the returned records are the toy's
    conditioned on length <= 2, {1: 0.4, 2: 0.6} (chi-square), and about 0.5^(1 + REDRAWS) of the rows are
    still cut. (The redraw is the pipeline's, whatever the family; the toy's exact masked denoiser needs its
    whole window, so AR's exact next-token model carries the test.)"""
    from ddlm.sampling.stops import REDRAWS

    toy = record_toy()
    out = toy_model(toy, "ar").generate(n=2000, max_length=3, seed=0, batch_size=2000)
    ended = (out.tokens == toy.eos_id).any(-1)
    expected_cut = 0.5 ** (1 + REDRAWS)  # 0.031: 62 of 2000, sd ~8
    assert abs(int((~ended).sum()) - 2000 * expected_cut) < 5 * (2000 * expected_cut) ** 0.5
    assert (out.lengths[~ended] == 3).all()  # a row still unended is cut at max_length
    stat, crit = length_chi_square(out.lengths[ended], {1: 0.4, 2: 0.6})
    assert stat < crit, stat
    assert out.nfe > 3  # the redraws' calls are counted: more than one draw's three


def test_sliding_blocks_stop_once_every_row_has_produced_eos():
    """max_length beyond the context: every toy record ends within the first window, so no second window
    runs; the first window is the one a max_length of one context samples, token for token."""
    toy = record_toy()
    model = toy_model(toy, "mdlm")
    long = model.generate(n=64, max_length=4 * toy.L, seed=3, sampler="planned", planner="random")
    short = model.generate(n=64, max_length=toy.L, seed=3, sampler="planned", planner="random")
    assert long.tokens.shape == (64, 4 * toy.L)
    assert torch.equal(long.tokens[:, :toy.L], short.tokens) and (long.tokens[:, toy.L:] == toy.pad_id).all()
    assert long.nfe == short.nfe and torch.equal(long.lengths, short.lengths)


def test_blockwise_samples_only_unfinished_rows_and_ends_when_all_are_done():
    """Row r produces <eos> in window r: later windows sample fewer rows, and the run stops at the last."""
    eos, calls = 9, []

    def window(n, width, fixed, mask, prefix):
        k = len(calls)
        calls.append(n)
        tokens = torch.where(mask, fixed, torch.full_like(fixed, 1))
        if k < 4:  # in window k, the k-th unfinished row (the first, as finished rows are gone) ends
            tokens[0, -1] = eos
        return SampleOutput(tokens, 1, n, 0.0)

    out = sample_blockwise(window, 4, 100, 8, 4, stop=lambda x: (x == eos).any(-1))
    assert calls == [4, 3, 2, 1] and out.nfe == 4 and out.row_evals == 10
    assert ((out.tokens == eos).sum(-1) == 1).all()


def test_max_length_needs_a_model_with_eos_and_a_positive_count():
    stream = SequenceModel(apply_overrides(load_preset("tiny"), ["model.max_len=8"]), CharTokenizer("ab"))
    records = toy_model(record_toy())
    for model, bad, match in [(stream, {"max_length": 8}, "no <eos>.*--records"),
                              (records, {"max_length": 0}, "positive"),
                              (records, {"max_length": 4, "length": 4}, "not both")]:
        with pytest.raises(UserError, match=match) as e:
            model.generate(n=1, **bad)
        assert "\n" not in str(e.value)


# ---- infilling a span of unknown length (ddlm/infill.py) ----------------------------------------------------
def test_infill_finds_the_only_length_with_mass():
    """Records are 'a' + 2 tokens + 'b' (one length has all the mass): a[MASK]b tried at lengths 1..3 keeps 2,
    and the fill follows the toy's conditional."""
    toy = record_toy({4: 1.0}, length=6)
    model = toy_model(toy)
    kw = dict(n=200, seed=0, sampler="planned", planner="random", batch_size=200)
    out = model.generate(infill="a[MASK]b", span_lengths="1:3", **kw)
    assert out.span_lengths.tolist() == [2] * 200
    assert all(len(t) == 4 and t[0] == "a" and t[-1] == "b" for t in out.texts)
    _check_rows(toy, out.tokens, out.lengths)
    # the middle two tokens against p(x_1, x_2 | x_0 = a, x_3 = b) of the toy
    given = (toy.support[:, 0] == 0) & (toy.support[:, 3] == 1)
    p = toy.p[given] / toy.p[given].sum()
    codes = toy.support[given][:, 1] * 2 + toy.support[given][:, 2]  # (4,)
    seen = torch.bincount(out.tokens[:, 1] * 2 + out.tokens[:, 2], minlength=4).double()[codes]
    expected = p * 200
    assert (((seen - expected) ** 2) / expected).sum() < 16.27  # chi-square, 3 dof, upper 0.1%
    # cost: one bound call per length (its BOUND_DRAWS rows in one batch), then one infill run of 2 steps
    fixed = model.generate(infill="a[MASK:2]b", **kw)
    assert fixed.span_lengths is None and fixed.nfe == 2
    assert out.nfe == 3 + 2


def test_infill_by_filling_every_length_also_finds_it():
    """score="fill" (the D3PM/RDM way): every length filled, each sample keeps its most likely filled text."""
    from ddlm.infill import BOUND_DRAWS, generate_infill

    toy = record_toy({4: 1.0}, length=6)
    out = generate_infill(toy_model(toy), "a[MASK]b", "1:3", n=50, seed=0, sampler="planned", planner="random",
                          batch_size=50, score="fill")
    assert out.span_lengths.tolist() == [2] * 50
    _check_rows(toy, out.tokens, out.lengths)
    assert out.nfe == 1 + 2 + 3 + 3 * BOUND_DRAWS  # a span of k tokens takes k steps; a bound call per draw


def test_infill_keeps_the_most_likely_length_whatever_its_fills():
    """Records after 'a': length 2 (p 0.1, 2 fills) or 3 (p 0.9, 4 fills). The marginal score keeps span
    length 2 (record length 3) for every sample, though each of its fills may be less likely than the best
    1-token fill; its bound is the toy's -log p(x_0 = a, length 3) (exact denoiser: the NELBO's mean)."""
    from ddlm.infill import layout, marginal_scores, parse_template

    toy = record_toy({2: 0.1, 3: 0.9}, length=6)
    model = toy_model(toy)
    out = model.generate(n=100, infill="a[MASK]", span_lengths="1:4", seed=0)
    assert out.span_lengths.tolist() == [2] * 100
    segs = parse_template(model, "a[MASK]")
    rows = [layout(segs, k, 6, toy.eos_id, toy.pad_id) for k in (1, 2)]
    scores = marginal_scores(model, torch.stack([f for f, _ in rows]), ~torch.stack([m for _, m in rows]), 0)
    exact = [-torch.log(toy.p[(toy.support[:, 0] == 0) & (toy.lengths(toy.support) == n)].sum()) for n in (2, 3)]
    assert scores[1] < scores[0]
    assert abs(scores[1] - exact[1]) < 1.0 and abs(scores[0] - exact[0]) < 2.0, (scores, exact)  # 8 noise draws


@pytest.mark.parametrize("template,kw,match", [
    ("no span here", {}, "at least one"), ("[MASK] and [MASK]", {}, "at most one"),
    ("a[MASK:0]", {}, "positive whole"), ("a[MASK:x]", {}, "positive whole"),
    ("a[MASK]", {"span_lengths": "3:1"}, "LO <= HI"), ("a[MASK]", {"span_lengths": "x"}, "LO:HI"),
    ("a[MASK]", {"length": 6}, "drop length"), ("aaaaaa[MASK]", {}, "context"),
])
def test_infill_bad_input_is_one_line(template, kw, match):
    model = toy_model(record_toy(length=6))
    with pytest.raises(UserError, match=match) as e:
        model.generate(n=1, infill=template, **kw)
    assert "\n" not in str(e.value)


def test_unknown_length_needs_eos_and_ar_cannot_infill():
    stream = SequenceModel(apply_overrides(load_preset("tiny"), ["model.max_len=8"]), CharTokenizer("ab"))
    with pytest.raises(UserError, match="records"):
        stream.generate(infill="a[MASK]b")
    assert len(stream.generate(n=2, infill="a[MASK:3]b", seed=0).texts[0]) == 5  # a known length needs no <eos>
    with pytest.raises(UserError, match="autoregressive"):
        toy_model(record_toy(), "ar").generate(infill="a[MASK]")


@pytest.mark.parametrize("family,sampler", [("d3pm-absorbing", None), ("d3pm-uniform", None),
                                            ("rdm-absorbing", "routing"), ("mdlm", "remask"), ("mdlm", "cached")])
@pytest.mark.parametrize("max_length", [16, 40])  # one window; sliding blocks
def test_every_family_returns_text_then_one_end_then_padding(family, sampler, max_length):
    """Untrained models put <eos>, <pad> and <bos> anywhere: whatever they draw, a returned row is text, one
    end token, <pad> after it, and its length counts the text tokens (what `texts` decode)."""
    from ddlm.families import configure

    ov = [f"process.name={family}", "model.max_len=16", "process.steps=20"]
    model = SequenceModel(configure(apply_overrides(load_preset("tiny"), ov), ov), CharTokenizer("ab", specials=True))
    out = model.generate(n=16, max_length=max_length, seed=0, sampler=sampler, steps=16)
    tok = model.tokenizer
    assert out.tokens.shape == (16, max_length)
    x, pos = out.tokens, torch.arange(max_length)[None]
    ends = (x == tok.eos_id) | (x == tok.pad_id)
    end = torch.where(ends.any(-1), ends.int().argmax(-1), max_length)[:, None]  # (16, 1) first end token
    assert ((x == tok.pad_id) | (pos <= end)).all()  # nothing but <pad> after the end
    assert ((x == tok.eos_id).sum(-1) <= 1).all()
    assert torch.equal(out.lengths, ((x < tok.n_real) & (pos < end)).sum(-1))  # text tokens (a stray <bos>: none)
    assert [len(t) for t in out.texts] == out.lengths.tolist()
    assert (out.lengths < max_length).any()  # some rows really ended early
