"""Exact checks of the D3PM transition-matrix processes on 3-6 token vocabularies, in float64."""

import math

import pytest
import torch

from ddlm.errors import UserError
from ddlm.processes.d3pm import (D3PM_PROCESSES, AbsorbingD3PM, GaussianD3PM, NearestNeighbourD3PM, UniformD3PM,
                                 cooccurrence_embedding, knn_rate_matrix, make_d3pm_process)
from ddlm.processes.d3pm_schedules import D3PM_SCHEDULES, rank_one_mutual_information

F64 = torch.float64
V, T = 4, 6
# points on a line with distinct gaps, so that the 1-nearest-neighbour graph is known by hand
LINE = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=F64)


def build(name, schedule=None, vocab=V, steps=T, **kw):
    if name == "nearest_neighbour":
        emb = torch.randn(vocab, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
        kw = {"embedding": emb, "k": 2, **kw}
    return make_d3pm_process(name, vocab, steps, schedule=schedule, **kw)


ALL = [(n, s) for n in D3PM_PROCESSES for s in D3PM_SCHEDULES]


def explicit_cumulative(Q):
    """Q_bar_t = Q_1 ... Q_t by plain products, (T + 1, S, S)."""
    out = [torch.eye(Q.shape[-1], dtype=F64)]
    for t in range(1, Q.shape[0]):
        out.append(out[-1] @ Q[t])
    return torch.stack(out)


def mutual_info(qbar, p0):
    """I(x_t; x_0) from the joint table, written independently of the library."""
    joint = p0[:, None] * qbar[: p0.shape[0]]
    pt = joint.sum(0)
    outer = p0[:, None] * pt[None, :]
    mask = joint > 0
    return float((joint[mask] * torch.log(joint[mask] / outer[mask])).sum())


@pytest.mark.parametrize("name,schedule", ALL)
def test_rows_sum_to_one_and_cumulative_is_the_product(name, schedule):
    p = build(name, schedule)
    Q, Qbar = p.matrices()
    S = p.n_states
    assert Q.shape == Qbar.shape == (T + 1, S, S)
    assert torch.equal(Q[0], torch.eye(S, dtype=F64)) and torch.allclose(Qbar[0], torch.eye(S, dtype=F64))
    assert (Q >= -1e-15).all() and (Qbar >= -1e-15).all()
    assert torch.allclose(Q.sum(-1), torch.ones(T + 1, S, dtype=F64), atol=1e-12)
    assert torch.allclose(Qbar.sum(-1), torch.ones(T + 1, S, dtype=F64), atol=1e-12)
    assert torch.allclose(Qbar, explicit_cumulative(Q), atol=1e-12)
    if name in ("gaussian", "nearest_neighbour"):  # doubly stochastic (symmetric), uniform prior is stationary
        assert torch.allclose(Q, Q.transpose(1, 2), atol=1e-12)
        assert torch.allclose(Q.sum(-2), torch.ones(T + 1, S, dtype=F64), atol=1e-12)
    pi = p.prior()
    assert torch.allclose(pi @ Q[3], pi, atol=1e-12)


def test_rank_one_and_gaussian_match_the_papers_formulas():
    u = UniformD3PM(V, T, schedule="cosine")
    a = AbsorbingD3PM(V, T)
    g = GaussianD3PM(V, T, schedule="linear")
    for t in range(1, T + 1):
        b = float(u.betas[t - 1])
        assert torch.allclose(u.step_matrix(t), (1 - b) * torch.eye(V, dtype=F64) + b / V, atol=1e-15)
        b = 1.0 / (T - t + 1)  # the absorbing schedule
        expect = (1 - b) * torch.eye(V + 1, dtype=F64)
        expect[:, V] += b
        assert torch.allclose(a.step_matrix(t), expect, atol=1e-15)
        b = float(g.betas[t - 1])
        Qg = torch.zeros(V, V, dtype=F64)
        norm = sum(math.exp(-4 * n * n / ((V - 1) ** 2 * b)) for n in range(-(V - 1), V))
        for i in range(V):
            for j in range(V):
                if i != j:
                    Qg[i, j] = math.exp(-4 * (i - j) ** 2 / ((V - 1) ** 2 * b)) / norm
            Qg[i, i] = 1 - Qg[i].sum()
        assert torch.allclose(g.step_matrix(t), Qg, atol=1e-14)
    # the cosine schedule ends exactly at the stationary distribution
    assert float(u.abar[-1]) == 0.0 and float(a.abar[-1]) == 0.0


def test_nearest_neighbour_graph_rate_matrix_and_matrix_exponential():
    # 1-NN on the line 0, 1, 3, 6, 10: 0->1, 1->0, 2->1, 3->2, 4->3
    A = torch.zeros(5, 5, dtype=F64)
    for i, j in [(0, 1), (1, 0), (2, 1), (3, 2), (4, 3)]:
        A[i, j] = 1.0
    A = (A + A.T) / 2
    R = A - torch.diag(A.sum(1))
    assert torch.allclose(knn_rate_matrix(LINE, 5, 1), R)
    p = NearestNeighbourD3PM(5, 4, schedule="linear", embedding=LINE, k=1)
    for t in range(1, 5):
        assert torch.allclose(p.step_matrix(t), torch.linalg.matrix_exp(p.betas[t - 1] * R), atol=1e-13)


def simulate_chain(Q, starts, n, gen):
    """Run x_0 -> x_1 -> ... -> x_T step by step with the one-step matrices; (T + 1, len(starts) * n)."""
    x = starts.repeat_interleave(n)
    path = [x]
    for t in range(1, Q.shape[0]):
        probs = Q[t][x]
        u = torch.rand(x.shape, generator=gen, dtype=F64)
        x = (probs.cumsum(-1) <= u[:, None]).sum(-1).clamp_max(Q.shape[-1] - 1)
        path.append(x)
    return torch.stack(path)


def assert_frequencies(samples, probs, n):
    """Empirical frequencies (per start) within 5 binomial standard errors of probs (starts, S)."""
    S = probs.shape[-1]
    freq = torch.stack([torch.bincount(s, minlength=S) for s in samples.view(probs.shape[0], n)]).to(F64) / n
    se = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * se + 1e-12).all(), (freq, probs)


