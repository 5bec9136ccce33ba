"""Planners: which masked positions a sampler commits at each step.

A planner is "a score per position, then the top k among the masked positions":

    select = planner(logprobs, masked, k, candidates=tokens, generator=g)
    # logprobs (B, L, V), masked (B, L) bool, k (B,) long -> select (B, L) bool, a subset of `masked`
    # with exactly min(k_b, n_masked_b) True in row b

Kim et al. 2025 ("Train for the Worst, Plan for the Best", ICML) show the order matters: on Sudoku a
random order solves 6.9% of puzzles, top-probability 18.5%, top-margin 89.5%. Scores:

    random      u ~ U(0, 1)                              (vanilla MDLM order)
    top_prob    max_v p(v)
    top_margin  p_(1) - p_(2)                            (largest minus second largest probability)
    entropy     -H(p) = sum_v p(v) log p(v)              (lowest entropy first)
    rdm         log p(candidate)                         (RDM routing, Zheng et al. 2024)
    confidence  commit every masked position with max_v p(v) >= threshold, at least one per row

A score may be perturbed with Gumbel noise, score + c * G: for k = 1 this picks position i with
probability softmax(score / c)_i (Gumbel-max), and for larger k it draws without replacement
(Gumbel-top-k). c = 0 (the default) is exactly deterministic and draws nothing from the generator.
Ties go to the lowest index so that the tests can be exact.

`unmask_counts` / `commit_counts` (counts.py) say how many positions to commit per step (linear or MaskGIT
cosine).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError

# ---------------------------------------------------------------------------------------------------
# scores: (B, L, V) log-probabilities -> (B, L) float32, higher = commit first


def _wide(logprobs: torch.Tensor) -> torch.Tensor:
    """Compute in float32, or in float64 when given it (a near-tie margin needs the precision)."""
    return logprobs if logprobs.dtype == torch.float64 else logprobs.float()


def top_prob_scores(logprobs: torch.Tensor) -> torch.Tensor:
    """max_v p(v) per position, (B, L, V) -> (B, L)."""
    return _wide(logprobs).amax(dim=-1).exp().float()


def top_margin_scores(logprobs: torch.Tensor) -> torch.Tensor:
    """p_(1) - p_(2) per position, (B, L, V) -> (B, L); with V = 1 the margin is p_(1)."""
    lp = _wide(logprobs)
    if lp.shape[-1] == 1:
        return lp[..., 0].exp().float()
    top = lp.topk(2, dim=-1).values  # (B, L, 2)
    l1, l2 = top[..., 0], top[..., 1]
    # p1 - p2 = -p1 * expm1(l2 - l1): no cancellation when p1 ~ p2; l2 = -inf gives p1 exactly.
    # A row of all -inf (no mass anywhere) would give -inf - -inf = NaN, so it scores 0.
    margin = -l1.exp() * torch.expm1(l2 - l1)
    return torch.where(torch.isneginf(l1), torch.zeros_like(margin), margin).float()


def neg_entropy_scores(logprobs: torch.Tensor) -> torch.Tensor:
    """-H(p) = sum_v p log p per position, (B, L, V) -> (B, L); p = 0 terms count 0, not NaN."""
    lp = _wide(logprobs)
    plogp = torch.where(torch.isneginf(lp), torch.zeros_like(lp), lp.exp() * lp)
    return plogp.sum(dim=-1).float()


def candidate_scores(logprobs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """log p(candidate) per position, (B, L, V) and (B, L) -> (B, L) (may be -inf)."""
    return logprobs.float().gather(-1, candidates.long().unsqueeze(-1)).squeeze(-1)


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U) in float64 (float32 noise truncates the tails)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    # torch.rand is in [0, 1): U = 0 would give -inf, so lift it to the smallest normal double
    u = u.clamp_min(torch.finfo(torch.float64).tiny)
    return -torch.log(-torch.log(u))


# ---------------------------------------------------------------------------------------------------
# selection


def top_k_masked(scores: torch.Tensor, masked: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The min(k_b, n_masked_b) masked positions of highest score in each row b, as a (B, L) bool.

    Ties go to the lowest index (a stable descending sort). Masked positions with a -inf or NaN score
    still rank above every unmasked position, so the count is always exact.
    """
    B, L = masked.shape
    lowest = torch.finfo(scores.dtype).min
    key = scores.nan_to_num(nan=lowest, neginf=lowest)  # masked: finite, >= lowest
    key = torch.where(masked, key, torch.full_like(key, -math.inf))  # unmasked: strictly last
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices  # (B, L)
    rank = torch.arange(L, device=masked.device).expand(B, L)
    take = (rank < k[:, None]) & masked.gather(-1, order)  # masked ones come first in `order`
    return torch.zeros_like(masked).scatter(-1, order, take)


