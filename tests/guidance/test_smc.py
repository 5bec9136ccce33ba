"""SMC steering (guidance/smc.py) on toy oracles."""

import pytest
import torch

from ddlm.guidance import PredictedReward, SMCProposer
from ddlm.guidance.smc import systematic
from ddlm.sampling.core import Hooks
from ddlm.sampling.loop import sample_masked
from ddlm.sampling.planners import get_planner

from ddlm.guidance.toys import build, frequencies, soft_value, tilted

V, L = 3, 3


def _run(net, proc, n, steps, smc, seed=0, rule="ancestral"):
    """n samples: n * K particle rows, one kept per group."""
    g = torch.Generator().manual_seed(seed)
    smc.generator = g
    planner = get_planner("random") if rule == "planned" else None
    out = sample_masked(net, proc, n * smc.K, L, steps, rule=rule, planner=planner, generator=g,
                        hooks=Hooks(propose=smc))
    return smc.select(out.tokens), out


@pytest.mark.parametrize("rule", ["ancestral", "planned"])
def test_one_particle_is_the_plain_sampler_bit_for_bit(rule):
    net, proc = build(V, L)
    value = PredictedReward(net, proc, lambda t: t.sum(-1))
    tokens, out = _run(net, proc, 40, 3, SMCProposer(value, 1, 0.1), seed=2, rule=rule)
    g = torch.Generator().manual_seed(2)
    plain = sample_masked(net, proc, 40, L, 3, rule=rule, planner=get_planner("random") if rule == "planned"
                          else None, generator=g)
    assert torch.equal(tokens, plain.tokens) and value.nfe == 0


def test_a_constant_reward_keeps_the_distribution():
    """Constant reward: every weight stays equal, no group is resampled, and the kept particle is a uniform
    pick among i.i.d. exact samples (planned, steps = L): p itself (chi-square)."""
    net, proc = build(V, L)
    smc = SMCProposer(PredictedReward(net, proc, lambda t: torch.full((len(t),), 2.0)), 4, 0.5)
    tokens, _ = _run(net, proc, 5000, L, smc, seed=3, rule="planned")
    assert smc.resamples == 0
    stat, crit = net.mix.chi_square(tokens)
    assert stat < crit, (stat, crit)


def test_with_the_exact_soft_value_smc_approaches_the_tilted_target():
    """Exact twisting potentials exp(v(x_s) / alpha) / exp(v(x_t) / alpha): the weighted particles target
    p exp(r / alpha) / Z, and the particle kept per group converges to it as K grows (a self-normalised bias of
    O(1/K)). At K = 32 and N = 2000 samples: TV below 0.1, where sampling noise alone has
    E[TV] <= 1/2 sum sqrt(q (1 - q) / N) = 0.034 (measured: TV 0.046 at K = 32, N = 4000; 0.029 at K = 64);
    the plain sampler is 0.58 away, and groups were resampled."""
    net, proc = build(V, L)
    toy, alpha = net.mix, 0.3
    r = torch.zeros(len(toy.p), dtype=torch.float64)
    r[5], r[20] = 1.0, 0.5
    target = tilted(toy, r, alpha)
    smc = SMCProposer(soft_value(toy, r, alpha, proc.mask_id), 32, alpha)
    tokens, _ = _run(net, proc, 2000, L, smc, seed=4, rule="planned")
    tv = 0.5 * (frequencies(toy, tokens) - target).abs().sum().item()
    assert tv < 0.1, tv
    assert smc.resamples > 0


def test_smc_raises_a_rewarded_sequence_with_the_learned_style_value():
    """The default value (reward of the argmax clean sequence) with a 0/1 reward: the target's frequency rises
    well above the plain sampler's (4 particles, ancestral, 4 steps)."""
    net, proc = build(V, L)
    toy = net.mix
    value = PredictedReward(net, proc, lambda t: (toy.index(t) == 5).double())
    tokens, _ = _run(net, proc, 1500, 4, SMCProposer(value, 4, 0.1), seed=5)
    g = torch.Generator().manual_seed(5)
    plain = sample_masked(net, proc, 1500, L, 4, generator=g).tokens
    assert frequencies(toy, tokens)[5] > 2 * frequencies(toy, plain)[5]


def test_systematic_resampling_gives_each_particle_floor_or_ceil_of_k_w():
    w = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]], dtype=torch.float64)
    for u in (0.0, 0.37, 0.999):
        anc = systematic(w, torch.full((2,), u, dtype=torch.float64), 4)  # (2, 4)
        counts = torch.stack([torch.bincount(a, minlength=4) for a in anc]).double()
        assert ((counts >= torch.floor(4 * w)) & (counts <= torch.ceil(4 * w))).all(), (u, counts)
        assert (counts[:, :] * (w == 0)).sum() == 0  # a zero weight is never picked
