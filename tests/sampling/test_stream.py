"""SequenceModel.stream: one Step per sampling step, the final step bit-identical to generate for the same seed
(mdlm over two batches, sliding windows, AR with a prompt), masks that only shrink, `new` = what a step
committed, early close stops the worker thread, bad arguments fail at the call."""

from __future__ import annotations

import time

import pytest
import torch

import ddlm
from ddlm import SequenceModel
from ddlm.errors import UserError
from ddlm.sampling.stream import windows


def _check_steps(steps, n, length):
    """Masks shrink step after step; `new` is exactly what left the mask; the last step is final."""
    assert steps[-1].final and not any(s.final for s in steps[:-1])
    assert [s.index for s in steps] == list(range(len(steps)))
    previous = steps[0].masked | steps[0].new
    for s in steps:
        assert s.tokens.shape == s.masked.shape == s.new.shape == (n, length)
        assert not (s.masked & ~previous).any()  # a decided position never returns to the mask
        assert torch.equal(s.new, previous & ~s.masked)
        previous = s.masked
    assert not steps[-1].masked.any()
    nfes = [s.nfe for s in steps]
    assert nfes == sorted(nfes) and nfes[0] >= 1


def test_mdlm_final_step_is_generate_over_two_batches(tiny_run):
    _, model = tiny_run
    kw = dict(n=3, length=16, steps=8, seed=11, batch_size=2, prompt="And")
    out = model.generate(**kw)
    steps = list(model.stream(**kw))
    assert torch.equal(steps[-1].tokens, out.tokens) and steps[-1].texts == out.texts
    assert steps[-1].nfe == out.nfe
    _check_steps(steps, 3, 16)
    # the prompt is never masked; 13 free positions per row are committed over the steps, each exactly once
    assert not steps[0].masked[:, :3].any()
    committed = torch.stack([s.new for s in steps]).sum(0)  # (n, L)
    assert torch.equal(committed, torch.cat([torch.zeros(3, 3), torch.ones(3, 13)], 1).long())
    # batch 0 (rows 0, 1) finishes before batch 1 (row 2) starts
    first_of_batch1 = next(s for s in steps if s.batch == 1)
    assert not first_of_batch1.masked[:2].any() and first_of_batch1.masked[2].any()
    # confidence: a probability where a token was committed by the sampler, NaN where never drawn (the prompt)
    conf = steps[-2].confidence
    drawn = torch.ones(3, 16, dtype=torch.bool)
    drawn[:, :3] = False
    assert torch.isnan(conf[:, :3]).all()
    assert ((conf[drawn] > 0) & (conf[drawn] <= 1)).all()


def test_sliding_windows_final_step_is_generate(tiny_run):
    _, model = tiny_run  # context 16: 40 tokens in windows starting at 0, 8, 16, 24
    assert windows(40, 16, 8) == [0, 8, 16, 24]
    kw = dict(n=2, length=40, steps=4, seed=5)
    out = model.generate(**kw)
    steps = list(model.stream(**kw))
    assert torch.equal(steps[-1].tokens, out.tokens)
    _check_steps(steps, 2, 40)
    # the first window decides columns 0..15 only; the last 8 columns wait for the last window
    assert steps[0].masked[:, 16:].all() and steps[3].masked[:, 32:].all()


def test_ar_final_step_is_generate_one_token_per_step(tiny_run):
    _, mdlm = tiny_run
    model = SequenceModel(ddlm.apply_overrides(mdlm.cfg, ["process.name=ar"]), mdlm.tokenizer).eval()
    kw = dict(n=2, length=12, seed=7, prompt="The")
    out = model.generate(**kw)
    steps = list(model.stream(**kw))
    assert torch.equal(steps[-1].tokens, out.tokens) and steps[-1].texts == out.texts
    _check_steps(steps, 2, 12)
    assert len(steps) == 12 - 3 + 1
    for i, s in enumerate(steps[:-1]):  # left to right: step i commits column 3 + i of every row
        expected = torch.zeros(2, 12, dtype=torch.bool)
        expected[:, 3 + i] = True
        assert torch.equal(s.new, expected)
        assert torch.equal(s.tokens[:, 3 + i], out.tokens[:, 3 + i])


def test_closing_early_stops_the_worker(tiny_run):
    _, model = tiny_run
    stream = model.stream(n=1, length=16, steps=16, seed=0, queue_size=1)
    first = next(stream)
    assert not first.final
    stream.close(timeout=2.0)
    deadline = time.monotonic() + 2.0
    while stream.thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not stream.thread.is_alive()
    assert stream.recorder.index < 16  # it stopped before the end (at most the queue's step ahead)
    assert list(stream) == []


def test_bad_arguments_fail_at_the_call(tiny_run):
    _, model = tiny_run
    with pytest.raises(UserError, match="n \\(the number of samples\\)"):
        model.stream(n=0)
    with pytest.raises(TypeError, match="unexpected"):
        model.stream(n=1, colour="red")
