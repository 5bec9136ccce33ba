"""Planners on hand-written probabilities: each score picks what its definition says."""

import math

import pytest
import torch

from ddlm.errors import UserError
from ddlm.sampling.planners import (
    PLANNERS, ConfidencePlanner, RDMPlanner, TopMarginPlanner, TopProbPlanner, get_planner,
    neg_entropy_scores, top_k_masked, top_margin_scores, top_prob_scores, commit_counts, unmask_counts,
    unmask_counts_batch,
)

# Three positions over three tokens where the three scores disagree:
#   X = (.50, .40, .10): top_prob .50 (best), margin .10,        entropy .943
#   Y = (.45, .30, .25): top_prob .45,        margin .15 (best), entropy 1.067
#   Z = (.49, .49, .02): top_prob .49,        margin .00,        entropy .777 (lowest)
PROBS = torch.tensor([[0.50, 0.40, 0.10], [0.45, 0.30, 0.25], [0.49, 0.49, 0.02]])
X, Y, Z = 0, 1, 2


def lp(probs):
    return torch.log(torch.as_tensor(probs, dtype=torch.float64)).float()[None]  # (1, L, V)


def chosen(select):
    return torch.nonzero(select[0]).flatten().tolist()


def chi2(counts, probs):
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_scores_match_their_definitions():
    torch.testing.assert_close(top_prob_scores(lp(PROBS))[0], torch.tensor([0.50, 0.45, 0.49]))
    torch.testing.assert_close(top_margin_scores(lp(PROBS))[0], torch.tensor([0.10, 0.15, 0.00]),
                               atol=1e-6, rtol=0)
    want = torch.tensor([-entropy(p) for p in PROBS.tolist()])
    torch.testing.assert_close(neg_entropy_scores(lp(PROBS))[0], want)


@pytest.mark.parametrize("name, order", [
    ("top_prob", [X, Z, Y]),      # .50 > .49 > .45
    ("top_margin", [Y, X, Z]),    # .15 > .10 > .00
    ("entropy", [Z, X, Y]),       # .777 < .943 < 1.067
])
def test_each_scorer_orders_the_positions_as_defined(name, order):
    planner = get_planner(name)
    masked = torch.ones(1, 3, dtype=torch.bool)
    for k in (1, 2, 3):
        assert chosen(planner(lp(PROBS), masked, torch.tensor([k]))) == sorted(order[:k])
    # take away the winner: the runner-up is chosen
    masked[0, order[0]] = False
    assert chosen(planner(lp(PROBS), masked, torch.tensor([1]))) == [order[1]]


def test_rdm_scores_the_proposed_token():
    cand = torch.tensor([[2, 0, 2]])  # p = .10, .45, .02
    sel = get_planner("rdm")(lp(PROBS), torch.ones(1, 3, dtype=torch.bool), torch.tensor([1]), candidates=cand)
    assert chosen(sel) == [Y]
    cand = torch.tensor([[0, 2, 1]])  # p = .50, .25, .49
    sel = get_planner("rdm")(lp(PROBS), torch.ones(1, 3, dtype=torch.bool), torch.tensor([2]), candidates=cand)
    assert chosen(sel) == [X, Z]
    with pytest.raises(ValueError, match="candidates") as e:  # a sampler's bug, not a user's mistake
        get_planner("rdm")(lp(PROBS), torch.ones(1, 3, dtype=torch.bool), torch.tensor([1]))
    assert not isinstance(e.value, UserError)


def test_ties_go_to_the_lowest_index():
    logp = torch.full((1, 6, 4), -math.log(4.0))  # every position equally (un)sure
    masked = torch.tensor([[False, True, True, False, True, True]])
    for name in ("top_prob", "top_margin", "entropy"):
        assert chosen(get_planner(name)(logp, masked, torch.tensor([2]))) == [1, 2]


