"""ReMDM re-masking (sampling/remask.py) against exact answers on the toy oracle."""

import pytest
import torch

from ddlm.errors import UserError
from ddlm.processes.masking import MaskingProcess
from ddlm.processes.schedules import LogLinear
from ddlm.sampling import options
from ddlm.sampling.core import Hooks
from ddlm.sampling.loop import sample_masked
from ddlm.sampling.planners import parse_planner_options
from ddlm.toys import ToyDistribution

MASK = 3


def _remask_counter():
    """An observer counting committed tokens that went back to MASK, and the states it saw."""
    seen = {"prev": None, "remasked": 0, "calls": 0}

    def observe(state):
        if seen["prev"] is not None:
            seen["remasked"] += int(((seen["prev"] != MASK) & (state.x == MASK)).sum())
        seen["prev"] = state.x.clone()
        seen["calls"] += 1

    return seen, observe


@pytest.mark.parametrize("schedule", ["cap", "rescale", "conf"])
def test_sigma_zero_is_the_ancestral_sampler_token_for_token(schedule):
    """(loop with eta = 0 is the ancestral sampler on its own three-piece alpha, not the model's schedule)"""
    toy = ToyDistribution(3, 4, seed=1)
    proc = MaskingProcess(3, LogLinear())
    fixed, mask = torch.tensor([[0, 2, 0, 0]]), torch.tensor([[False, True, False, False]])
    a = sample_masked(toy.oracle(), proc, 64, 4, 16, fixed=fixed, fixed_mask=mask,
                      generator=torch.Generator().manual_seed(7))
    b = sample_masked(toy.oracle(), proc, 64, 4, 16, rule="remask", remask={"schedule": schedule, "eta": 0.0},
                      fixed=fixed, fixed_mask=mask, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)
    assert a.nfe == b.nfe  # nothing can re-mask, so it stops as early as ancestral


@pytest.mark.slow
@pytest.mark.parametrize("schedule,eta", [("cap", 0.1), ("rescale", 0.3), ("loop", 0.1)])
def test_remasking_with_the_oracle_reproduces_the_distribution(schedule, eta):
    """The moves keep MDLM's marginals q(z_t | x_0), so with an exact denoiser and small steps the samples
    follow the data distribution, although many committed tokens went back to MASK on the way."""
    toy = ToyDistribution(3, 3, seed=3)
    proc = MaskingProcess(3, LogLinear())
    seen, observe = _remask_counter()
    out = sample_masked(toy.oracle(), proc, 3000, 3, 192, rule="remask", remask={"schedule": schedule, "eta": eta},
                        generator=torch.Generator().manual_seed(0), hooks=Hooks(observer=observe))
    stat, crit = toy.chi_square(out.tokens)
    assert stat < crit, (stat, crit)
    assert seen["remasked"] > 1000  # it did re-mask
    assert (out.tokens < 3).all()


@pytest.mark.slow
def test_confidence_remasking_is_not_exact():
    """conf re-masks the least confident tokens first, a choice that depends on the tokens: the chi-square test
    above has the power to see it."""
    toy = ToyDistribution(3, 3, seed=3)
    proc = MaskingProcess(3, LogLinear())
    out = sample_masked(toy.oracle(), proc, 3000, 3, 128, rule="remask", remask={"schedule": "conf"},
                        generator=torch.Generator().manual_seed(0))
    stat, crit = toy.chi_square(out.tokens)
    assert stat > crit


class _Counting(torch.nn.Module):
    time_conditioned = False

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t=None):
        self.calls += 1
        return self.inner(x, t)


@pytest.mark.parametrize("schedule", ["cap", "rescale", "conf", "loop"])
def test_nfe_counts_every_network_call_and_fixed_tokens_stay(schedule):
    toy = ToyDistribution(3, 4, seed=2)
    proc = MaskingProcess(3, LogLinear())
    net = _Counting(toy.oracle())
    fixed, mask = torch.tensor([[2, 0, 0, 1]]), torch.tensor([[True, False, False, True]])
    out = sample_masked(net, proc, 32, 4, 40, rule="remask", remask={"schedule": schedule, "eta": 0.5},
                        fixed=fixed, fixed_mask=mask, generator=torch.Generator().manual_seed(0))
    assert out.nfe == net.calls == 40  # it may re-mask until the end, so it never stops early
    assert (out.tokens[:, 0] == 2).all() and (out.tokens[:, 3] == 1).all()
    assert (out.tokens != MASK).all()
    anc = sample_masked(_Counting(toy.oracle()), proc, 32, 4, 40, fixed=fixed, fixed_mask=mask,
                        generator=torch.Generator().manual_seed(0))
    assert anc.nfe < 40  # ancestral stops once nothing is masked


def test_remask_options_reach_the_rule_and_bad_ones_are_user_errors():
    from ddlm.config import ProcessConfig
    from ddlm.families import build_family

    fam = build_family(ProcessConfig(name="mdlm"), 5)
    opts = options(fam, "remask", "random", 8, 1.0, planner_options={"schedule": "cap", "eta": "0.2"})
    assert opts["rule"] == "remask" and opts["remask"] == {"schedule": "cap", "eta": "0.2"}
    with pytest.raises(UserError, match="does not take option"):
        options(fam, "remask", "random", 8, 1.0, planner_options={"gumbel": 1})
    with pytest.raises(UserError, match="re-masking schedule"):
        options(fam, "remask", "random", 8, 1.0, planner_options={"schedule": "nope"})
    with pytest.raises(UserError, match="eta must be in"):
        options(fam, "remask", "random", 8, 1.0, planner_options={"eta": 2})
    d3pm = build_family(ProcessConfig(name="d3pm-uniform", steps=10), 5)
    with pytest.raises(UserError):
        options(d3pm, "remask", "random", 8, 1.0)
    assert parse_planner_options(["schedule=loop", "eta=0.02"], sampler="remask") == {"schedule": "loop",
                                                                                       "eta": "0.02"}
