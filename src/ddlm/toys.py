"""Toy distributions with exact answers, for testing processes, objectives and samplers.

`ToyDistribution` is an explicit table p(x) over all V^L sequences (V, L small). Its `oracle()` is the exact
denoiser of masked diffusion: p(x_0^l | x_t) = sum over x consistent with the unmasked tokens of x_t,
which is time-free, so every sampler and bound can be checked against -log p(x) and p itself.
"""

from __future__ import annotations

import itertools

import torch


class ToyDistribution:
    def __init__(self, vocab_size: int, length: int, seed: int = 0, concentration: float = 0.5):
        self.V, self.L = vocab_size, length
        g = torch.Generator().manual_seed(seed)
        self.support = torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))  # (V^L, L)
        # heavy-tailed random weights, deterministic in the seed: a skewed, non-factorised distribution
        p = (-torch.log(torch.rand(len(self.support), generator=g, dtype=torch.float64))) ** (1 / concentration)
        self.p = p / p.sum()  # (V^L,)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Row index in `support` of sequences x (..., L)."""
        powers = self.V ** torch.arange(self.L - 1, -1, -1)
        return (x * powers).sum(-1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.p[self.index(x)])

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self.support[torch.multinomial(self.p, n, replacement=True, generator=generator)]

    def chi_square(self, samples: torch.Tensor) -> tuple[float, float]:
        """Pearson's statistic of samples (N, L) against p over the cells expected at least 5 times, and the
        upper 0.1% point of its chi-square distribution (Wilson-Hilferty approximation): (stat, critical)."""
        counts = torch.bincount(self.index(samples), minlength=len(self.p)).double()
        expected = self.p * len(samples)
        keep = expected >= 5
        stat = (((counts - expected) ** 2) / expected)[keep].sum().item()
        dof = int(keep.sum()) - 1
        crit = dof * (1 - 2 / (9 * dof) + 3.09 * (2 / (9 * dof)) ** 0.5) ** 3
        return stat, crit

    def posterior_marginals(self, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
        """p(x_0^l = v | x_t) for x_t (B, L) with MASK = mask_id: (B, L, V) float64."""
        known = xt != mask_id  # (B, L)
        agree = (self.support[None] == xt[:, None]) | ~known[:, None]  # (B, N, L)
        w = self.p[None] * agree.all(-1)  # (B, N)
        w = w / w.sum(-1, keepdim=True)
        onehot = torch.nn.functional.one_hot(self.support, self.V).double()  # (N, L, V)
        return torch.einsum("bn,nlv->blv", w, onehot)

    def oracle(self, mask_id: int | None = None) -> "OracleDenoiser":
        return OracleDenoiser(self, self.V if mask_id is None else mask_id)


class OracleDenoiser(torch.nn.Module):
    """Exact, time-free masked-diffusion denoiser for a ToyDistribution: logits (B, L, V + 1) whose softmax
    over the first V entries is the exact posterior marginal."""

    time_conditioned = False

    def __init__(self, toy: ToyDistribution, mask_id: int):
        super().__init__()
        self.toy, self.mask_id = toy, mask_id
        self._anchor = torch.nn.Parameter(torch.zeros(()))  # gives the samplers a device

    def forward(self, xt, t=None, **_):
        probs = self.toy.posterior_marginals(xt, self.mask_id)
        logits = torch.log(probs.clamp_min(1e-300))
        pad = torch.full(probs.shape[:-1] + (1,), -1e30, dtype=logits.dtype)
        return torch.cat([logits, pad], dim=-1)


class RecordToy(ToyDistribution):
    """Records of several lengths laid out as a record batch row: r_1 .. r_n <eos> <pad> .. <pad> (L positions).

    Ids follow the tokenizers' layout (data/tokenizers.py): R real tokens 0..R-1, then <bos> R, <eos> R + 1,
    <pad> R + 2, so V = R + 3. p(x) = length_p[n] * q_n(r_1..r_n), q_n heavy-tailed random weights over R^n
    (deterministic in the seed), and only lengths with length_p[n] > 0 are in the support (1 <= n <= L - 1).
    """

    def __init__(self, n_real: int, length: int, length_p: dict, seed: int = 0, concentration: float = 0.5):
        self.R, self.V, self.L = n_real, n_real + 3, length
        self.bos_id, self.eos_id, self.pad_id = n_real, n_real + 1, n_real + 2
        if not all(1 <= n <= length - 1 for n in length_p) or abs(sum(length_p.values()) - 1) > 1e-9:
            raise ValueError(f"length_p must be probabilities of lengths 1..{length - 1}, got {length_p}")
        g = torch.Generator().manual_seed(seed)
        rows, probs = [], []
        for n, pn in sorted(length_p.items()):
            if pn <= 0:
                continue
            body = torch.tensor(list(itertools.product(range(n_real), repeat=n)))  # (R^n, n)
            tail = torch.tensor([self.eos_id] + [self.pad_id] * (length - n - 1))  # (L - n,)
            rows.append(torch.cat([body, tail.expand(len(body), -1)], dim=1))
            w = (-torch.log(torch.rand(len(body), generator=g, dtype=torch.float64))) ** (1 / concentration)
            probs.append(pn * w / w.sum())
        self.support, self.p = torch.cat(rows), torch.cat(probs)  # (N, L), (N,)
        self.length_p = {n: float(pn) for n, pn in length_p.items() if pn > 0}
        codes = self._codes(self.support)
        self._order = codes.argsort()
        self._sorted = codes[self._order]

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.V ** torch.arange(self.L - 1, -1, -1)).sum(-1)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """Row index in `support` of sequences x (..., L); a sequence outside the support is a ValueError."""
        codes = self._codes(x)
        pos = torch.searchsorted(self._sorted, codes).clamp_max(len(self._sorted) - 1)
        if not bool((self._sorted[pos] == codes).all()):
            raise ValueError("a sequence outside the toy's support (not r_1..r_n <eos> <pad>..)")
        return self._order[pos]

    def lengths(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) position of the first <eos> of rows x (B, L) (L where there is none): the record length."""
        end = x == self.eos_id
        return torch.where(end.any(-1), end.int().argmax(-1), torch.full_like(end[:, 0], self.L, dtype=torch.long))

    def posterior_marginals(self, xt: torch.Tensor, mask_id: int) -> torch.Tensor:
        """As ToyDistribution's, and uniform where no sequence of the support agrees with x_t (B, L, V)."""
        known = xt != mask_id
        agree = (self.support[None] == xt[:, None]) | ~known[:, None]  # (B, N, L)
        w = self.p[None] * agree.all(-1)  # (B, N)
        total = w.sum(-1, keepdim=True)
        w = torch.where(total > 0, w / total.clamp_min(1e-300), torch.full_like(w, 1 / w.shape[1]))
        onehot = torch.nn.functional.one_hot(self.support, self.V).double()  # (N, L, V)
        return torch.einsum("bn,nlv->blv", w, onehot)

    def next_token(self, prefix: torch.Tensor) -> torch.Tensor:
        """p(x_i = v | x_<i = prefix) for prefixes (B, i), 0 <= i < L: (B, V) float64 (uniform off the support)."""
        i = prefix.shape[1]
        agree = (self.support[None, :, :i] == prefix[:, None]).all(-1)  # (B, N)
        w = self.p[None] * agree
        onehot = torch.nn.functional.one_hot(self.support[:, i], self.V).double()  # (N, V)
        probs = w @ onehot  # (B, V)
        total = probs.sum(-1, keepdim=True)
        return torch.where(total > 0, probs / total.clamp_min(1e-300), torch.full_like(probs, 1 / self.V))

    def ar_oracle(self) -> "AROracle":
        return AROracle(self)


