"""The value of a partly decoded sequence for reward-guided decoding: the reward of its predicted clean
sequence, v(x_t) = r(x̂_0(x_t)), x̂_0 = the denoiser's most likely token at every masked position (the
posterior-mean approximation of SVDD, Li et al. 2024, arXiv 2408.08252, and of SMC's twisting potentials)."""

from __future__ import annotations

import math

import torch

from ..errors import UserError


def checked_reward(reward, name: str | None = None):
    """reward(tokens (N, L)) -> (N,) float64, checked: an exception inside the reward, a wrong shape or a NaN is
    a one-line UserError naming the reward (a user's function, not ddlm's code). -inf is allowed (impossible)."""
    label = name or getattr(reward, "__name__", None) or type(reward).__name__

    def call(tokens: torch.Tensor) -> torch.Tensor:
        try:
            out = reward(tokens)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  the user's code: say which reward and what it raised
            msg = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"the reward {label!r} raised {type(e).__name__}: {msg}") from None
        try:
            out = torch.as_tensor(out, dtype=torch.float64).reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError):
            raise UserError(f"the reward {label!r} must return one number per sequence, got {type(out).__name__}") from None
        if out.numel() != tokens.shape[0]:
            raise UserError(f"the reward {label!r} returned {out.numel()} values for {tokens.shape[0]} sequences; "
                            "return one number per sequence")
        if bool(torch.isnan(out).any()) or bool(torch.isposinf(out).any()):
            raise UserError(f"the reward {label!r} returned NaN or +inf; return finite numbers (or -inf for "
                            "impossible sequences)")
        return out

    return call


class PredictedReward:
    """value(x (N, L), t, rows=None) -> (N,) float64: the reward of x̂_0, where every masked position of x takes the
    denoiser's argmax (one network call on the rows that still have a masked position; a finished row is
    its own x̂_0). `nfe` and `row_evals` count the calls.

    backbone(x, t) -> logits (a `Conditioned` one for a labelled run), process: log_probs, is_masked;
    reward(tokens (N, L)) -> (N,)."""

    def __init__(self, backbone, process, reward, name: str | None = None):
        self.backbone, self.process = backbone, process
        self.reward = checked_reward(reward, name)
        self.nfe = self.row_evals = 0

    @torch.no_grad()
    def clean(self, x: torch.Tensor, t: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x̂_0 (N, L): x with its masked positions replaced by the denoiser's argmax. rows (N,): the run's row
        each x row is a candidate of (None: row i of x is the run's row i), for a backbone with per-row state
        (labels)."""
        masked = self.process.is_masked(x)  # (N, L)
        rows_ = masked.any(-1).nonzero()[:, 0]
        if len(rows_) == 0:
            return x
        if hasattr(self.backbone, "select_rows"):
            self.backbone.select_rows(rows_ if rows is None else rows.to(rows_.device)[rows_])
        rows = rows_
        tt = torch.full((len(rows),), float(t), device=x.device)
        logp = self.process.log_probs(self.backbone(x[rows], tt))  # (n, L, V)
        self.nfe += 1
        self.row_evals += len(rows)
        out = x.clone()
        out[rows] = torch.where(masked[rows], logp.argmax(-1), x[rows])
        return out

    def __call__(self, x: torch.Tensor, t: float, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.reward(self.clean(x, t, rows))


def check_alpha(alpha, what: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise UserError(f"{what} must be a number >= 0 (0 = keep the best), got {alpha!r}")
    return float(alpha)


def require_masked_diffusion(model, method: str, name: str = "this model") -> None:
    """A UserError unless `model` is a masked-diffusion (mdlm) SequenceModel: reward fine-tuning (DRAKES, GRPO)
    walks MDLM's reverse process and scores with its ELBO."""
    process = model.process
    if getattr(process, "mask_id", None) is None or model.family.causal or not hasattr(process, "schedule"):
        raise UserError(f"{method} fine-tunes a masked-diffusion model (mdlm); {name} is a {model.family.name} "
                        "model")
