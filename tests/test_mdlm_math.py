"""Exact checks of masked diffusion on toy distributions: marginals, the ELBO, the samplers."""

import math

import pytest
import torch

from ddlm.objectives.mdlm import MDLMObjective, draw_t
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import SCHEDULES, LogLinear
from ddlm.sampling.loop import sample_masked
from ddlm.toys import ToyDistribution


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_derivative_matches_finite_difference(name):
    s = SCHEDULES[name]()
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.dalpha(t), fd, rtol=1e-4, atol=1e-6)
    a = s.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert a[0] > 0.99 and a[1] < 0.01  # from data to (almost) all-mask
    assert (s.dalpha(t) < 0).all()


def test_forward_marginal_matches_monte_carlo():
    proc = MaskingProcess(5, LogLinear())
    x0 = torch.tensor([[0, 1, 2, 3, 4, 4]])
    t = torch.tensor([0.37])
    exact = proc.marginal(x0, t)[0]  # (L, V + 1)
    g = torch.Generator().manual_seed(0)
    n = 20000
    xt = proc.sample_xt(x0.expand(n, -1), t.expand(n), g)
    emp = torch.nn.functional.one_hot(xt, 6).double().mean(0)
    assert torch.allclose(emp, exact, atol=4 * math.sqrt(0.25 / n))
    assert torch.allclose(exact.sum(-1), torch.ones(6, dtype=torch.float64))


def test_draw_t_low_discrepancy():
    g = torch.Generator().manual_seed(0)
    t = draw_t(8, "stratified", g)
    assert sorted((t * 8).floor().long().tolist()) == list(range(8))  # one t per stratum
    t = draw_t(8, "antithetic", g)
    assert torch.allclose(t[:4] + t[4:], torch.ones(4))


def _bound_stats(obj, oracle, x, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    vals = torch.cat([obj.bound(oracle, x.expand(1000, -1), generator=g).double() for _ in range(n // 1000)])
    return vals.mean().item(), 1.96 * vals.std().item() / math.sqrt(len(vals))


def test_continuous_elbo_equals_exact_nll_with_oracle():
    """For absorbing diffusion with the exact denoiser the continuous-time NELBO equals -log p(x)."""
    toy = ToyDistribution(3, 3, seed=1)
    proc = MaskingProcess(3, LogLinear(eps=0.0))
    obj = MDLMObjective(proc, "stratified", t_eps=1e-4)
    oracle = toy.oracle()
    for x in toy.support[[0, 5, 13, 26]]:
        mean, ci = _bound_stats(obj, oracle, x[None], 20000)
        exact = toy.nll(x).item()
        assert abs(mean - exact) < max(ci, 0.01 * exact), (mean, ci, exact)


def test_discrete_elbo_upper_bounds_entropy_and_tightens_with_T():
    """In discrete time the factorised denoiser defines a model p_theta != p, so the bound holds in
    expectation over the data: E_p[NELBO_T] >= E_p[-log p_theta] >= H(p), and the gap closes as T grows."""
    toy = ToyDistribution(3, 3, seed=2)
    oracle = toy.oracle()
    entropy = (toy.p * -toy.p.log()).sum().item()
    gaps = []
    for T in (1, 2, 16):
        obj = MDLMObjective(MaskingProcess(3, LogLinear(eps=0.0)), "stratified", discrete_steps=T)
        g = torch.Generator().manual_seed(T)
        vals = torch.cat([obj.bound(oracle, toy.sample(1000, g), generator=g).double() for _ in range(40)])
        ci = 1.96 * vals.std().item() / math.sqrt(len(vals))
        assert vals.mean().item() > entropy - ci
        gaps.append(vals.mean().item() - entropy)
    assert gaps[0] > 0.1  # one step predicts all tokens independently: a real gap
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True])
def test_ancestral_sampler_with_oracle_reproduces_distribution(cached):
    toy = ToyDistribution(3, 3, seed=3)
    proc = MaskingProcess(3, LogLinear())
    g = torch.Generator().manual_seed(0)
    out = sample_masked(toy.oracle(), proc, 6000, 3, 512, cached=cached, generator=g)
    stat, crit = toy.chi_square(out.tokens)
    assert stat < crit, (stat, crit)
    assert (out.tokens < 3).all()


def test_cached_and_uncached_samplers_agree_token_for_token():
    toy = ToyDistribution(4, 3, seed=4)
    proc = MaskingProcess(4, LogLinear())
    runs = []
    for cached in (False, True):
        g = torch.Generator().manual_seed(123)
        runs.append(sample_masked(toy.oracle(), proc, 16, 3, 256, cached=cached, generator=g))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert 200 < runs[0].nfe <= 256  # stops once every row is complete
    assert runs[1].nfe < 60  # at most one call per change of some row (16 rows x 3 tokens)
    assert runs[1].row_evals <= 16 * 3  # a row of 3 tokens: before each of at most 3 changes, never after the last


def test_infilling_keeps_fixed_positions_and_samples_the_conditional():
    toy = ToyDistribution(3, 3, seed=5)
    proc = MaskingProcess(3, LogLinear())
    fixed = torch.tensor([[0, 2, 0]])
    fixed_mask = torch.tensor([[False, True, False]])
    g = torch.Generator().manual_seed(0)
    out = sample_masked(toy.oracle(), proc, 4000, 3, 64, cached=True, fixed=fixed, fixed_mask=fixed_mask,
                        generator=g)
    assert (out.tokens[:, 1] == 2).all()
    # the conditional p(x | x^1 = 2) restricted to the support with middle token 2
    cond = toy.support[:, 1] == 2
    sub = ToyDistribution.__new__(ToyDistribution)
    sub.V, sub.L, sub.support = 3, 3, toy.support
    sub.p = torch.where(cond, toy.p, torch.zeros_like(toy.p))
    sub.p = sub.p / sub.p.sum()
    stat, crit = sub.chi_square(out.tokens)
    assert stat < crit, (stat, crit)


def test_categorical_sampling_frequencies_and_greedy():
    from ddlm.sampling.categorical import sample_categorical

    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = sample_categorical(p.log().expand(40000, 3), 1.0, g)
    freq = torch.bincount(draws, minlength=3).double() / 40000
    assert torch.allclose(freq, p, atol=0.01)
    assert (sample_categorical(p.log()[None], 0.0) == 2).all()
    # low temperature sharpens: the mode gets more than its share
    assert (sample_categorical(p.log().expand(4000, 3), 0.5, g) == 2).double().mean() > 0.6
