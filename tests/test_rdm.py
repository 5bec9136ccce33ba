"""RDM on toys: the reparameterised forward process, the bound and the weights, the routing sampler."""

import math

import pytest
import torch

from ddlm.errors import UserError
from ddlm.objectives.mdlm import MDLMObjective
from ddlm.objectives.rdm import RDMObjective, RDMProcess, draw_steps
from ddlm.processes.d3pm import make_d3pm_process
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling.rdm import sample_rdm
from ddlm.toys import ToyDistribution


@pytest.mark.parametrize("schedule", ["absorbing", "cosine"])
def test_multinomial_route_has_the_uniform_d3pm_marginal(schedule):
    """x_t = b x_0 + (1 - b) u with b ~ Bernoulli(abar_t) is q(x_t | x_0) = x_0 Q_bar_t of D3PM-uniform."""
    V, T, t = 4, 10, 6
    proc = RDMProcess(V, T, "multinomial", schedule)
    d3pm = make_d3pm_process("uniform", V, T, schedule=schedule)
    assert torch.allclose(proc.abar, d3pm.abar)
    x0 = torch.tensor([[0, 1, 2, 3]])
    n = 20000
    g = torch.Generator().manual_seed(0)
    xt, noisy = proc.route(x0.expand(n, -1), torch.full((n,), t), g)
    emp = torch.nn.functional.one_hot(xt, V).double().mean(0)  # (L, V)
    exact = d3pm.q_xt_given_x0(x0, t)[0]
    assert torch.allclose(emp, exact, atol=4 * math.sqrt(0.25 / n))
    assert abs(noisy.double().mean().item() - (1 - proc.abar[t].item())) < 4 * math.sqrt(0.25 / (4 * n))
    assert (xt[~noisy] == x0.expand(n, -1)[~noisy]).all()


def test_absorbing_route_masks_exactly_the_noisy_tokens():
    proc = RDMProcess(3, 8, "absorbing")
    x0 = torch.randint(0, 3, (64, 5), generator=torch.Generator().manual_seed(1))
    xt, noisy = proc.route(x0, torch.full((64,), 4), torch.Generator().manual_seed(2))
    assert torch.equal(xt == proc.mask_id, noisy)
    assert torch.allclose(proc.abar, 1 - torch.arange(9, dtype=torch.float64) / 8)  # 1/(T-t+1): abar = 1 - t/T


def test_weights_follow_the_paper_and_reciprocal_is_the_bound_for_the_linear_schedule():
    T = 10
    t = torch.arange(1, T + 1)
    proc = RDMProcess(5, T, "absorbing")
    assert torch.allclose(RDMObjective(proc, "linear").train_weight(t), 1 - (t - 1).double() / T)
    assert torch.allclose(RDMObjective(proc, "none").train_weight(t), torch.ones(T, dtype=torch.float64))
    recip = RDMObjective(proc, "reciprocal")
    assert torch.allclose(recip.train_weight(t), 1 / t.double())
    # abar_t = 1 - t/T: T * (abar_{t-1} - abar_t) / (1 - abar_t) = T * (1/T) / (t/T) = T/t, i.e. T * reciprocal
    assert torch.allclose(recip.bound_weight(t), T / t.double())
    with pytest.raises(UserError):
        RDMObjective(proc, "quadratic")
    with pytest.raises(UserError):
        RDMProcess(5, 10, "gaussian")


def test_a_schedule_that_never_reaches_pure_noise_is_refused(monkeypatch):
    from ddlm.processes import d3pm_schedules

    monkeypatch.setitem(d3pm_schedules.D3PM_SCHEDULES, "never_ends",
                        lambda steps, process=None: torch.full((steps,), 0.1, dtype=torch.float64))
    with pytest.raises(UserError, match="abar_T"):
        RDMProcess(5, 10, "absorbing", "never_ends")


def test_absorbing_bound_is_mdlms_discrete_elbo_in_expectation():
    """With [MASK] noise RDM's bound is MDLM's discrete-T NELBO (same T, abar_t = alpha(t/T)): compare means."""
    toy = ToyDistribution(3, 3, seed=4)
    oracle = toy.oracle()
    T = 5
    rdm = RDMObjective(RDMProcess(3, T, "absorbing"), "linear")
    mdlm = MDLMObjective(MaskingProcess(3, LogLinear(eps=0.0)), "uniform", discrete_steps=T)
    x = toy.support[[3, 20]].repeat(4000, 1)  # (8000, 3)
    g = torch.Generator().manual_seed(0)
    a = rdm.bound(oracle, x, generator=g).double().view(-1, 2)
    b = mdlm.bound(oracle, x, generator=g).double().view(-1, 2)
    ci = 4 * torch.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
    assert ((a.mean(0) - b.mean(0)).abs() < ci).all(), (a.mean(0), b.mean(0), ci)
    # and the training loss with elbo weights is that bound per token
    out = RDMObjective(rdm.process, "elbo")(oracle, x[:64], torch.Generator().manual_seed(1))
    assert torch.isclose(out["loss"], out["nelbo"])