def test_neg_inf_logprobs_give_no_nans():
    # zero-probability tokens, a one-hot position, and an rdm candidate of probability 0
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    logp = lp(probs)
    assert torch.isneginf(logp).any()
    for f in (top_prob_scores, top_margin_scores, neg_entropy_scores):
        assert not torch.isnan(f(logp)).any()
    torch.testing.assert_close(top_margin_scores(logp)[0], torch.tensor([0.0, 1.0, 0.2]), atol=1e-6, rtol=0)
    torch.testing.assert_close(neg_entropy_scores(logp)[0, :2], torch.tensor([-math.log(2), 0.0]))
    masked = torch.ones(1, 3, dtype=torch.bool)
    cand = torch.tensor([[2, 1, 0]])  # log p = -inf, -inf, log .2: two -inf scores still count
    sel = get_planner("rdm")(logp, masked, torch.tensor([3]), candidates=cand)
    assert chosen(sel) == [0, 1, 2]
    sel = get_planner("rdm")(logp, masked, torch.tensor([2]), candidates=cand)
    assert chosen(sel) == [0, 2]  # the finite one, then the lowest-index -inf


def test_margin_is_exact_for_near_ties():
    # float64 log-probabilities are scored in float64: a 2e-9 margin survives (float32 would round it away)
    p1, p2 = 0.5 + 1e-9, 0.5 - 1e-9
    logp = torch.tensor([[[math.log(p1), math.log(p2), -math.inf]]], dtype=torch.float64)
    assert top_margin_scores(logp).item() == pytest.approx(2e-9, rel=1e-4)
    p1, p2 = 0.5 + 1e-4, 0.5 - 1e-4  # float32 log-probabilities: still a few digits
    logp = torch.tensor([[[math.log(p1), math.log(p2)]]])
    assert top_margin_scores(logp).item() == pytest.approx(2e-4, rel=1e-2)


@pytest.mark.parametrize("name", ["random", "top_prob", "top_margin", "entropy", "rdm",
                                  "top_prob+gumbel", "rdm+temperature"])
def test_selection_is_an_exact_size_subset_of_masked(name):
    g = torch.Generator().manual_seed(0)
    base, _, opt = name.partition("+")
    planner = get_planner(base, **({opt: 0.7} if opt else {}))
    B, L, V = 64, 9, 5
    logp = torch.log_softmax(3 * torch.randn(B, L, V, generator=g), -1)
    logp[:, :, 0] = -math.inf  # some -inf everywhere
    logp = torch.log_softmax(logp, -1)
    masked = torch.rand(B, L, generator=g) < 0.6
    masked[0] = False  # a row with nothing masked
    k = torch.randint(0, L + 3, (B,), generator=g)  # includes 0 and k > n_masked
    k[1] = 0
    cand = torch.randint(1, V, (B, L), generator=g)
    sel = planner(logp, masked, k, candidates=cand, generator=g)
    assert sel.dtype == torch.bool and sel.shape == (B, L)
    assert not (sel & ~masked).any()
    assert torch.equal(sel.sum(-1), torch.minimum(k, masked.sum(-1)))
    assert not sel[1].any()
    # the chosen ones are the best scored (no Gumbel): every chosen score >= every unchosen masked score
    if base != "random" and not opt:
        s = planner.score(logp, cand)
        lo = torch.where(sel, s, torch.tensor(math.inf)).amin(-1)
        hi = torch.where(masked & ~sel, s, torch.tensor(-math.inf)).amax(-1)
        assert (lo >= hi).all()


def test_an_int_k_is_accepted_and_bad_k_is_refused():
    masked = torch.ones(2, 3, dtype=torch.bool)
    logp = lp(PROBS).expand(2, 3, 3)
    assert get_planner("top_prob")(logp, masked, 2).sum().item() == 4
    for bad_masked, bad_k in ((masked, torch.tensor([1, -1])), (masked, torch.tensor([1.0, 1.0])), (masked[:, :2], 1)):
        with pytest.raises(ValueError) as e:  # the samplers build these: a bug with a traceback
            get_planner("top_prob")(logp, bad_masked, bad_k)
        assert not isinstance(e.value, UserError)


