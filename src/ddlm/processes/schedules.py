"""Noise schedules for masked (absorbing) diffusion: alpha(t), the probability a token is still clean.

alpha(0) = 1 (data), alpha(1) ~ 0 (all masked). Every schedule gives alpha(t) and its derivative
alpha'(t) in closed form, so the continuous-time ELBO weight -alpha'(t) / (1 - alpha(t)) is exact
(Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", eq. 10).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError


class Schedule:
    """Base class: subclasses implement `alpha` and `dalpha` on tensors of t in [0, 1]."""

    name = "schedule"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight -alpha'(t) / (1 - alpha(t)) (1/t for the log-linear schedule)."""
        return -self.dalpha(t) / (1.0 - self.alpha(t)).clamp_min(1e-12)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LogLinear(Schedule):
    """alpha(t) = 1 - (1 - eps) t: sigma(t) = -log(1 - (1 - eps) t) is log-linear (MDLM's default)."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t):
        return torch.full_like(t, -(1.0 - self.eps))


class Linear(Schedule):
    """sigma(t) = sigma_min + t (sigma_max - sigma_min), alpha = exp(-sigma) (linear in the total noise)."""

    name = "linear"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def alpha(self, t):
        return torch.exp(-(self.sigma_min + t * (self.sigma_max - self.sigma_min)))

    def dalpha(self, t):
        return -(self.sigma_max - self.sigma_min) * self.alpha(t)


class Cosine(Schedule):
    """alpha(t) = eps + (1 - eps) cos(pi t / 2)."""

    name = "cosine"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t):
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * t)

    def dalpha(self, t):
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class Geometric(Schedule):
    """sigma(t) = sigma_min^(1-t) sigma_max^t, alpha = exp(-sigma) (the geometric schedule of SEDD)."""

    name = "geometric"

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def _sigma(self, t):
        return self.sigma_min ** (1.0 - t) * self.sigma_max**t

    def alpha(self, t):
        return torch.exp(-self._sigma(t))

    def dalpha(self, t):
        sigma = self._sigma(t)
        return -sigma * math.log(self.sigma_max / self.sigma_min) * torch.exp(-sigma)


SCHEDULES = {"loglinear": LogLinear, "linear": Linear, "cosine": Cosine, "geometric": Geometric}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise UserError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()
