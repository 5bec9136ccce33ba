"""The sampling core's hooks (sampling/core.py) on every family's step rule."""

import sys
from pathlib import Path

import pytest
import torch

from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling import options
from ddlm.sampling.core import Hooks, default_propose
from ddlm.sampling.loop import sample_masked
from ddlm.toys import ToyDistribution

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_cases import L, N, build_net  # noqa: E402

SAMPLERS = [("mdlm", "ancestral"), ("mdlm", "planned"), ("mdlm", "remask"), ("d3pm-uniform", "ancestral"),
            ("rdm-absorbing", "routing"), ("rdm-multinomial", "routing"), ("ar", "ancestral")]


def _run(family, sampler, hooks, seed=0, steps=5):
    fam, net = build_net(family)
    opts = options(fam, sampler, "top_margin", steps, 1.0)
    g = torch.Generator().manual_seed(seed)
    return fam.sample(net, fam.process, N, L, generator=g, hooks=hooks, **opts)


@pytest.mark.parametrize("family,sampler", SAMPLERS)
def test_logits_transform_reaches_every_step_rule(family, sampler):
    """Guidance that forbids token 1 (log-probability -inf) leaves no 1 in any family's samples."""
    calls = []

    def forbid(logp, state):
        calls.append(state.step)
        out = logp.clone()
        out[..., 1] = -torch.inf
        return out.log_softmax(-1)

    out = _run(family, sampler, Hooks(logits_transform=forbid))
    assert not (out.tokens == 1).any()
    assert len(calls) == out.nfe  # once per network call
    assert (_run(family, sampler, None).tokens == 1).any()  # without it, the 1s are there


@pytest.mark.parametrize("family,sampler", SAMPLERS)
def test_observer_sees_every_step_and_changes_nothing(family, sampler):
    seen = []
    out = _run(family, sampler, Hooks(observer=lambda s: seen.append((s.step, s.nfe, s.x.clone()))))
    assert [s for s, _, _ in seen] == list(range(len(seen))) and len(seen) == out.nfe
    assert [n for _, n, _ in seen] == list(range(1, out.nfe + 1))
    assert torch.equal(_run(family, sampler, None).tokens, out.tokens)  # observing draws nothing


@pytest.mark.parametrize("family,sampler", SAMPLERS)
def test_propose_may_draw_several_candidates_and_choose(family, sampler):
    """A proposer drawing two candidates per position and keeping the larger token id: the samples shift
    up, and the default proposer (one draw) is what a run without the hook gives."""
    draws = []

    def best_of_two(logp, where, state, draw):
        rows = logp if where is None else logp[where]
        a, b = draw(rows), draw(rows)
        draws.append(2)
        pick = torch.maximum(a, b)
        if where is None:
            return pick
        tokens = state.x.clone() if state.x.shape == where.shape else torch.zeros(where.shape, dtype=torch.long)
        tokens[where] = pick
        return tokens

    plain = _run(family, sampler, None)
    same = _run(family, sampler, Hooks(propose=default_propose))
    assert torch.equal(plain.tokens, same.tokens)
    biased = torch.cat([_run(family, sampler, Hooks(propose=best_of_two), seed=s).tokens for s in range(4)])
    base = torch.cat([_run(family, sampler, None, seed=s).tokens for s in range(4)])
    assert draws and biased.double().mean() > base.double().mean()


def test_stop_freezes_finished_rows_and_ends_the_run():
    """AR with a stop at the first token 3: a stopped row keeps BOS (id V) after its stop; the run ends when
    every row has stopped."""
    fam, net = build_net("ar")
    V = fam.process.vocab_size

    def stop(state):
        return (state.x[:, 1:] == 3).any(-1)

    out = fam.sample(net, fam.process, N, L, temperature=1.0, generator=torch.Generator().manual_seed(0),
                     hooks=Hooks(stop=stop))
    for row in out.tokens.tolist():
        if 3 in row:
            k = row.index(3)
            assert all(v == V for v in row[k + 1:]) and all(v < V for v in row[: k + 1])
        else:
            assert all(v < V for v in row)
    assert out.nfe <= L


def test_stop_on_a_masked_model_keeps_finished_rows_masked_and_skips_them_in_the_cache():
    toy = ToyDistribution(3, 4, seed=0)
    proc = MaskingProcess(3, LogLinear())
    evaluated = []

    class Spy(torch.nn.Module):
        time_conditioned = False

        def __init__(self):
            super().__init__()
            self.inner, self.w = toy.oracle(), torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t=None):
            evaluated.append(len(x))
            return self.inner(x, t)

    # row 0 is finished from the start: it stays all MASK and is never evaluated after the first call
    out = sample_masked(Spy(), proc, 4, 4, 8, cached=True, generator=torch.Generator().manual_seed(0),
                        hooks=Hooks(stop=lambda s: torch.arange(4) == 0))
    assert (out.tokens[0] == proc.mask_id).all() and (out.tokens[1:] < 3).all()
    assert all(n <= 3 for n in evaluated[1:])


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    toy = ToyDistribution(3, 3, seed=0)
    sample_masked(toy.oracle(), MaskingProcess(3, LogLinear()), 2, 3, 4, progress=True)
    assert capsys.readouterr().err == ""