@pytest.mark.parametrize("name", list(D3PM_PROCESSES))
def test_marginals_match_monte_carlo_of_the_chain(name):
    p = build(name, "cosine", steps=5)
    Q, _ = p.matrices()
    n, gen = 20000, torch.Generator().manual_seed(0)
    starts = torch.arange(V)
    path = simulate_chain(Q, starts, n, gen)
    for t in range(1, 6):
        exact = p.q_xt_given_x0(starts[:, None], t)[:, 0]  # (V, S)
        assert_frequencies(path[t], exact, n)
        # and the library's own sampler draws from the same marginal
        x0 = starts.repeat_interleave(n)[:, None]
        xt = p.sample_xt(x0, torch.full((V * n,), t), generator=gen)[:, 0]
        assert_frequencies(xt, exact, n)


@pytest.mark.parametrize("name", list(D3PM_PROCESSES))
def test_posterior_is_bayes_rule(name):
    p = build(name, "cosine")
    Q, _ = p.matrices()
    Qbar = explicit_cumulative(Q)
    S = p.n_states
    for t in range(1, T + 1):
        x0, xt = torch.meshgrid(torch.arange(V), torch.arange(S), indexing="ij")
        x0, xt = x0.reshape(-1), xt.reshape(-1)
        ok = Qbar[t][x0, xt] > 0
        x0, xt = x0[ok], xt[ok]
        # q(x_{t-1} = j | x_t, x_0) = q(x_t | x_{t-1} = j) q(x_{t-1} = j | x_0) / q(x_t | x_0)
        bayes = Q[t][:, xt].T * Qbar[t - 1][x0] / Qbar[t][x0, xt][:, None]
        onehot = torch.nn.functional.one_hot(x0, S).to(F64)[:, None]
        got = p.q_posterior(xt[:, None], onehot, torch.full((x0.numel(),), t))[:, 0]
        assert torch.allclose(got, bayes, atol=1e-12)
        # with a distribution over x_0 (x0-parameterisation, paper eq. 4): prop. to sum_x0 q(x_{t-1}, x_t | x0) p~(x0)
        pt = torch.softmax(torch.randn(x0.numel(), V, dtype=F64, generator=torch.Generator().manual_seed(t)), -1)
        joint = Q[t][:, xt].T * (pt @ Qbar[t - 1][:V])
        got = p.q_posterior(xt[:, None], pt[:, None], torch.full((x0.numel(),), t))[:, 0]
        assert torch.allclose(got, joint / joint.sum(-1, keepdim=True), atol=1e-12)


