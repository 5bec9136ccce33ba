"""D3PM's objective and exact bound against an oracle denoiser for a known toy distribution (V = 3, L <= 3)."""

import itertools
import math

import pytest
import torch

from ddlm.errors import UserError
from ddlm.objectives.d3pm import D3PMObjective, _stride_plan, exact_vlb
from ddlm.processes.d3pm import D3PM_PROCESSES, make_d3pm_process

F64 = torch.float64
V = 3


def toy_distribution(L, seed=0):
    """An explicit, correlated p(x) over all V^L sequences: (N, L) sequences and (N,) probabilities."""
    X = torch.tensor(list(itertools.product(range(V), repeat=L)))
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(X.shape[0], generator=g, dtype=F64)
    return X, torch.softmax(logits, 0)


def build(name, steps, schedule=None):
    kw = {}
    if name == "nearest_neighbour":
        kw = {"embedding": torch.tensor([[0.0], [1.0], [3.0]], dtype=F64), "k": 1}
    if schedule is None and name == "gaussian":
        schedule = "mutual_information"
    return make_d3pm_process(name, V, steps, schedule=schedule, **kw)


class Oracle:
    """The exact denoiser: p(x_0 | x_t) by Bayes over the whole table, returned as per-position marginals
    (what a factorised denoiser can express) in logits (B, L, S) for the x0-parameterisation."""

    def __init__(self, process, X, p):
        self.process, self.X, self.p = process, X, p
        T = process.steps
        # q(x_t^l = s | x_0 = X[n]) for every step: (T + 1, N, L, S)
        self.q = torch.stack([process.q_xt_given_x0(X, t) for t in range(T + 1)])
        self.calls = 0

    def __call__(self, x_t, t):
        self.calls += 1
        s = torch.round(t.to(F64) * self.process.steps).long()  # (B,)
        N, L = self.X.shape
        q = self.q[s]  # (B, N, L, S)
        lik = q.gather(-1, x_t[:, None, :, None].expand(-1, N, -1, 1))[..., 0].prod(-1)  # (B, N)
        post = self.p * lik
        z = post.sum(-1, keepdim=True)
        post = torch.where(z > 0, post / z.clamp_min(1e-300), torch.full_like(post, 1.0 / N))  # impossible x_t
        marg = torch.einsum("bn,nlv->blv", post, torch.nn.functional.one_hot(self.X, V).to(F64))
        logits = torch.zeros(x_t.shape + (self.process.n_states,), dtype=F64)
        logits[..., :V] = torch.log(marg)
        return logits


def model_log_likelihood(model, process, X):
    """Exact -log p_theta(x) of the model's own reverse chain by the forward algorithm over all S^L states."""
    L, S, T = X.shape[1], process.n_states, process.steps
    C = torch.tensor(list(itertools.product(range(S), repeat=L)))  # (M, L)
    pos = torch.arange(L)
    pi = process.prior()[C].prod(-1)  # p(x_T) (M,)
    for t in range(T, 1, -1):
        steps = torch.full((C.shape[0],), t)
        logp = process.reverse_log_probs(model(C, steps / T), C, steps)  # (M, L, S)
        P = logp[:, pos, C].sum(-1).exp()  # (M, M): p(x_{t-1} = C[j] | x_t = C[i])
        # states the chain cannot be in (e.g. a real token at t = T for absorbing) have an undefined row
        undefined = torch.isnan(P).any(1)
        assert (pi[undefined] == 0).all()
        pi = pi @ torch.where(undefined[:, None], 0.0, P)
    steps = torch.ones(C.shape[0], dtype=torch.long)
    logp0 = process.reverse_log_probs(model(C, steps / T), C, steps)[..., :V]  # (M, L, V)
    P0 = logp0[:, pos, X].sum(-1).exp()  # (M, N)
    return -torch.log(pi @ P0)


@pytest.mark.parametrize("name", list(D3PM_PROCESSES))
def test_exact_vlb_bounds_the_models_likelihood_and_the_data_entropy(name):
    X, p = toy_distribution(L=2)
    proc = build(name, steps=4)
    oracle = Oracle(proc, X, p)
    vlb = exact_vlb(oracle, proc, X)  # (N,)
    nll_model = model_log_likelihood(oracle, proc, X)
    assert torch.isfinite(vlb).all()
    assert (vlb >= nll_model - 1e-10).all()  # the bound holds for every x, against the model's own p(x)
    assert abs(float(torch.exp(-nll_model).sum()) - 1.0) < 1e-10  # the model is a distribution
    entropy = float(-(p * p.log()).sum())
    assert float((p * vlb).sum()) >= entropy  # and on average against the data (cross-entropy >= entropy)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_absorbing_single_token_bound_is_exact(steps):
    # with L = 1 the oracle is the true reverse process of absorbing diffusion, so the bound is tight
    X, p = toy_distribution(L=1, seed=3)
    proc = build("absorbing", steps)
    vlb = exact_vlb(Oracle(proc, X, p), proc, X)
    assert torch.allclose(vlb, -p.log(), atol=1e-10)


def test_absorbing_gap_shrinks_as_steps_grow():
    X, p = toy_distribution(L=3, seed=1)
    entropy = float(-(p * p.log()).sum())
    gaps, worst = [], []
    for steps in (2, 8, 32, 128):
        proc = build("absorbing", steps)
        vlb = exact_vlb(Oracle(proc, X, p), proc, X)
        gaps.append(float((p * vlb).sum()) - entropy)
        worst.append(float((vlb + p.log()).abs().max()))
    assert all(g > 0 for g in gaps)
    # the discretisation gap falls like 1/T (4x the steps, ~1/4 the gap), per sequence as well as on average
    assert all(gaps[i + 1] < 0.3 * gaps[i] for i in range(3))
    assert all(worst[i + 1] < 0.3 * worst[i] for i in range(3))
    assert gaps[3] < 0.01 and worst[3] < 0.1


