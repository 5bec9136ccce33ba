"""Classifier-free guidance (guidance/cfg.py) on an exact two-class toy oracle."""

import pytest
import torch

from ddlm.errors import UserError
from ddlm.guidance import ClassifierFreeGuidance, Conditioned, guide
from ddlm.sampling.core import Hooks
from ddlm.sampling.loop import sample_masked
from ddlm.sampling.planners import get_planner

from ddlm.guidance.toys import build, table

V, L = 3, 3


def _sample(net, proc, n, steps, seed, labels=None, w=None, rule="ancestral"):
    g = torch.Generator().manual_seed(seed)
    backbone = net if labels is None else Conditioned(net, labels)
    hooks = None if w is None else Hooks(logits_transform=ClassifierFreeGuidance(net, proc, w))
    planner = get_planner("random") if rule == "planned" else None
    return sample_masked(backbone, proc, n, L, steps, rule=rule, planner=planner, generator=g, hooks=hooks)


@pytest.mark.parametrize("rule", ["ancestral", "planned"])
def test_scale_zero_is_the_unconditional_sampler_and_one_the_conditional(rule):
    net, proc = build(V, L)
    labels = torch.tensor([0, 1] * 10)
    plain = _sample(net, proc, 20, 4, 3, rule=rule).tokens  # no label: the mixture (null label)
    assert torch.equal(_sample(net, proc, 20, 4, 3, labels, 0.0, rule).tokens, plain)
    cond = _sample(net, proc, 20, 4, 3, labels, rule=rule).tokens
    assert torch.equal(_sample(net, proc, 20, 4, 3, labels, 1.0, rule).tokens, cond)
    assert not torch.equal(cond, plain)  # the labels do change the samples


def test_conditional_sampling_reproduces_each_label_distribution():
    """Exact oracle, one position per step (planned, steps = L): each label's samples follow p_c (chi-square at
    the 0.1% level), and not the other label's table."""
    net, proc = build(V, L)
    n = 6000
    for c, toy in enumerate(net.toys):
        out = _sample(net, proc, n, L, 10 + c, torch.full((n,), c), rule="planned")
        stat, crit = toy.chi_square(out.tokens)
        assert stat < crit, (c, stat, crit)
        other = net.toys[1 - c].chi_square(out.tokens)
        assert other[0] > other[1]


@pytest.mark.parametrize("w", [0.5, 2.0, 3.0])
def test_one_step_guidance_samples_the_product_of_experts(w):
    """One step from all-MASK draws every position independently from its guided marginal, so the samples
    follow prod_l p_u(x_l)^(1-w) p_c(x_l)^w / Z_l, computed here from the toys' exact marginals (chi-square)."""
    net, proc = build(V, L)
    n = 20000
    out = _sample(net, proc, n, 1, 7, torch.zeros(n, dtype=torch.long), w)
    mask = torch.full((1, L), proc.mask_id)
    pu = net.mix.posterior_marginals(mask, proc.mask_id)[0]  # (L, V)
    pc = net.toys[0].posterior_marginals(mask, proc.mask_id)[0]
    q = pu ** (1 - w) * pc ** w
    q = q / q.sum(-1, keepdim=True)  # (L, V) the guided marginals
    support = net.mix.support  # (V^L, L)
    expected = q[torch.arange(L), support].prod(-1)  # (V^L,)
    stat, crit = table(expected, V, L).chi_square(out.tokens)
    assert stat < crit, (stat, crit)
    assert table(net.toys[0].p, V, L).chi_square(out.tokens)[0] > crit  # not the plain conditional


def test_guidance_counts_its_second_call():
    net, proc = build(V, L)
    cfg = ClassifierFreeGuidance(net, proc, 2.0)
    g = torch.Generator().manual_seed(0)
    out = sample_masked(Conditioned(net, torch.zeros(5, dtype=torch.long)), proc, 5, L, 4, generator=g,
                        hooks=Hooks(logits_transform=cfg))
    assert cfg.nfe == out.nfe  # one null-label call per conditional call
    assert net.calls == 2 * out.nfe