def test_confidence_threshold():
    masked = torch.ones(1, 3, dtype=torch.bool)
    assert chosen(ConfidencePlanner(0.48)(lp(PROBS), masked, torch.tensor([0]))) == [X, Z]  # .50, .49
    assert chosen(ConfidencePlanner(0.3)(lp(PROBS), masked, torch.tensor([1]))) == [X, Y, Z]  # ignores k
    assert chosen(ConfidencePlanner(0.95)(lp(PROBS), masked, torch.tensor([3]))) == [X]  # at least one
    masked = torch.tensor([[False, True, True]])  # X is confident but already committed
    assert chosen(ConfidencePlanner(0.48)(lp(PROBS), masked, torch.tensor([1]))) == [Z]
    assert chosen(ConfidencePlanner(0.95)(lp(PROBS), masked, torch.tensor([1]))) == [Z]  # .49 > .45
    # a row with nothing masked commits nothing, the other row still gets its most confident one
    logp = lp(PROBS).expand(2, 3, 3)
    masked = torch.tensor([[False, False, False], [True, True, False]])
    sel = ConfidencePlanner(1.0)(logp, masked, torch.tensor([1, 1]))
    assert sel.tolist() == [[False, False, False], [True, False, False]]
    one_hot = torch.log(torch.tensor([[[1.0, 0.0], [0.6, 0.4]]]))
    assert chosen(ConfidencePlanner(1.0)(one_hot, torch.ones(1, 2, dtype=torch.bool), 1)) == [0]


def test_random_planner_is_uniform():
    # 4000 independent rows, 4 of 6 positions masked, pick one: each masked one ~ 1/4 of the time
    B = 4000
    g = torch.Generator().manual_seed(1234)
    masked = torch.tensor([True, False, True, True, False, True]).expand(B, 6)
    sel = get_planner("random")(torch.zeros(B, 6, 3), masked, torch.ones(B, dtype=torch.long), generator=g)
    counts = sel.sum(0)
    assert counts[~masked[0]].sum() == 0
    assert chi2(counts[masked[0]].tolist(), [0.25] * 4) < 16.27  # chi2(3 dof), p = 0.001


@pytest.mark.parametrize("planner, scores", [
    (TopProbPlanner(gumbel=0.5), [0.9, 0.5, 0.34]),   # max_v p at each position
    (RDMPlanner(temperature=1.0), [math.log(0.7), math.log(0.2), math.log(0.1)]),  # log p(candidate)
])
def test_gumbel_picks_with_probability_softmax_of_score_over_coefficient(planner, scores):
    # Gumbel-max: argmax(s + c G) ~ softmax(s / c)
    B = 4000
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.34, 0.33, 0.33]])
    if isinstance(planner, RDMPlanner):
        probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    cand = torch.tensor([0, 0, 0]).expand(B, 3)
    c = planner.gumbel if isinstance(planner, TopProbPlanner) else planner.temperature
    g = torch.Generator().manual_seed(7)
    sel = planner(lp(probs).expand(B, 3, 3), torch.ones(B, 3, dtype=torch.bool), 1, candidates=cand, generator=g)
    want = torch.softmax(torch.tensor(scores, dtype=torch.float64) / c, 0).tolist()
    assert chi2(sel.sum(0).tolist(), want) < 13.82  # chi2(2 dof), p = 0.001


@pytest.mark.parametrize("name, options", [("random", {}), ("top_prob", {"gumbel": 1.0}),
                                           ("entropy", {"gumbel": 0.3}), ("rdm", {"temperature": 2.0})])
def test_seeded_generator_is_deterministic_and_seeds_differ(name, options):
    planner = get_planner(name, **options)
    logp = torch.full((16, 10, 4), -math.log(4.0))
    masked = torch.ones(16, 10, dtype=torch.bool)
    cand = torch.zeros(16, 10, dtype=torch.long)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return planner(logp, masked, 3, candidates=cand, generator=g)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_no_gumbel_is_deterministic_and_draws_nothing():
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    logp = torch.log_softmax(torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(3)), -1)
    masked = torch.ones(4, 7, dtype=torch.bool)
    a = get_planner("top_margin")(logp, masked, 2, generator=g)
    assert torch.equal(g.get_state(), state)
    assert torch.equal(a, get_planner("top_margin")(logp, masked, 2))


def test_top_k_masked_accepts_float64_and_nan_scores():
    scores = torch.tensor([[float("nan"), 1.0, 3.0, 2.0]], dtype=torch.float64)
    masked = torch.tensor([[True, True, False, True]])
    assert chosen(top_k_masked(scores, masked, torch.tensor([3]))) == [0, 1, 3]
    assert chosen(top_k_masked(scores, masked, torch.tensor([2]))) == [1, 3]
    # a masked -inf score still beats an unmasked position of lower index
    scores = torch.tensor([[-math.inf, -math.inf, 1.0, 5.0]])
    masked = torch.tensor([[False, True, True, False]])
    assert chosen(top_k_masked(scores, masked, torch.tensor([2]))) == [1, 2]