def test_draw_steps_is_stratified_over_one_to_T():
    t = draw_steps(10, 10, torch.Generator().manual_seed(0))
    assert sorted(t.tolist()) == list(range(1, 11))


@pytest.mark.parametrize("path", ["routing", "planned"])
def test_stochastic_routing_with_oracle_reproduces_the_distribution(path):
    """Theory: one token decoded per step (K = L, linear), decoded tokens final (condition none) and a choice
    of position independent of the proposed tokens (Gumbel noise that swamps the scores) make the sampler a
    random-order autoregressive sampler of the oracle: exact. The planned path is the shared masked loop with
    the rdm planner, which is the same routing."""
    toy = ToyDistribution(3, 3, seed=3)
    proc = RDMProcess(3, 10, "absorbing")
    g = torch.Generator().manual_seed(0)
    route = "stochastic" if path == "routing" else "planned"
    out = sample_rdm(toy.oracle(), proc, 6000, 3, steps=3, route=route, routing_temperature=1e6,
                     condition="none", generator=g)
    stat, crit = toy.chi_square(out.tokens)
    assert stat < crit, (stat, crit)
    assert out.nfe == 3


def test_deterministic_routing_is_not_the_distribution():
    """The counterpart: confident-first routing depends on the proposals, so it is not exact (the test above
    has the power to tell)."""
    toy = ToyDistribution(3, 3, seed=3)
    proc = RDMProcess(3, 10, "absorbing")
    out = sample_rdm(toy.oracle(), proc, 6000, 3, steps=3, route="deterministic", condition="none",
                     generator=torch.Generator().manual_seed(0))
    stat, crit = toy.chi_square(out.tokens)
    assert stat > 3 * crit


class _Spy(torch.nn.Module):
    """Records every x_t a denoiser is asked about."""

    time_conditioned = False

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t=None):
        self.seen.append(x.clone())
        return self.inner(x, t)


@pytest.mark.parametrize("condition", ["cond", "uncond"])
def test_cond_routing_never_renoises_what_an_oracle_is_sure_of(condition):
    """The oracle gives a decoded token probability 1 (score 0, the maximum), so 'cond' never re-noises it: the
    masks only ever shrink. 'uncond' with noisy routing does send decoded tokens back. (Neither is exact: a
    clean token drawn into the cut leaves room for two decodes in one step, see the module docstring.)"""
    toy = ToyDistribution(3, 4, seed=6)
    proc = RDMProcess(3, 10, "absorbing")
    spy = _Spy(toy.oracle())
    sample_rdm(spy, proc, 500, 4, steps=4, route="stochastic", routing_temperature=1e6, condition=condition,
               generator=torch.Generator().manual_seed(1))
    masks = torch.stack([x == proc.mask_id for x in spy.seen])  # (K, B, L)
    renoised = (masks[1:] & ~masks[:-1]).any()
    assert bool(renoised) == (condition == "uncond")


class _Scripted(torch.nn.Module):
    """A denoiser that always proposes token 0, more confidently at position 0 than elsewhere."""

    time_conditioned = False

    def __init__(self, L, S):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.zeros(L, S)
        self.logits[:, 0] = 2.0
        self.logits[0, 0] = 8.0

    def forward(self, x, t=None):
        return self.logits.expand(x.shape[0], -1, -1).clone()


@pytest.mark.parametrize("noise", ["absorbing", "multinomial"])
def test_routing_keeps_fixed_tokens_counts_steps_and_ends_clean(noise):
    proc = RDMProcess(4, 20, noise)
    fixed = torch.tensor([[3, 0, 0, 0, 2, 0]])
    given = torch.tensor([[True, False, False, False, True, False]])
    for condition in ("cond", "uncond", "none"):
        for schedule in ("linear", "cosine"):
            out = sample_rdm(_Scripted(6, proc.n_states), proc, 3, 6, steps=4, temperature=0.0, schedule=schedule,
                             condition=condition, fixed=fixed, fixed_mask=given,
                             generator=torch.Generator().manual_seed(0))
            assert out.nfe == 4
            assert (out.tokens[:, 0] == 3).all() and (out.tokens[:, 4] == 2).all()
            assert (out.tokens[:, [1, 2, 3, 5]] == 0).all()  # greedy proposals, nothing left noisy
