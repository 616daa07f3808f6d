"""Probability paths from noise (t = 0) to data (t = 1) and the velocity each one trains the network on.

Every path exposes ``sample_path(x0, x1, t) -> (x_t, target_velocity)`` with x0 ~ N(0, I), x1 the data
and t of shape (N,). All targets are dx_t/dt in the same convention, so one ODE solver integrates any of
them from t = 0 to t = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flowlet.errors import FlowletError

TimeSampler = Callable[..., torch.Tensor]


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class RectifiedFlow:
    """Straight line x_t = (1 - t) x0 + t x1 with constant target x1 - x0 (the paper's main "rfm")."""

    name = "rectified"
    default_time_sampling = "uniform"

    def sample_path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tt = _per_sample(t, x0)
        return (1 - tt) * x0 + tt * x1, x1 - x0


class ConditionalFlowMatching:
    """Same straight path, target written as (x1 - x_t)/(1 - t) with no sigma_min, as in the reference.

    Analytically this equals x1 - x0; the division is kept so the formulation matches the paper, with
    1 - t bounded below to stay finite as t -> 1.
    """

    name = "cfm"
    default_time_sampling = "uniform"
    min_remaining_time = 1e-5

    def sample_path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tt = _per_sample(t, x0)
        x_t = (1 - tt) * x0 + tt * x1
        return x_t, (x1 - x_t) / (1 - tt).clamp_min(self.min_remaining_time)


class TrigonometricFlow:
    """x_t = cos(pi t/2) x0 + sin(pi t/2) x1, target (pi/2)(cos(pi t/2) x1 - sin(pi t/2) x0)."""

    name = "trigonometric"
    default_time_sampling = "uniform"

    def sample_path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angle = _per_sample(t, x0) * (math.pi / 2)
        cos, sin = torch.cos(angle), torch.sin(angle)
        return cos * x0 + sin * x1, (math.pi / 2) * (cos * x1 - sin * x0)


class VPDiffusionFlow:
    """Lipman et al. (2023) variance-preserving path with beta linear from beta_min to beta_max.

    With s = 1 - t, T(s) = beta_min s + (beta_max - beta_min) s^2 / 2 and alpha = exp(-T(s)/2):
    x_t = alpha x1 + sigma x0, sigma = sqrt(1 - alpha^2). The target is dx_t/dt
    = (beta(s) alpha / 2) x1 - (beta(s) alpha^2 / (2 sigma)) x0, which diverges at t = 1, so t is
    capped at 1 - 1e-5.
    """

    name = "vp_diffusion"
    default_time_sampling = "stratified"
    max_time = 1.0 - 1e-5

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = beta_min
        self.beta_max = beta_max

    def sample_path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Work in float64 so 1 - alpha^2 keeps its precision near t = 1.
        s = 1 - _per_sample(t, x0).double().clamp(max=self.max_time)
        integral = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2
        beta = self.beta_min + (self.beta_max - self.beta_min) * s
        alpha = torch.exp(-0.5 * integral)
        sigma = torch.sqrt(-torch.expm1(-integral))
        d_alpha = 0.5 * beta * alpha
        d_sigma = -0.5 * beta * alpha**2 / sigma
        alpha, sigma, d_alpha, d_sigma = (v.to(x0.dtype) for v in (alpha, sigma, d_alpha, d_sigma))
        return alpha * x1 + sigma * x0, d_alpha * x1 + d_sigma * x0


FLOWS = {
    "rectified": RectifiedFlow,
    "cfm": ConditionalFlowMatching,
    "trigonometric": TrigonometricFlow,
    "vp_diffusion": VPDiffusionFlow,
}
FLOW_ALIASES = {"rfm": "rectified", "trig": "trigonometric", "vp": "vp_diffusion"}
FLOW_NAMES = tuple(FLOWS)


def get_flow(name: str):
    """A probability path by name: rectified (alias rfm), cfm, trigonometric (trig), vp_diffusion (vp)."""
    key = FLOW_ALIASES.get(name, name)
    if key not in FLOWS:
        raise FlowletError(f"unknown flow type '{name}'; choose one of {list(FLOW_NAMES)} (aliases {FLOW_ALIASES})")
    return FLOWS[key]()


def _uniform(n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator)


def _logit_normal(n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """sigmoid(N(0, 1)): concentrates training on intermediate t (Esser et al. 2024)."""
    return torch.sigmoid(torch.randn(n, device=device, generator=generator))


def _stratified(n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniform draw inside each of n equal strata of [0, 1]: lower-variance batch coverage."""
    offsets = torch.rand(n, device=device, generator=generator)
    return (torch.arange(n, device=device, dtype=offsets.dtype) + offsets) / n


TIME_SAMPLERS = {"uniform": _uniform, "logit_normal": _logit_normal, "stratified": _stratified}


def time_sampler(name: str) -> TimeSampler:
    """``sampler(n, device=None, generator=None) -> t`` of shape (n,) in [0, 1]."""
    if name not in TIME_SAMPLERS:
        raise FlowletError(f"unknown time sampling '{name}'; choose one of {list(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[name]
