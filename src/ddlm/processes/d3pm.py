"""D3PM transition-matrix forward processes (Austin et al. 2021, "Structured Denoising Diffusion Models in
Discrete State-Spaces"): uniform, absorbing, discretised Gaussian and nearest-neighbour.

Row vectors throughout: Q_t[i, j] = q(x_t = j | x_{t-1} = i) (row-stochastic), Q_bar_t = Q_1 ... Q_t, so
    q(x_t | x_0)              = x_0 Q_bar_t                                              (paper eq. 3)
    q(x_{t-1} | x_t, x_0)     ∝ (x_t Q_t^T) ⊙ (x_0 Q_bar_{t-1})                          (paper eq. 3)
    p(x_{t-1} | x_t)          ∝ (x_t Q_t^T) ⊙ (p~(x_0 | x_t) Q_bar_{t-1})                (paper eq. 4,
                                 x0-parameterisation: the model's p~ replaces the one-hot x_0)
Steps are integers t = 0..T (t = 0 is the data, Q_bar_0 = I); the network sees t / T.

Uniform and absorbing have the rank-one form Q_t = (1 - b_t) I + b_t 1 m^T (m = uniform, or the [MASK]
one-hot), hence Q_bar_t = abar_t I + (1 - abar_t) 1 m^T with abar_t = prod_s (1 - b_s): they are applied
as vector operations and never build S x S matrices, so they work for any vocabulary. Gaussian and
nearest-neighbour precompute (T + 1, S, S) float64 matrices and refuse sizes past `max_matrix_bytes`.
All probabilities are float64.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from ..errors import UserError, check
from .d3pm_schedules import (DTYPE, bisect_decreasing, entropy, get_d3pm_schedule,
                             rank_one_mutual_information)

TINY = torch.finfo(DTYPE).tiny


def _require(condition: bool, message: str) -> None:
    """An internal contract (the objectives and samplers pass steps and shapes): ValueError with a traceback,
    since no user input reaches these checks (user options are checked with `check`, a UserError)."""
    if not condition:
        raise ValueError(message)

# schedule key -> betas (T,) float64 that a saved model carries (SequenceModel.from_pretrained registers them):
# the mutual-information schedule of a matrix process bisects (T, S, S) matrix functions, ~20 s at T = 1000
KNOWN_BETAS: dict[str, torch.Tensor] = {}


def remember_betas(key: str, betas: torch.Tensor) -> None:
    """Let the next process whose `schedule_key()` is `key` take these betas instead of computing them."""
    KNOWN_BETAS[key] = torch.as_tensor(betas, dtype=DTYPE).detach().cpu().clone()


class D3PMProcess:
    """Base class of the D3PM forward processes over V real tokens and S = n_states states.

    Subclasses implement three vector operations, each on a batch of steps t (B,) long:
      _bar_rows(x0, t)      Q_bar_t[x0, :]           (B, L) -> (B, L, S)
      _bar_apply(p, t)      p Q_bar_t                (B, L, S) -> (B, L, S)
      _step_cols(x_t, t)    Q_t[:, x_t] = x_t Q_t^T  (B, L) -> (B, L, S)
    and everything else (marginals, sampling, posterior, prior KL) is written once here.
    """

    name = "d3pm"
    default_schedule = "cosine"

    def __init__(self, vocab_size: int, steps: int, n_states: int, schedule: str | None = None,
                 schedule_kwargs: dict | None = None):
        check(isinstance(vocab_size, int) and vocab_size >= 2, f"D3PM needs vocab_size >= 2, got {vocab_size}")
        check(isinstance(steps, int) and steps >= 1, f"D3PM needs steps >= 1, got {steps}")
        self.vocab_size, self.steps, self.n_states = vocab_size, steps, n_states
        self.schedule = schedule or self.default_schedule
        self.schedule_kwargs = dict(schedule_kwargs or {})
        self._schedule_fn = get_d3pm_schedule(self.schedule)

    def schedule_key(self) -> str:
        """Everything the betas depend on: the class, V, T, the schedule and its options, and the structure
        (the stationary vector m, the rate matrix R) through a digest. Equal keys give equal betas."""
        digest = hashlib.sha256()
        parts = {name: getattr(self, name, None) for name in ("m", "R")}
        for name, value in [*parts.items(), *sorted(self.schedule_kwargs.items())]:
            digest.update(name.encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().cpu().to(DTYPE).contiguous().numpy().tobytes())
            else:
                digest.update(repr(value).encode())
        return f"{type(self).__name__}|V={self.vocab_size}|T={self.steps}|{self.schedule}|{digest.hexdigest()[:32]}"

    def _make_betas(self) -> None:
        """Call from a subclass once its structure (m, R, ...) is set: the MI schedule needs it. Betas that a
        saved model carries (KNOWN_BETAS) are taken as they are."""
        known = KNOWN_BETAS.get(self.schedule_key())
        try:
            betas = known if known is not None else self._schedule_fn(self.steps, self, **self.schedule_kwargs)
        except TypeError as e:
            raise UserError(f"bad options for the {self.schedule} schedule: {e}") from None
        self.betas = torch.as_tensor(betas, dtype=DTYPE)  # (T,) betas[t - 1] = beta_t
        check(bool(torch.isfinite(self.betas).all()) and bool((self.betas >= 0).all()),
              f"the {self.schedule} schedule gave negative or non-finite betas")

    # ----- subclass hooks --------------------------------------------------------------------------------
    def _bar_rows(self, x0, t):
        raise NotImplementedError

    def _bar_apply(self, probs, t):
        raise NotImplementedError

    def _step_cols(self, xt, t):
        raise NotImplementedError

    def prior(self) -> torch.Tensor:
        """The stationary distribution (S,) that x_T is compared to (and sampling starts from)."""
        raise NotImplementedError

    def step_matrix(self, t: int) -> torch.Tensor:
        """Q_t (S, S) for 1 <= t <= T; Q_0 = I."""
        raise NotImplementedError

    def cumulative_matrix(self, t: int) -> torch.Tensor:
        """Q_bar_t (S, S) for 0 <= t <= T."""
        raise NotImplementedError

    def mutual_information_betas(self, steps: int, p0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_cumulative(self, probs: torch.Tensor, s: int) -> torch.Tensor:
        """probs Q_bar_s for one integer step s: (B, L, S) -> (B, L, S) (the strided sampler's push)."""
        raise NotImplementedError

    def skip_columns(self, x_t: torch.Tensor, s: int, t: int) -> torch.Tensor:
        """q(x_t | x_s = j) over j for s < t, Q_{s->t} = Q_{s+1} ... Q_t: (B, L) -> (B, L, S)."""
        raise NotImplementedError

    # ----- written once ----------------------------------------------------------------------------------
    def _tensors(self) -> list[str]:
        return [k for k, v in vars(self).items() if isinstance(v, torch.Tensor)]

    def to(self, device) -> "D3PMProcess":
        for k in self._tensors():
            setattr(self, k, getattr(self, k).to(device))
        return self

    def _steps(self, t, batch: int, device) -> torch.Tensor:
        """t as int or (B,) integer tensor -> (B,) long on device, checked to lie in 0..T."""
        t = torch.as_tensor(t, device=device)
        _require(not t.is_floating_point(), "D3PM steps t are integers 0..T (the network gets t / T)")
        t = t.long().expand(batch) if t.dim() == 0 else t.long()
        _require(bool(((t >= 0) & (t <= self.steps)).all()), f"D3PM steps must lie in 0..{self.steps}")
        if self.betas.device != t.device:
            self.to(t.device)
        return t

    def _pad(self, probs: torch.Tensor) -> torch.Tensor:
        """(..., V) or (..., S) probabilities -> (..., S) float64 (zeros on the extra states)."""
        probs = probs.to(DTYPE)
        if probs.shape[-1] == self.n_states:
            return probs
        _require(probs.shape[-1] == self.vocab_size, f"expected {self.vocab_size} or {self.n_states} classes")
        return F.pad(probs, (0, self.n_states - self.vocab_size))

    def q_xt_given_x0(self, x0: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x_0) = x_0 Q_bar_t: probabilities (B, L, S) for x0 (B, L) and steps t (B,) or int."""
        return self._bar_rows(x0, self._steps(t, x0.shape[0], x0.device))

    def sample_xt(self, x0: torch.Tensor, t, generator=None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) (B, L) long by inverse CDF in float64."""
        probs = self.q_xt_given_x0(x0, t)  # (B, L, S)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=DTYPE)
        return categorical_inverse_cdf(probs, u)

    def log_q_posterior(self, x_t: torch.Tensor, x0_probs: torch.Tensor, t) -> torch.Tensor:
        """log of (x_t Q_t^T) ⊙ (x0_probs Q_bar_{t-1}), normalised: (B, L, S), for 1 <= t <= T.

        One-hot x0_probs give the true posterior q(x_{t-1} | x_t, x_0); a model's p~(x_0 | x_t) gives the
        paper's p(x_{t-1} | x_t) ∝ sum_x0 q(x_{t-1}, x_t | x0) p~(x0 | x_t) (eq. 4; note it weighs p~ by
        q(x_t | x0), unlike the mixture sum_x0 q(x_{t-1} | x_t, x0) p~(x0 | x_t); both agree on one-hots).
        Differentiable in x0_probs; impossible states get -inf.
        """
        t = self._steps(t, x_t.shape[0], x_t.device)
        _require(bool((t >= 1).all()), "the posterior q(x_{t-1} | x_t, x_0) needs t >= 1")
        fact1 = self._step_cols(x_t, t)  # (B, L, S) q(x_t | x_{t-1} = j), a constant
        fact2 = self._bar_apply(self._pad(x0_probs), t - 1)  # (B, L, S) q(x_{t-1} = j | x_0)
        # clamp before log so that a zero in fact2 cannot produce an infinite gradient
        logits = torch.log(fact1) + torch.log(fact2.clamp_min(TINY))
        return logits - torch.logsumexp(logits, dim=-1, keepdim=True)

    def q_posterior(self, x_t: torch.Tensor, x0_probs: torch.Tensor, t) -> torch.Tensor:
        """Probabilities (B, L, S) of x_{t-1}; see `log_q_posterior`."""
        return self.log_q_posterior(x_t, x0_probs, t).exp()

    def x0_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """x0-parameterisation: log p~(x_0 | x_t) over the V real tokens (B, L, S) -> (B, L, V) float64.
        The network never predicts [MASK] as x_0."""
        return F.log_softmax(logits[..., : self.vocab_size].to(DTYPE), dim=-1)

    log_probs = x0_log_probs  # the name every process gives it (processes/protocol.py)

    def reverse_log_probs(self, logits: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """log p(x_{t-1} | x_t) (B, L, S) from the network's logits at step t (B,) >= 1.

        For t > 1 the x0-parameterised posterior (eq. 4); for t = 1 the network's p~(x_0 | x_1) itself
        (as in D3PM's code; re-weighting it by q(x_1 | x_0) would count the evidence twice)."""
        t = self._steps(t, x_t.shape[0], x_t.device)
        logp0 = self.x0_log_probs(logits)  # (B, L, V)
        last = F.pad(logp0, (0, self.n_states - self.vocab_size), value=float("-inf"))
        if bool((t == 1).all()):
            return last
        post = self.log_q_posterior(x_t, logp0.exp(), t.clamp_min(2))
        return torch.where((t == 1)[:, None, None], last, post)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = sum over positions of KL(q(x_T | x_0) || prior), (B,) nats; 0 when x_T is stationary."""
        q = self.q_xt_given_x0(x0, self.steps)  # (B, L, S)
        return kl_categorical(q, torch.log(self.prior().to(q.device))).sum(-1)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, Q_bar), each (T + 1, S, S) float64 with Q[0] = Q_bar[0] = I. Small S only (tests, plots)."""
        Q = torch.stack([self.step_matrix(t) for t in range(self.steps + 1)])
        Qbar = torch.stack([self.cumulative_matrix(t) for t in range(self.steps + 1)])
        return Q, Qbar

    def __repr__(self) -> str:
        return f"{type(self).__name__}(V={self.vocab_size}, T={self.steps}, schedule={self.schedule!r})"


def categorical_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index of the first cumulative probability above u: probs (..., S), u (...) in [0, 1) -> (...) long."""
    cdf = probs.cumsum(-1)
    idx = (cdf <= (u * cdf[..., -1])[..., None]).sum(-1)
    return idx.clamp_max(probs.shape[-1] - 1)


def kl_categorical(q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the last axis with 0 log 0 = 0; q probabilities, log_p log-probabilities."""
    safe_q = q.clamp_min(TINY)
    terms = torch.where(q > 0, q * (torch.log(safe_q) - log_p), torch.zeros_like(q))
    return terms.sum(-1)


# ----- rank-one processes: uniform and absorbing ------------------------------------------------------------
class _RankOneProcess(D3PMProcess):
    """Q_t = (1 - beta_t) I + beta_t 1 m^T,  Q_bar_t = abar_t I + (1 - abar_t) 1 m^T,  abar_t = prod (1 - beta_s)."""

    def _finish(self):
        self._make_betas()
        check(bool((self.betas <= 1).all()), f"the {self.name} process needs betas in [0, 1]")
        self.abar = torch.cat([torch.ones(1, dtype=DTYPE), torch.cumprod(1.0 - self.betas, 0)])  # (T + 1,)

    def _bar_rows(self, x0, t):
        a = self.abar[t][:, None, None]  # (B, 1, 1)
        return a * F.one_hot(x0, self.n_states).to(DTYPE) + (1 - a) * self.m

    def sample_xt(self, x0, t, generator=None):
        """Keep x_0 with probability abar_t, else draw from m: no (B, L, S) tensor, so cheap for big vocabularies."""
        t = self._steps(t, x0.shape[0], x0.device)
        u = torch.rand((2,) + x0.shape, generator=generator, device=x0.device, dtype=DTYPE)
        cdf = self.m.cumsum(0)
        noise = torch.searchsorted(cdf, (u[1] * cdf[-1]).contiguous(), right=True).clamp_max(self.n_states - 1)
        return torch.where(u[0] < self.abar[t][:, None], x0, noise)

    def _bar_apply(self, probs, t):
        a = self.abar[t][:, None, None]
        return a * probs + (1 - a) * probs.sum(-1, keepdim=True) * self.m

    def _step_cols(self, xt, t):
        b = self.betas[t - 1][:, None, None]  # (B, 1, 1), t >= 1
        return (1 - b) * F.one_hot(xt, self.n_states).to(DTYPE) + b * self.m[xt][..., None]

    def prior(self):
        return self.m

    def step_matrix(self, t):
        b = 0.0 if t == 0 else self.betas[t - 1]
        return (1 - b) * torch.eye(self.n_states, dtype=DTYPE) + b * self.m[None, :].cpu()

    def cumulative_matrix(self, t):
        a = self.abar[t].cpu()
        return a * torch.eye(self.n_states, dtype=DTYPE) + (1 - a) * self.m[None, :].cpu()

    def apply_cumulative(self, probs, s):
        a = self.abar[s]
        return a * probs + (1 - a) * probs.sum(-1, keepdim=True) * self.m

    def skip_columns(self, x_t, s, t):
        # Q_{s->t} = r I + (1 - r) 1 m^T with r = abar_t / abar_s
        a_s = self.abar[s]
        r = self.abar[t] / a_s if a_s > 0 else torch.zeros((), dtype=DTYPE)
        return r * F.one_hot(x_t, self.n_states).to(DTYPE) + (1 - r) * self.m[x_t][..., None]

    def mutual_information_betas(self, steps, p0):
        # I(abar) is decreasing in abar's complement; solve I(abar_t) = (1 - t/T) H(x_0) per step
        target = entropy(p0) * (1 - torch.arange(1, steps + 1, dtype=DTYPE) / steps)
        noise = bisect_decreasing(lambda n: rank_one_mutual_information(1 - n, self.m, p0), target, 0.0, 1.0)
        return _betas_from_abar(1 - noise)


def _betas_from_abar(abar: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - abar_t / abar_{t-1} for abar_1..abar_T (abar_0 = 1)."""
    prev = torch.cat([torch.ones(1, dtype=DTYPE), abar[:-1]])
    return torch.where(prev > 0, 1 - abar / prev.clamp_min(TINY), torch.ones_like(abar)).clamp(0.0, 1.0)


class UniformD3PM(_RankOneProcess):
    """D3PM-uniform (Hoogeboom et al. 2021; Austin et al. 2021): Q_t = (1 - beta_t) I + beta_t 11^T / V."""

    name = "uniform"
    default_schedule = "cosine"

    def __init__(self, vocab_size: int, steps: int, schedule: str | None = None, schedule_kwargs=None):
        super().__init__(vocab_size, steps, vocab_size, schedule, schedule_kwargs)
        self.m = torch.full((vocab_size,), 1.0 / vocab_size, dtype=DTYPE)
        self._finish()


class AbsorbingD3PM(_RankOneProcess):
    """D3PM-absorbing: each token jumps to [MASK] (id V) with probability beta_t, Q_t = (1-beta_t) I + beta_t 1 e_m^T.

    The schedule must reach abar_T = 0 (x_T all [MASK]) so that the prior is the [MASK] point mass."""

    name = "absorbing"
    default_schedule = "absorbing"

    def __init__(self, vocab_size: int, steps: int, schedule: str | None = None, schedule_kwargs=None):
        super().__init__(vocab_size, steps, vocab_size + 1, schedule, schedule_kwargs)
        self.mask_id = vocab_size
        self.m = F.one_hot(torch.tensor(vocab_size), vocab_size + 1).to(DTYPE)
        self._finish()
        check(float(self.abar[-1]) == 0.0,
              f"the {self.schedule} schedule leaves {float(self.abar[-1]):.3g} of tokens unmasked at t = T; "
              "the absorbing process needs beta_T = 1 (use the absorbing, cosine or mutual_information schedule)")

    def mutual_information_betas(self, steps, p0):
        # I(x_t; x_0) = abar_t H(x_0) exactly (x_t is x_0 or carries nothing), so abar_t = 1 - t/T: the closed form
        return _betas_from_abar(1 - torch.arange(1, steps + 1, dtype=DTYPE) / steps)


# the matrix processes (no closed form: (T + 1, S, S) matrices) live in d3pm_matrix.py
from .d3pm_matrix import (GaussianD3PM, NearestNeighbourD3PM, cooccurrence_embedding,  # noqa: E402,F401
                          knn_rate_matrix)

D3PM_PROCESSES = {
    "uniform": UniformD3PM,
    "absorbing": AbsorbingD3PM,
    "gaussian": GaussianD3PM,
    "nearest_neighbour": NearestNeighbourD3PM,
}


def make_d3pm_process(name: str, vocab_size: int, steps: int, **kwargs) -> D3PMProcess:
    """Build a process from the registry by name; kwargs go to its constructor."""
    if name not in D3PM_PROCESSES:
        raise UserError(f"unknown D3PM process {name!r}; choose one of {', '.join(sorted(D3PM_PROCESSES))}")
    return D3PM_PROCESSES[name](vocab_size, steps, **kwargs)
