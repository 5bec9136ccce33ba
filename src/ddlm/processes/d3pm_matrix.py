"""D3PM's matrix processes (Austin et al. 2021): discretised Gaussian and nearest-neighbour, which have no
closed form and precompute (T + 1, S, S) float64 matrices Q and Q_bar; and the graph builders of the
nearest-neighbour process (a k-NN rate matrix from an embedding, a co-occurrence embedding from a corpus).
The base class, the rank-one processes and the registry live in `d3pm.py`."""

from __future__ import annotations

import torch

from ..errors import check
from .d3pm import D3PMProcess
from .d3pm_schedules import DTYPE, bisect_decreasing, entropy, mutual_information


# ----- matrix processes: discretised Gaussian and nearest-neighbour -------------------------------------------
class _MatrixProcess(D3PMProcess):
    """Processes without a closed form: (T + 1, S, S) float64 tensors Q (Q[0] = I) and Q_bar."""

    def __init__(self, vocab_size, steps, schedule, schedule_kwargs, max_matrix_bytes):
        super().__init__(vocab_size, steps, vocab_size, schedule, schedule_kwargs)
        need = 2 * (steps + 1) * vocab_size ** 2 * 8
        check(need <= max_matrix_bytes,
              f"the {self.name} process with {vocab_size} states and T={steps} needs {need / 2**30:.2f} GiB of "
              f"transition matrices (limit {max_matrix_bytes / 2**30:.2f} GiB); use a smaller vocabulary, fewer "
              "steps, or the uniform/absorbing process, which need no matrices")

    def matrix_for_beta(self, beta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _finish(self):
        self._make_betas()
        eye = torch.eye(self.n_states, dtype=DTYPE)
        self.Q = torch.stack([eye] + [self.matrix_for_beta(b) for b in self.betas])  # (T + 1, S, S)
        self.Qbar = self._cumulate()  # (T + 1, S, S)

    def _cumulate(self):
        out = [self.Q[0]]
        for t in range(1, self.steps + 1):
            out.append(out[-1] @ self.Q[t])
        return torch.stack(out)

    def _bar_rows(self, x0, t):
        return self.Qbar[t[:, None].expand_as(x0), x0]  # (B, L, S)

    def _bar_apply(self, probs, t):
        return torch.einsum("bls,bsk->blk", probs, self.Qbar[t])

    def _step_cols(self, xt, t):
        return self.Q[t[:, None].expand_as(xt), :, xt]  # (B, L, S): Q_t[j, x_t] over j

    def prior(self):
        # both matrices are symmetric with unit row sums, hence doubly stochastic: the uniform is stationary
        return torch.full((self.n_states,), 1.0 / self.n_states, dtype=DTYPE, device=self.Q.device)

    def step_matrix(self, t):
        return self.Q[t].cpu()

    def cumulative_matrix(self, t):
        return self.Qbar[t].cpu()

    def apply_cumulative(self, probs, s):
        return probs @ self.Qbar[s]

    def skip_columns(self, x_t, s, t):
        Q = self.Q[s + 1]
        for i in range(s + 2, t + 1):
            Q = Q @ self.Q[i]  # (S, S) Q_{s->t}
        return Q.T[x_t]


class GaussianD3PM(_MatrixProcess):
    """Discretised Gaussian over ordinal tokens 0..V-1 (Austin et al. 2021, appendix A.2.2):

        Q_t[i, j] = exp(-4 (i - j)^2 / ((V - 1)^2 beta_t)) / sum_{n=-(V-1)}^{V-1} exp(-4 n^2 / ((V - 1)^2 beta_t))
    for i != j, and the diagonal fills each row to 1. Symmetric, hence doubly stochastic."""

    name = "gaussian"
    default_schedule = "linear"

    def __init__(self, vocab_size: int, steps: int, schedule: str | None = None, schedule_kwargs=None,
                 max_matrix_bytes: int = 2**30):
        super().__init__(vocab_size, steps, schedule, schedule_kwargs, max_matrix_bytes)
        self._finish()

    def matrix_for_beta(self, beta):
        V = self.vocab_size
        beta = torch.as_tensor(beta, dtype=DTYPE)
        if float(beta) <= 0:
            return torch.eye(V, dtype=DTYPE)
        n = torch.arange(-(V - 1), V, dtype=DTYPE)
        scale = 4.0 / ((V - 1) ** 2 * beta)
        norm = torch.exp(-scale * n**2).sum()
        idx = torch.arange(V, dtype=DTYPE)
        Q = torch.exp(-scale * (idx[:, None] - idx[None, :]) ** 2) / norm
        Q.fill_diagonal_(0.0)
        return Q + torch.diag(1.0 - Q.sum(1))

    def mutual_information_betas(self, steps, p0):
        # no closed form and the Q_t do not commute: choose beta_t step by step by bisection on log beta
        H = entropy(p0)
        qbar, betas = torch.eye(self.vocab_size, dtype=DTYPE), []
        for t in range(1, steps + 1):
            target = H * (1 - t / steps)
            def info(log_b):
                return mutual_information(qbar @ self.matrix_for_beta(log_b.exp()), p0)
            log_b = bisect_decreasing(info, target.reshape(()), -20.0, 10.0, iters=50)
            betas.append(log_b.exp())
            qbar = qbar @ self.matrix_for_beta(betas[-1])
        return torch.stack(betas)


class NearestNeighbourD3PM(_MatrixProcess):
    """Nearest-neighbour D3PM (Austin et al. 2021, appendix A.2.4): tokens diffuse to their neighbours in an
    embedding space. A[i, j] = 1 if j is among the k nearest (Euclidean) neighbours of i; A <- (A + A^T) / (2k)
    (symmetric, rows sum to at most 1); rate matrix R = A - diag(A 1); Q_t = exp(beta_t R) (through the
    eigendecomposition of R).
    R is symmetric with zero row sums, so every Q_t is doubly stochastic, and the Q_t commute:
    Q_bar_t = exp((beta_1 + ... + beta_t) R), computed that way rather than as a long product.

    `embedding` (V, d); or `corpus_ids` (token ids of a corpus) to build one with `cooccurrence_embedding`."""

    name = "nearest_neighbour"
    default_schedule = "mutual_information"

    def __init__(self, vocab_size: int, steps: int, schedule: str | None = None, schedule_kwargs=None,
                 embedding: torch.Tensor | None = None, corpus_ids: torch.Tensor | None = None, k: int = 5,
                 max_matrix_bytes: int = 2**30):
        super().__init__(vocab_size, steps, schedule, schedule_kwargs, max_matrix_bytes)
        if embedding is None:
            check(corpus_ids is not None, "the nearest_neighbour process needs an embedding (V, d) or corpus "
                  "token ids to build one from (corpus_ids=...)")
            embedding = cooccurrence_embedding(corpus_ids, vocab_size)
        self.k = min(k, vocab_size - 1)
        check(self.k >= 1, f"nearest_neighbour needs k >= 1, got {k}")
        self.R = knn_rate_matrix(torch.as_tensor(embedding), vocab_size, self.k)  # (V, V)
        # R is symmetric: R = U diag(lam) U^T, so exp(b R) = U diag(exp(b lam)) U^T for every b at the cost of
        # two matrix products, where matrix_exp pays a Pade approximation per b (the mutual-information schedule
        # evaluates 50 bisection rounds x T of them)
        self.R_eigenvalues, self.R_eigenvectors = torch.linalg.eigh(self.R)
        self._finish()

    def expm(self, rates: torch.Tensor) -> torch.Tensor:
        """exp(b R) for each b in `rates` (...,): (..., V, V), through the eigendecomposition of R."""
        u = self.R_eigenvectors
        scaled = u * torch.exp(torch.as_tensor(rates, dtype=DTYPE)[..., None, None] * self.R_eigenvalues)
        return (scaled @ u.T).clamp_min(0.0)  # rounding leaves -1e-17 where exp(bR) is 0

    def matrix_for_beta(self, beta):
        return self.expm(beta)

    def _cumulate(self):
        total = torch.cat([torch.zeros(1, dtype=DTYPE), torch.cumsum(self.betas, 0)])  # (T + 1,)
        return self.expm(total)

    def mutual_information_betas(self, steps, p0):
        # Q_bar_t depends only on the total rate B_t = sum beta: one bisection on log B_t for all t at once
        target = entropy(p0) * (1 - torch.arange(1, steps + 1, dtype=DTYPE) / steps)
        def info(log_total):
            return mutual_information(self.expm(log_total.exp()), p0)
        total = bisect_decreasing(info, target, -20.0, 12.0, iters=50).exp()
        return torch.diff(total, prepend=torch.zeros(1, dtype=DTYPE)).clamp_min(0.0)


def knn_rate_matrix(embedding: torch.Tensor, vocab_size: int, k: int) -> torch.Tensor:
    """Symmetric kNN rate matrix R = A - diag(A 1) (V, V) with A = (A_knn + A_knn^T) / (2k)."""
    check(embedding.dim() == 2 and embedding.shape[0] == vocab_size,
          f"the nearest_neighbour embedding must be (V={vocab_size}, d), got {tuple(embedding.shape)}")
    emb = embedding.to(DTYPE)
    dist = torch.cdist(emb, emb)
    dist.fill_diagonal_(float("inf"))  # a token is not its own neighbour
    order = torch.argsort(dist, dim=1, stable=True)[:, :k]  # ties go to the lower id: deterministic
    A = torch.zeros(vocab_size, vocab_size, dtype=DTYPE)
    A.scatter_(1, order, 1.0)
    A = (A + A.T) / (2 * k)
    return A - torch.diag(A.sum(1))


def cooccurrence_embedding(token_ids, vocab_size: int, dim: int = 32, window: int = 1) -> torch.Tensor:
    """An embedding (V, min(dim, V)) for the nearest-neighbour process from a corpus's token ids.

    Counts how often tokens i and j appear within `window` positions of each other (symmetric; the last
    axis of `token_ids` is the sequence axis), takes log(1 + count) and keeps the top singular directions,
    U_k sqrt(s_k): tokens with similar neighbours (distributional similarity) land close together."""
    ids = torch.as_tensor(token_ids).long()
    ids = ids.reshape(-1, ids.shape[-1]) if ids.dim() > 1 else ids[None]
    check(ids.numel() > 0 and int(ids.min()) >= 0 and int(ids.max()) < vocab_size,
          f"corpus token ids must lie in 0..{vocab_size - 1}")
    counts = torch.zeros(vocab_size * vocab_size, dtype=DTYPE)
    for w in range(1, window + 1):
        a, b = ids[:, :-w].reshape(-1), ids[:, w:].reshape(-1)
        ones = torch.ones(a.numel(), dtype=DTYPE)
        counts.index_add_(0, a * vocab_size + b, ones)
        counts.index_add_(0, b * vocab_size + a, ones)
    C = torch.log1p(counts.view(vocab_size, vocab_size))
    U, s, _ = torch.linalg.svd(C)
    d = min(dim, vocab_size)
    return U[:, :d] * s[:d].sqrt()
