"""Progressive unmasking (PUMA; Kim, Geuter, Alvarez-Melis, Kakade, Chen 2026, arXiv 2602.10314): train a masked
diffusion model on the masks its own planner would produce at inference, instead of uniformly random masks.

A pool of B chains, one per row of the batch. A chain starts from its data row x_0 with a random fraction
r ~ U[0, 1/K) of its counted positions revealed (phase 0), and advances one phase per training step:

    phase j -> j + 1:  target n_j+1 = min(round(r * L_eff), L_eff - 1),  r ~ U[(j+1)/K, (j+2)/K)
                       reveal (with the true x_0 token: teacher forcing) the n_j+1 - n_j masked positions the
                       planner scores highest under the logits of this step's training forward pass
    threshold tau > 0: also reveal every masked position whose max_v p(v) > tau, and set the phase to the
                       interval of the unmasked fraction (PUMA's "confidence collapse")

A chain past phase K - 1 is refilled with the batch's row at its index. The confidences come from the
training forward pass itself (detached), so progressive masking costs no extra network call. Every row is
scored where it is masked, exactly as the family's loss scores a uniformly masked row: with
`process.loss_weighting: ce` the loss is the masked cross-entropy averaged over masked tokens (PUMA's Sudoku
recipe averages per sequence, then over the batch; ddlm keeps its own ce formula), with `elbo` it is the
MDLM weight at t = the time at which q(x_t | x_0) masks that fraction in expectation (1 - alpha(t) = masked
fraction; t = the fraction under the log-linear schedule) times the summed masked NLL.

Is it still the bound? No: the masks no longer follow q(x_t | x_0), so the training loss is not an unbiased
NELBO estimate. The paper argues that the minimiser is unchanged (each masked cell is still scored against
the true posterior p(x_0^l | visible cells), since every revealed token is the data's) and that the chain's
marginals agree with the masked process's; it reports ~2.5x faster pretraining at 125M parameters.
`bound` (validation, `ddlm eval`) stays the family's NELBO under uniform masks, so the two arms are compared
on the same yardstick. `process.progressive_fraction` < 1 keeps the last rows of every batch uniformly
masked (a mix of both).

Resume: the pool is saved in every training checkpoint (`state_dict` / `load_state_dict`, train/loop.py),
so a resumed run goes on with the same chains and equals an uninterrupted one.
"""

from __future__ import annotations

import math

import torch

from ..data.batches import Batch, as_batch
from ..errors import UserError
from ..sampling.planners import neg_entropy_scores, top_margin_scores, top_prob_scores

# planner name -> confidence score (B, L, V) log-probs -> (B, L), higher = revealed first
SCORES = {"top_prob": top_prob_scores, "top_margin": top_margin_scores, "entropy": neg_entropy_scores,
          "random": None}
SUPPORTED = ("mdlm",)  # families whose objective offers scored() and loss_terms() (objectives/mdlm.py)


def target_counts(phase: torch.Tensor, u: torch.Tensor, n_eff: torch.Tensor, phases: int) -> torch.Tensor:
    """Revealed positions a chain aims at in `phase` (B,): round((phase + u) / K * n_eff), at most n_eff - 1
    (a chain always keeps one masked position to learn from) and at least 0. u (B,) in [0, 1)."""
    ratio = (phase.double() + u.double()) / phases
    n = torch.round(ratio * n_eff.double()).long()
    return torch.minimum(n, (n_eff - 1).clamp_min(0))


