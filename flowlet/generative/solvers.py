"""Fixed-step ODE solvers for dx/dt = v(x, t) from t = 0 (noise) to t = 1 (data), and guidance.

Steps sit on t_i = i/N. Explicit Euler (x <- x + v(x, t_i)/N) reproduces the reference sampler; Heun
and midpoint are second order and cost two network evaluations per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from tqdm.auto import tqdm

from flowlet.errors import FlowletError
from flowlet.generative.requests import SOLVER_METHODS

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def integrate(
    velocity_fn: VelocityFn, x0: torch.Tensor, num_steps: int, method: str = "euler", progress: bool = False
) -> torch.Tensor:
    """Integrate from t = 0 to 1 in ``num_steps`` steps; ``velocity_fn(x, t_batch)`` gets t of shape (N,)."""
    if method not in SOLVER_METHODS:
        raise FlowletError(f"unknown solver '{method}'; choose one of {list(SOLVER_METHODS)}")
    if num_steps < 1:
        raise FlowletError(f"num_steps must be at least 1, got {num_steps}")
    dt = 1.0 / num_steps
    batch = x0.shape[0]

    def times(value: float) -> torch.Tensor:
        return torch.full((batch,), value, dtype=x0.dtype, device=x0.device)

    x = x0
    for step in tqdm(range(num_steps), desc=f"{method} sampling", disable=not progress, leave=False):
        t = step * dt
        v = velocity_fn(x, times(t))
        if method == "euler":
            x = x + dt * v
        elif method == "heun":
            predicted = x + dt * v
            x = x + 0.5 * dt * (v + velocity_fn(predicted, times((step + 1) * dt)))
        else:
            x = x + dt * velocity_fn(x + 0.5 * dt * v, times(t + 0.5 * dt))
    return x


def apply_guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_u + s (v_c - v_u); s = 1 is the conditional velocity, s = 0 the unconditional."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided_velocity(
    model: torch.nn.Module, conditions: Mapping[str, torch.Tensor], guidance_scale: float = 1.0
) -> VelocityFn:
    """``velocity_fn`` for :func:`integrate` from a FlowUNet and normalised (N, 1) conditions.

    With ``guidance_scale != 1`` the conditional and unconditional (null-embedding) velocities are
    evaluated in one doubled batch and combined by :func:`apply_guidance`; the model must have been
    trained with condition dropout.
    """
    if guidance_scale == 1.0:
        return lambda x, t: model(x, t, conditions)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        doubled = {name: torch.cat([value, value]) for name, value in conditions.items()}
        drop = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)]).to(x.device)
        v_cond, v_uncond = model(torch.cat([x, x]), torch.cat([t, t]), doubled, drop_conditions=drop).chunk(2)
        return apply_guidance(v_cond, v_uncond, guidance_scale)

    return velocity