def _check_inputs(logprobs, masked, k) -> torch.Tensor:
    """Validate shapes; return k as a (B,) long tensor on the device of `masked`. The samplers build these
    tensors, so a mismatch is a bug: ValueError with its traceback (user options are UserErrors)."""
    if logprobs.dim() != 3:
        raise ValueError(f"planner expects logprobs of shape (B, L, V), got {tuple(logprobs.shape)}")
    if masked.shape != logprobs.shape[:2] or masked.dtype != torch.bool:
        raise ValueError(
            f"planner expects `masked` as a bool tensor of shape {tuple(logprobs.shape[:2])}, "
            f"got {masked.dtype} {tuple(masked.shape)}")
    B = masked.shape[0]
    k = torch.as_tensor(k, device=masked.device)
    if k.dim() == 0:
        k = k.expand(B)
    if k.shape != (B,) or k.is_floating_point() or k.dtype == torch.bool:
        raise ValueError(f"planner expects k as an int or a (B,) = ({B},) integer tensor, got {k.dtype} "
                        f"{tuple(k.shape)}")
    if bool((k < 0).any()):
        raise ValueError(f"planner got a negative number of positions to commit: {k.tolist()}")
    return k.long()


def _number(value, what: str) -> float:
    """A finite float from a user option (a string from the command line is fine)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UserError(f"{what} must be finite, got {value!r}")
    return x


# ---------------------------------------------------------------------------------------------------
# planners


class Planner:
    """Base: `score` gives (B, L) scores, higher first; `__call__` takes the top k masked positions.

    `schedule` (linear or cosine, see `unmask_counts`) is how many positions the planned sampler asks for per
    step; every planner takes it through get_planner (COMMON_OPTIONS), beside its own `options`."""

    name = "planner"
    options: tuple[str, ...] = ()  # the planner's own keyword options (its constructor's)
    schedule = "linear"  # the commit schedule of the planned sampler (set by get_planner)

    def score(self, logprobs, candidates=None, generator=None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, logprobs: torch.Tensor, masked: torch.Tensor, k, *,
                 candidates: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        k = _check_inputs(logprobs, masked, k)
        return top_k_masked(self.score(logprobs, candidates, generator), masked, k)

    def __repr__(self) -> str:
        args = ", ".join(f"{o}={getattr(self, o)!r}" for o in self.options)
        return f"{type(self).__name__}({args})"


class RandomPlanner(Planner):
    """Uniformly random order: i.i.d. U(0, 1) scores (the vanilla masked-diffusion sampler)."""

    name = "random"

    def score(self, logprobs, candidates=None, generator=None):
        B, L, _ = logprobs.shape
        return torch.rand((B, L), generator=generator, device=logprobs.device)


class _PerturbedPlanner(Planner):
    """A deterministic score plus `gumbel` * Gumbel noise (Gumbel-top-k over softmax(score / gumbel))."""

    options = ("gumbel",)

    def __init__(self, gumbel: float = 0.0):
        g = _number(gumbel, f"{self.name} planner option gumbel")
        if g < 0:
            raise UserError(f"{self.name} planner option gumbel must be >= 0 (0 = deterministic), got {gumbel!r}")
        self.gumbel = g

    def base_score(self, logprobs, candidates) -> torch.Tensor:
        raise NotImplementedError

    def _noise_scale(self) -> float:
        return self.gumbel

    def score(self, logprobs, candidates=None, generator=None):
        s = self.base_score(logprobs, candidates)  # (B, L) float32
        c = self._noise_scale()
        if c == 0.0:
            return s  # exactly deterministic, and the generator is not advanced
        return s.double() + c * gumbel_noise(s.shape, generator, s.device)


class TopProbPlanner(_PerturbedPlanner):
    """Most confident first: score = max_v p(v) (Kim et al. 2025, "top probability")."""

    name = "top_prob"

    def base_score(self, logprobs, candidates):
        return top_prob_scores(logprobs)


class TopMarginPlanner(_PerturbedPlanner):
    """Least ambiguous first: score = p_(1) - p_(2) (Kim et al. 2025, "top probability margin")."""

    name = "top_margin"

    def base_score(self, logprobs, candidates):
        return top_margin_scores(logprobs)


class EntropyPlanner(_PerturbedPlanner):
    """Lowest entropy first: score = -H(p) = sum_v p(v) log p(v)."""

    name = "entropy"

    def base_score(self, logprobs, candidates):
        return neg_entropy_scores(logprobs)


class RDMPlanner(_PerturbedPlanner):
    """RDM routing (Zheng et al. 2024, "A Reparameterized Discrete Diffusion Model for Text Generation").

    score = log p(x~) of the token x~ the sampler proposes, plus `temperature` * Gumbel noise
    (stochastic routing); temperature 0 = deterministic top-k.
    """

    name = "rdm"
    options = ("temperature",)
    needs_candidates = True  # the sampler must propose tokens before the planner picks positions

    def __init__(self, temperature: float = 0.0):
        t = _number(temperature, "rdm planner option temperature")
        if t < 0:
            raise UserError(f"rdm planner option temperature must be >= 0 (0 = deterministic), got {temperature!r}")
        self.temperature = t

    def _noise_scale(self):
        return self.temperature

    def base_score(self, logprobs, candidates):
        if candidates is None:
            raise ValueError("the rdm planner scores the proposed tokens: pass candidates=(B, L) token ids")
        if candidates.shape != logprobs.shape[:2]:
            raise ValueError(f"rdm planner expects candidates of shape {tuple(logprobs.shape[:2])}, "
                            f"got {tuple(candidates.shape)}")
        return candidate_scores(logprobs, candidates)


class ConfidencePlanner(Planner):
    """Confidence threshold: commit every masked position with max_v p(v) >= threshold, ignoring k.

    At least one position (the most confident masked one) is committed in every row that still has
    masked positions, so decoding never stalls (as in Fast-dLLM's parallel decoding, Wu et al. 2025).
    """

    name = "confidence"
    options = ("threshold",)

    def __init__(self, threshold: float = 0.9):
        t = _number(threshold, "confidence planner option threshold")
        if not 0.0 < t <= 1.0:
            raise UserError(f"confidence planner option threshold must be in (0, 1], got {threshold!r}")
        self.threshold = t

    def score(self, logprobs, candidates=None, generator=None):
        return top_prob_scores(logprobs)

    def __call__(self, logprobs, masked, k=None, *, candidates=None, generator=None):
        # k is ignored, but a malformed one is still a bug worth reporting
        _check_inputs(logprobs, masked, 0 if k is None else k)
        conf = self.score(logprobs)  # (B, L) float32
        best = top_k_masked(conf, masked, torch.ones(masked.shape[0], dtype=torch.long, device=masked.device))
        return (masked & (conf >= self.threshold)) | best


# how many positions per step: counts.py (re-exported here, where callers have always found them)
from .counts import SCHEDULES, commit_counts, unmask_counts, unmask_counts_batch  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------------
# registry


PLANNERS = {
    "random": RandomPlanner,
    "top_prob": TopProbPlanner,
    "top_margin": TopMarginPlanner,
    "entropy": EntropyPlanner,
    "confidence": ConfidencePlanner,
    "rdm": RDMPlanner,
}


COMMON_OPTIONS = ("schedule",)  # options every planner takes (read by the planned sampler, not the score)


def _planner_class(name: str):
    key = str(name).strip().lower().replace("-", "_")
    if key not in PLANNERS:
        raise UserError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}")
    return key, PLANNERS[key]


def get_planner(name: str, **options) -> Planner:
    """A planner by name ("top-margin" and "top_margin" both work) with its keyword options (its own, and
    schedule=linear|cosine: the planned sampler's commit schedule)."""
    key, cls = _planner_class(name)
    unknown = sorted(set(options) - set(planner_options_of(key)))
    if unknown:
        raise UserError(f"planner {key} does not take option(s) {', '.join(unknown)}; its options: "
                        f"{', '.join(planner_options_of(key))}")
    own = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
    planner = cls(**own)
    schedule = str(options.get("schedule", "linear")).strip().lower()
    if schedule not in SCHEDULES:
        raise UserError(f"planner option schedule must be one of {', '.join(SCHEDULES)}, "
                        f"got {options['schedule']!r}")
    if schedule != Planner.schedule:
        planner.schedule = schedule  # the default stays a class attribute: repr and equality unchanged
    return planner


def planner_names() -> tuple[str, ...]:
    """The planner names get_planner accepts (for help texts)."""
    return tuple(PLANNERS)


def planner_options_of(name: str) -> tuple[str, ...]:
    """The option names planner `name` takes (its own, then COMMON_OPTIONS), for help texts and checks."""
    return (*_planner_class(name)[1].options, *COMMON_OPTIONS)


def parse_planner_options(items, planner: str = "top_margin", sampler: str = "planned") -> dict:
    """["k=v", ...] (the CLI's --planner-option) -> {k: v}, checked against the options of `planner` (or of
    the remask step rule when sampler == "remask"). Values stay strings; the constructors convert them."""
    if sampler == "remask":
        from .remask import RemaskRule

        what, valid = "the remask sampler", RemaskRule.options
    else:
        key = _planner_class(planner)[0]
        what, valid = f"planner {key}", planner_options_of(key)
    out = {}
    for item in items or ():
        name, eq, value = str(item).partition("=")
        name = name.strip()
        if not eq or not name:
            raise UserError(f"a planner option is written key=value, got {item!r}")
        if name not in valid:
            raise UserError(f"{what} does not take option {name!r}; its options: {', '.join(valid) or 'none'}")
        out[name] = value.strip()
    return out