# --- how many per step -------------------------------------------------------------------------------


def test_unmask_counts_linear():
    assert unmask_counts(10, 4) == [3, 3, 2, 2]
    assert unmask_counts(8, 4) == [2, 2, 2, 2]
    assert unmask_counts(3, 5) == [1, 1, 1, 0, 0]
    assert unmask_counts(0, 3) == [0, 0, 0]
    assert unmask_counts(7, 1, "cosine") == [7]


@pytest.mark.parametrize("n, steps", [(1000, 10), (256, 64), (81, 20), (5, 12), (4, 4)])
def test_unmask_counts_cosine_follows_maskgit(n, steps):
    counts = unmask_counts(n, steps, "cosine")
    assert len(counts) == steps and sum(counts) == n and min(counts) >= 0
    # remaining masked after step s is floor(n cos(pi/2 s/steps)): each count is within 1 of the exact one
    for s, c in enumerate(counts, start=1):
        exact = n * (math.cos(math.pi / 2 * (s - 1) / steps) - math.cos(math.pi / 2 * s / steps))
        assert abs(c - exact) < 1
    if n >= 1000:
        assert counts[0] < counts[-1] / 5  # few early, many late


def test_unmask_counts_batch_matches_the_list_form():
    n = torch.tensor([0, 1, 17, 100])
    for schedule in ("linear", "cosine"):
        out = unmask_counts_batch(n, 7, schedule)
        assert out.shape == (4, 7)
        assert out.tolist() == [unmask_counts(int(x), 7, schedule) for x in n]


def test_commit_counts_online():
    # linear: ceil(n_masked / steps_left) reproduces unmask_counts exactly
    for n, steps in [(10, 4), (3, 5), (100, 7)]:
        left, got = torch.tensor([n]), []
        for step in range(steps):
            k = commit_counts(left, step, steps)
            got.append(int(k))
            left = left - k
        assert got == unmask_counts(n, steps)
    # cosine: sums to n, commits everything at the last step, never more than is masked
    left, total = torch.tensor([50, 3]), torch.zeros(2, dtype=torch.long)
    for step in range(8):
        k = commit_counts(left, step, 8, "cosine")
        assert (k >= 0).all() and (k <= left).all()
        left, total = left - k, total + k
    assert total.tolist() == [50, 3] and left.tolist() == [0, 0]


@pytest.mark.parametrize("args", [(-1, 4), (5, 0), (5, -2), (5, 4, "sqrt"), (2.5, 4)])
def test_unmask_counts_errors(args):
    with pytest.raises(ValueError) as e:  # internal contract: the sampler validated steps and schedule
        unmask_counts(*args)
    assert not isinstance(e.value, UserError)


# --- registry ----------------------------------------------------------------------------------------


def test_registry_names_reprs_and_dashes():
    assert set(PLANNERS) == {"random", "top_prob", "top_margin", "entropy", "confidence", "rdm"}
    for name in PLANNERS:
        assert get_planner(name).name == name
    assert isinstance(get_planner("top-margin"), TopMarginPlanner)
    assert repr(get_planner("top-margin", gumbel=0.5)) == "TopMarginPlanner(gumbel=0.5)"
    assert repr(get_planner("confidence", threshold=0.8)) == "ConfidencePlanner(threshold=0.8)"
    assert repr(get_planner("random")) == "RandomPlanner()"


def test_get_planner_errors():
    with pytest.raises(UserError, match="top_margin"):  # lists the valid names
        get_planner("margin")
    with pytest.raises(UserError, match="gumbel"):
        get_planner("top_prob", gumbel=-0.1)
    with pytest.raises(UserError, match="tau"):
        get_planner("top_prob", tau=1.0)
    with pytest.raises(UserError):
        get_planner("random", gumbel=1.0)
    with pytest.raises(UserError):
        get_planner("rdm", temperature=-1)
    with pytest.raises(UserError):
        get_planner("rdm", gumbel=1.0)
    for bad in (0, 0.0, -0.5, 1.5, float("nan"), "high"):
        with pytest.raises(UserError):
            get_planner("confidence", threshold=bad)
    assert get_planner("confidence", threshold=1).threshold == 1.0