def reveal_top(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the k_b highest-scoring candidates of each row (ties to the lowest index)."""
    s = torch.where(candidates, scores.double(), torch.full_like(scores, -torch.inf, dtype=torch.float64))
    # a stable descending sort keeps the lowest index first among equal scores
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices  # (B, L)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    return candidates & (rank < k[:, None])


def time_of_fraction(schedule, frac: torch.Tensor, t_eps: float, steps: int = 0) -> torch.Tensor:
    """t (B,) with 1 - alpha(t) = frac, by bisection (alpha decreases in t); on the discrete grid i/T when
    steps > 0; never below t_eps."""
    lo = torch.zeros_like(frac, dtype=torch.float64)
    hi = torch.ones_like(frac, dtype=torch.float64)
    target = frac.double()
    for _ in range(50):
        mid = (lo + hi) / 2
        below = (1.0 - schedule.alpha(mid)) < target  # mid masks too little: t is larger
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    t = hi.float()
    if steps:
        t = torch.ceil(t * steps).clamp_min(1) / steps
    return t.clamp(t_eps, 1.0)


class ProgressiveObjective:
    """PUMA progressive unmasking around a masked family's objective (see the module docstring for the
    phases, the loss weighting and why it is no longer an unbiased NELBO). `bound` is the inner objective's."""

    def __init__(self, inner, phases: int = 10, planner: str = "top_prob", threshold: float = 0.0,
                 fraction: float = 1.0):
        if phases < 1:
            raise UserError(f"process.progressive_phases must be >= 1, got {phases}")
        if planner not in SCORES:
            raise UserError(f"unknown process.progressive_planner {planner!r}; choose {', '.join(SCORES)}")
        if not 0.0 <= threshold < 1.0:
            raise UserError(f"process.progressive_threshold must be in [0, 1) (0 = off), got {threshold}")
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"process.progressive_fraction must be in (0, 1], got {fraction}")
        self.inner, self.process = inner, inner.process
        self.phases, self.planner, self.threshold, self.fraction = phases, planner, threshold, fraction
        self.pool: dict | None = None  # x0, xt, phase (P,), done (P,), mask, cond, attend of the chains
        self.last: dict = {}  # xt and t of the last call (tests, diagnostics)

    # ---- the pool of chains -----------------------------------------------------------------------------
    def _counted(self, b: Batch) -> torch.Tensor:
        return torch.ones_like(b.tokens, dtype=torch.bool) if b.mask is None else b.mask

    def _start(self, b: Batch, phase: torch.Tensor, generator) -> torch.Tensor:
        """x_t (n, L) of fresh chains in `phase`: a random subset of the counted positions revealed."""
        counted = self._counted(b)
        u = torch.rand(phase.shape, generator=generator, device=b.tokens.device)
        k = target_counts(phase, u, counted.sum(-1), self.phases)
        scores = torch.rand(b.tokens.shape, generator=generator, device=b.tokens.device)
        shown = reveal_top(scores, counted, k) | ~counted  # context is always visible
        return torch.where(shown, b.tokens, torch.full_like(b.tokens, self.process.mask_id))

    def _init_pool(self, b: Batch, generator) -> None:
        n, dev = len(b), b.tokens.device
        # phases spread evenly over the pool, in a random order (a steady state from the first step)
        phase = (torch.arange(n, device=dev) % self.phases)[torch.randperm(n, generator=generator, device=dev)]
        self.pool = {"x0": b.tokens.clone(), "xt": self._start(b, phase, generator), "phase": phase,
                     "done": torch.zeros(n, dtype=torch.bool, device=dev), **{
                         name: None if getattr(b, name) is None else getattr(b, name).clone()
                         for name in ("mask", "cond", "attend")}}

    def _refill(self, b: Batch, generator) -> None:
        """Chains that went through every phase take the batch's rows at their indices, in phase 0."""
        p = self.pool
        idx = p["done"].nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        fresh = b.rows(idx)
        p["x0"][idx] = fresh.tokens
        p["xt"][idx] = self._start(fresh, torch.zeros_like(idx), generator)
        p["phase"][idx] = 0
        p["done"][idx] = False
        for name in ("mask", "cond", "attend"):
            new = getattr(b, name)
            if p[name] is None and new is None:
                continue
            if p[name] is None:  # the pool had no such field: materialise its default
                p[name] = _default(name, p["x0"])
            p[name][idx] = new[idx] if new is not None else _default(name, fresh.tokens)

    def pool_batch(self) -> Batch:
        p = self.pool
        return Batch(p["x0"], p["mask"], p["cond"], p["attend"])

    @torch.no_grad()
    def advance(self, logp: torch.Tensor, generator=None) -> None:
        """Move every chain one phase on, revealing by the planner's scores of logp (P, L, V) (detached)."""
        p = self.pool
        b = self.pool_batch()
        counted = self._counted(b)
        masked = self.process.is_masked(p["xt"]) & counted  # (P, L)
        nxt = p["phase"] + 1
        u = torch.rand(nxt.shape, generator=generator, device=nxt.device)
        k = target_counts(nxt, u, counted.sum(-1), self.phases)
        shown = (counted & ~masked).sum(-1)
        to_reveal = torch.where(nxt >= self.phases, torch.zeros_like(k), (k - shown).clamp_min(0))
        fn = SCORES[self.planner]
        scores = (torch.rand(masked.shape, generator=generator, device=masked.device) if fn is None
                  else fn(logp))  # (P, L)
        reveal = reveal_top(scores, masked, to_reveal)
        if self.threshold > 0:
            sure = logp.amax(-1) > math.log(self.threshold)  # max_v p(v) > tau
            reveal |= sure & masked & (nxt < self.phases)[:, None]
        p["xt"] = torch.where(reveal, p["x0"], p["xt"])
        if self.threshold > 0:  # the phase is where the unmasked fraction now lies
            frac = (counted & ~self.process.is_masked(p["xt"])).sum(-1).double() / counted.sum(-1).clamp_min(1)
            nxt = torch.where(nxt >= self.phases, nxt,
                              torch.maximum(nxt, (frac * self.phases).floor().long().clamp_max(self.phases - 1)))
        p["phase"] = nxt
        p["done"] = nxt >= self.phases

    # ---- the objective ----------------------------------------------------------------------------------
    def __call__(self, model, batch, generator=None) -> dict:
        b = as_batch(batch)
        n_prog = max(1, round(self.fraction * len(b)))
        prog, rest = b.rows(slice(0, n_prog)), b.rows(slice(n_prog, len(b)))
        if self.pool is None or len(self.pool["x0"]) != n_prog:
            self._init_pool(prog, generator)
        else:
            self._refill(prog, generator)
        pb = self.pool_batch()
        xt = self.pool["xt"]
        counted = self._counted(pb)
        frac = (self.process.is_masked(xt) & counted).sum(-1).float() / counted.sum(-1).clamp_min(1)
        inner = self.inner
        t = time_of_fraction(self.process.schedule, frac, inner.t_eps, inner.T)  # (P,)
        if len(rest):  # the uniform rows, masked as the family masks them
            t_u = inner.sample_t(len(rest), generator, b.tokens.device)
            xt_u = self.process.sample_xt(rest.tokens, t_u, generator)
            if rest.mask is not None:
                xt_u = torch.where(rest.mask, xt_u, rest.tokens)
            pb = _cat(pb, rest)
            xt, t = torch.cat([xt, xt_u]), torch.cat([t, t_u])
        nll, masked, logp = inner.scored(model, pb, xt, t)
        out = inner.loss_terms(nll, masked, t, pb)
        self.last = {"xt": xt.detach().clone(), "t": t.detach().clone(), "batch": pb}
        self.advance(logp[:n_prog].detach(), generator)
        out["progressive_phase"] = self.pool["phase"].float().mean().detach()
        return out

    def bound(self, model, batch, t=None, generator=None):
        return self.inner.bound(model, batch, t, generator)

    # ---- exact resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        return None if self.pool is None else {k: (v.clone() if torch.is_tensor(v) else v)
                                                 for k, v in self.pool.items()}

    def load_state_dict(self, state: dict | None) -> None:
        self.pool = None if state is None else dict(state)