def test_guide_keeps_impossible_tokens_impossible_and_normalises():
    u = torch.log(torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64))
    c = torch.log(torch.tensor([[0.2, 0.0, 0.8]], dtype=torch.float64))
    g = guide(u, c, 2.0)
    assert torch.isneginf(g[0, 1:]).all() and g[0, 0] == 0.0  # only token 0 is possible under both
    u2 = torch.log(torch.tensor([0.25, 0.75], dtype=torch.float64))
    c2 = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    q = guide(u2, c2, 3.0).exp()  # 0.25^-2 0.5^3 : 0.75^-2 0.5^3 = 9 : 1
    assert torch.allclose(q, torch.tensor([0.9, 0.1], dtype=torch.float64))


@pytest.mark.parametrize("w", [-1.0, float("nan"), float("inf"), True, "2"])
def test_bad_scales_are_one_line_errors(w):
    net, proc = build(V, L)
    with pytest.raises(UserError, match="guidance scale"):
        ClassifierFreeGuidance(net, proc, w)


def test_prompt_guidance_samples_the_product_of_prompted_and_unprompted_marginals():
    """Prompt guidance (no label): the conditional pass sees the prompt, the second pass sees it masked. One
    step from all-MASK after a prompt at position 0 draws each free position from
    p(x_l | x_0 = a)^w p(x_l)^(1-w) / Z_l, both exact marginals of the unconditional toy (chi-square)."""
    from ddlm.guidance.steer import Steering

    net, proc = build(V, L)
    n, w, a = 20000, 2.0, 1

    class Model:  # what Steering reads of a SequenceModel
        family = type("F", (), {"causal": False, "sample": staticmethod(sample_masked)})()
        process, tokenizer = proc, type("T", (), {"eos_id": None, "pad_id": None})()
        cfg = type("C", (), {"model": type("M", (), {"n_classes": 0, "class_names": ()})()})()

    steer = Steering(Model(), n, {"rule": "ancestral"}, guidance=w, prompted=True)
    steer.begin(0, torch.Generator().manual_seed(5))
    fixed = torch.tensor([[a, 0, 0]])
    fixed_mask = torch.tensor([[True, False, False]])
    g = torch.Generator().manual_seed(5)
    out = steer.sample(lambda net_, rows, f, m, hooks: sample_masked(net_, proc, rows, L, 1, fixed=f, fixed_mask=m,
                                                                    generator=g, hooks=hooks),
                       net, n, fixed, fixed_mask)
    assert (out.tokens[:, 0] == a).all() and out.nfe == 2  # one step, and the second (prompt-masked) pass
    mask = torch.full((1, L), proc.mask_id)
    prompted = mask.clone()
    prompted[0, 0] = a
    pu = net.mix.posterior_marginals(mask, proc.mask_id)[0]  # (L, V) without the prompt
    pc = net.mix.posterior_marginals(prompted, proc.mask_id)[0]  # (L, V) given x_0 = a
    q = pc ** w * pu ** (1 - w)
    q = q / q.sum(-1, keepdim=True)
    for pos in (1, 2):
        counts = torch.bincount(out.tokens[:, pos], minlength=V).double()
        expected = q[pos].double() * n
        stat = float(((counts - expected) ** 2 / expected).sum())
        assert stat < 13.82, (pos, stat)  # chi-square, 2 degrees of freedom, 0.1%
        plain = pc[pos].double() * n  # and not the prompted marginal itself (w = 1)
        assert float(((counts - plain) ** 2 / plain).sum()) > 13.82


def test_guidance_without_a_label_needs_a_prompt():
    from ddlm.guidance.steer import Steering

    net, proc = build(V, L)

    class Model:
        family = type("F", (), {"causal": False, "sample": staticmethod(sample_masked)})()
        process = proc
        cfg = type("C", (), {"model": type("M", (), {"n_classes": 0, "class_names": ()})()})()

    with pytest.raises(UserError, match="a class label .* or a prompt"):
        Steering(Model(), 4, {"rule": "ancestral"}, guidance=2.0)