class AROracle(torch.nn.Module):
    """Exact autoregressive model of a RecordToy, with the AR backbone's call: x (B, l) tokens behind the AR
    process's BOS (id V) -> logits (B, l, V + 1) of the next token, BOS never predicted. With `kv_caches`
    (one dict, as the AR sampler's incremental wrapper passes) it remembers the tokens already fed."""

    time_conditioned = False

    def __init__(self, toy: RecordToy):
        super().__init__()
        self.toy = toy
        self.blocks = [None]  # one "layer": the AR sampler makes one cache dict per block
        self._anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t=None, kv_caches=None, **_):
        full = x
        if kv_caches is not None:
            cache = kv_caches[0]
            full = x if "x" not in cache else torch.cat([cache["x"], x], dim=1)
            cache["x"] = full
        first = full.shape[1] - x.shape[1]  # the first output position's index in `full`
        out = []
        for j in range(first, full.shape[1]):  # output j predicts record position j from full[:, 1: j + 1]
            probs = self.toy.next_token(full[:, 1: j + 1])  # (B, V)
            out.append(torch.log(probs.clamp_min(1e-300)))
        logits = torch.stack(out, dim=1)  # (B, l, V)
        bos = torch.full(logits.shape[:-1] + (1,), -1e30, dtype=logits.dtype)
        return torch.cat([logits, bos], dim=-1)