def _default(name: str, tokens: torch.Tensor) -> torch.Tensor:
    if name == "cond":
        return torch.full((tokens.shape[0],), -1, dtype=torch.long, device=tokens.device)  # the null label
    return torch.ones_like(tokens, dtype=torch.bool)


def _cat(a: Batch, b: Batch) -> Batch:
    def join(name, fill):
        x, y = getattr(a, name), getattr(b, name)
        if x is None and y is None:
            return None
        x = fill(name, a.tokens) if x is None else x
        y = fill(name, b.tokens) if y is None else y
        return torch.cat([x, y])
    return Batch(torch.cat([a.tokens, b.tokens]), join("mask", _default), join("cond", _default),
                 join("attend", _default))


def progressive(family, cfg):
    """Wrap `family.objective` when cfg.masking is progressive; the family as it is for uniform."""
    if cfg.masking == "uniform":
        return family
    if cfg.masking != "progressive":
        raise UserError(f"unknown process.masking {cfg.masking!r}; choose uniform or progressive")
    if family.name not in SUPPORTED:
        raise UserError(f"process.masking=progressive supports the {', '.join(SUPPORTED)} family only, not "
                        f"{family.name}; set process.masking=uniform or process.name=mdlm")
    family.objective = ProgressiveObjective(family.objective, cfg.progressive_phases, cfg.progressive_planner,
                                            cfg.progressive_threshold, cfg.progressive_fraction)
    return family