@pytest.mark.parametrize("name", list(D3PM_PROCESSES))
def test_mutual_information_schedule_falls_linearly(name):
    steps = 10
    unigram = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
    p = build(name, "mutual_information", steps=steps, schedule_kwargs={"unigram": unigram})
    _, Qbar = p.matrices()
    H = float(-(unigram * unigram.log()).sum())
    info = [mutual_info(Qbar[t], unigram) for t in range(steps + 1)]
    assert info[0] == pytest.approx(H, abs=1e-12)
    for t in range(1, steps):
        assert info[t] == pytest.approx(H * (1 - t / steps), abs=1e-6 * H)
    if name != "gaussian":  # the Gaussian chain cannot be fully mixed in one step; it only gets close
        assert info[steps] == pytest.approx(0.0, abs=1e-6 * H)
    else:
        assert info[steps] < info[steps - 1]
    if name == "absorbing":  # the paper's remark: for absorbing, MI schedule == 1 / (T - t + 1)
        assert torch.allclose(p.betas, 1.0 / (steps - torch.arange(1, steps + 1, dtype=F64) + 1))


def test_rank_one_mutual_information_matches_the_matrix_formula():
    p0 = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=F64)
    for proc in (UniformD3PM(V, 3), AbsorbingD3PM(V, 3)):
        for abar in (0.0, 0.1, 0.5, 0.93, 1.0):
            qbar = abar * torch.eye(proc.n_states, dtype=F64) + (1 - abar) * proc.m[None]
            got = float(rank_one_mutual_information(torch.tensor(abar, dtype=F64), proc.m, p0))
            assert got == pytest.approx(mutual_info(qbar, p0), abs=1e-12)


def test_cooccurrence_embedding_finds_distributional_neighbours():
    # tokens 0 and 1 are always followed by 4, tokens 2 and 3 by 5: {0, 1} and {2, 3} share contexts
    g = torch.Generator().manual_seed(0)
    first = torch.randint(4, (100, 20), generator=g)
    ids = torch.stack([first, torch.where(first < 2, 4, 5)], -1).reshape(100, 40)
    emb = cooccurrence_embedding(ids, 6)
    assert emb.shape == (6, 6)
    p = NearestNeighbourD3PM(6, 3, corpus_ids=ids, k=1)
    assert p.R[0, 1] > 0 and p.R[2, 3] > 0 and p.R[0, 2] == 0 and p.R[1, 3] == 0


def test_large_vocabulary_closed_forms_need_no_matrices():
    big = 4096
    for cls in (UniformD3PM, AbsorbingD3PM):
        p = cls(big, 1000)
        x0 = torch.randint(big, (2, 3), generator=torch.Generator().manual_seed(0))
        q = p.q_xt_given_x0(x0, torch.tensor([1, 700]))
        assert q.shape == (2, 3, p.n_states)
        assert torch.allclose(q.sum(-1), torch.ones(2, 3, dtype=F64))
        xt = p.sample_xt(x0, 500)
        post = p.q_posterior(xt, torch.nn.functional.one_hot(x0, p.n_states), 500)
        assert torch.allclose(post.sum(-1), torch.ones(2, 3, dtype=F64))
        assert float(p.prior_kl(x0).abs().max()) < 1e-12
    with pytest.raises(UserError, match="GiB"):
        GaussianD3PM(big, 1000)


def test_user_errors():
    with pytest.raises(UserError, match="uniform"):
        make_d3pm_process("gauss", 4, 5)
    with pytest.raises(UserError, match="mutual_information"):
        UniformD3PM(4, 5, schedule="cos")
    with pytest.raises(UserError, match="beta_T = 1"):
        AbsorbingD3PM(4, 5, schedule="linear", schedule_kwargs={"beta_end": 0.5})
    with pytest.raises(UserError, match="embedding"):
        NearestNeighbourD3PM(4, 5)
    with pytest.raises(ValueError, match="0..5") as e:  # steps come from the objective: a bug, not a user's
        UniformD3PM(4, 5).q_xt_given_x0(torch.zeros(1, 2, dtype=torch.long), 6)
    assert not isinstance(e.value, UserError)
    with pytest.raises(UserError):
        UniformD3PM(4, 5, schedule="linear", schedule_kwargs={"bogus": 1})


def test_nearest_neighbour_exponential_through_eigendecomposition_matches_matrix_exp():
    from ddlm.processes.d3pm import NearestNeighbourD3PM

    torch.manual_seed(0)
    p = NearestNeighbourD3PM(12, 4, schedule="linear", embedding=torch.randn(12, 3), k=3)
    rates = torch.tensor([0.0, 1e-3, 0.5, 7.0, 300.0], dtype=torch.float64)
    ref = torch.linalg.matrix_exp(rates[:, None, None] * p.R)
    torch.testing.assert_close(p.expm(rates), ref, atol=1e-10, rtol=0)
    assert (p.expm(rates) >= 0).all()
    torch.testing.assert_close(p.expm(rates).sum(-1), torch.ones(5, 12, dtype=torch.float64))