class TinyNet(torch.nn.Module):
    def __init__(self, n_states, width=16):
        super().__init__()
        self.emb = torch.nn.Embedding(n_states, width)
        self.time = torch.nn.Linear(1, width)
        self.out = torch.nn.Linear(width, n_states)

    def forward(self, x_t, t):
        h = self.emb(x_t) + self.time(t[:, None, None].to(self.time.weight.dtype))
        return self.out(torch.tanh(h))


@pytest.mark.parametrize("name", list(D3PM_PROCESSES))
@torch.no_grad()
def test_exact_vlb_equals_the_path_space_definition(name):
    """L_vb = E_q(x_1:T | x_0) [log q(x_1:T | x_0) - log p(x_0:T)] summed over every path, for a random network."""
    torch.manual_seed(0)
    steps, L = 3, 2
    proc = build(name, steps, schedule="cosine")
    net = TinyNet(proc.n_states).double()
    model = lambda x, t: net(x, t.double())  # noqa: E731
    S = proc.n_states
    Q, _ = proc.matrices()
    x0 = torch.tensor([[2, 0], [1, 1]])
    states = torch.tensor(list(itertools.product(range(S), repeat=L)))  # (M, L) joint states of a sequence
    paths = torch.tensor(list(itertools.product(range(states.shape[0]), repeat=steps)))  # (P, T) x_1..x_T
    pos = torch.arange(L)
    for b in range(x0.shape[0]):
        xs = [x0[b].expand(paths.shape[0], L)] + [states[paths[:, i]] for i in range(steps)]  # x_0..x_T
        log_q = sum(torch.log(Q[t][xs[t - 1], xs[t]]).sum(-1) for t in range(1, steps + 1))  # (P,)
        log_p = torch.log(proc.prior()[xs[steps]]).sum(-1)
        for t in range(1, steps + 1):
            st = torch.full((paths.shape[0],), t)
            logp = proc.reverse_log_probs(model(xs[t], st / steps), xs[t], st)  # (P, L, S)
            log_p = log_p + logp[torch.arange(paths.shape[0])[:, None], pos, xs[t - 1]].sum(-1)
        keep = log_q > float("-inf")
        w = log_q[keep].exp()
        expected = float((w * (log_q[keep] - log_p[keep])).sum())
        got = float(exact_vlb(model, proc, x0[b : b + 1])[0])
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", list(D3PM_PROCESSES))
def test_loss_is_finite_and_differentiable(name):
    torch.manual_seed(0)
    proc = build(name, steps=10, schedule="cosine")
    net = TinyNet(proc.n_states)
    obj = D3PMObjective(proc)
    x0 = torch.randint(V, (16, 5), generator=torch.Generator().manual_seed(0))
    out = obj(net, x0, generator=torch.Generator().manual_seed(1))
    assert set(out) >= {"loss", "vb", "ce"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert float(out["loss"].detach()) == pytest.approx(float(out["vb"] + 0.01 * out["ce"]), rel=1e-5)
    out["loss"].backward()
    grads = [q.grad for q in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # a network that knows nothing predicts x_0 uniformly over the V real tokens (never [MASK]): CE = log V
    flat = obj(lambda x, t: torch.zeros(x.shape + (proc.n_states,)), x0, generator=torch.Generator().manual_seed(2))
    assert float(flat["ce"]) == pytest.approx(math.log(V), rel=1e-6)


@pytest.mark.parametrize("name", ["uniform", "absorbing"])
def test_vb_averages_to_the_exact_bound(name):
    X, p = toy_distribution(L=2, seed=2)
    proc = build(name, steps=6)
    oracle = Oracle(proc, X, p)
    L = X.shape[1]
    target = float(exact_vlb(oracle, proc, X).mean()) / L
    x0 = X.repeat(300, 1)  # every sequence equally often: the mean of exact_vlb over the table
    obj = D3PMObjective(proc)
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([float(obj(oracle, x0, generator=gen)["vb"]) for _ in range(16)], dtype=F64)
    se = float(means.std() / len(means) ** 0.5)
    assert abs(float(means.mean()) - target) < 4 * se + 1e-6, (float(means.mean()), target, se)


def test_monte_carlo_fallback_and_stride():
    X, p = toy_distribution(L=2, seed=4)
    proc = build("uniform", steps=5)
    oracle = Oracle(proc, X, p)
    exact = exact_vlb(oracle, proc, X)
    # one sample of x_t per step when enumeration is off: unbiased, so the average over copies converges
    reps = 400
    mc = exact_vlb(oracle, proc, X.repeat(reps, 1), enumerate_limit=0, generator=torch.Generator().manual_seed(0))
    mc = mc.view(reps, -1)
    se = mc.std(0) / reps**0.5
    assert ((mc.mean(0) - exact).abs() < 5 * se + 1e-9).all()
    # the stride plan always keeps t = 1 and weights blocks so that they cover 1..T exactly once
    for T, stride in [(5, 1), (5, 2), (10, 3), (1000, 7)]:
        plan = _stride_plan(T, stride)
        assert plan[0] == (1, 1) and sum(w for _, w in plan) == T
    assert torch.allclose(exact_vlb(oracle, proc, X, stride=1), exact)
    strided = exact_vlb(oracle, proc, X, stride=2)
    assert torch.isfinite(strided).all() and not torch.allclose(strided, exact)


def test_bad_lambda_is_a_user_error():
    with pytest.raises(UserError):
        D3PMObjective(build("uniform", 4), hybrid_lambda=-1.0)
