"""Guidance-scale schedules s(t) on base-chain timesteps t ∈ [0, T).

Every schedule is ``scale × factor(t)``, with ``factor`` a dimensionless shape, and returns one
value per sample (shape (B,)). The sampler multiplies s(t)·g by Σ_t (DDPM) or √(1−ᾱ_t) (DDIM),
so a schedule only reshapes the strength over the chain. Sampling runs from t = T−1 (pure
noise) down to t = 0.

* ``constant``: factor 1.
* ``linear``: factor goes linearly from ``start`` at t = T−1 to ``end`` at t = 0, i.e.
  end + (start − end)·t/(T−1). The defaults (start 1, end 0) give s·t/(T−1) ≈ s·t/T.
* ``sin``: factor 1 + γ·sin(π t/T), a bump of relative height γ in the middle of the chain.
  This is the multiplicative form of EluCD's schedule. EluCD adds γ·sin(πt/T)·max Σ to the
  variance Σ_t that scales the gradient, i.e. factor 1 + γ·sin(πt/T)·max Σ / Σ_t, which needs
  the diffusion's variances; that variant is not what ``sin`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "LinearSchedule",
    "Schedule",
    "SinSchedule",
    "build_schedule",
    "constant_factor",
    "linear_factor",
    "sin_factor",
]

Schedule = Callable[[Tensor, int], Tensor]
"""``(t, T) -> s(t)`` of shape (B,), for base-chain timesteps ``t``."""


def _check_t(t: Tensor, num_timesteps: int) -> Tensor:
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    return t.reshape(-1).to(torch.float32)


def constant_factor(t: Tensor, num_timesteps: int) -> Tensor:
    """1 everywhere."""
    return torch.ones_like(_check_t(t, num_timesteps))


def linear_factor(t: Tensor, num_timesteps: int, start: float = 1.0, end: float = 0.0) -> Tensor:
    """``start`` at t = T−1 (first step), ``end`` at t = 0 (last step), linear in between."""
    u = _check_t(t, num_timesteps) / max(num_timesteps - 1, 1)
    return end + (start - end) * u.clamp(0.0, 1.0)


def sin_factor(t: Tensor, num_timesteps: int, gamma: float = 1.0) -> Tensor:
    """1 + γ·sin(π t/T): zero extra at both ends of the chain, 1+γ in the middle."""
    return 1.0 + gamma * torch.sin(math.pi * _check_t(t, num_timesteps) / num_timesteps)


def _check_finite(key: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"guidance.{key} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class ConstantSchedule:
    scale: float

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * constant_factor(t, num_timesteps)


@dataclass(frozen=True)
class LinearSchedule:
    scale: float
    start: float = 1.0
    end: float = 0.0

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * linear_factor(t, num_timesteps, self.start, self.end)


@dataclass(frozen=True)
class SinSchedule:
    scale: float
    gamma: float = 1.0

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * sin_factor(t, num_timesteps, self.gamma)


SCHEDULES: dict[str, type] = {
    "constant": ConstantSchedule,
    "linear": LinearSchedule,
    "sin": SinSchedule,
}


def build_schedule(name: str, scale: float, **params: Any) -> Schedule:
    """The schedule ``name`` with base scale ``scale`` and shape knobs ``params``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {name!r}; choose one of {list(SCHEDULES)}")
    cls = SCHEDULES[name]
    allowed = [f for f in cls.__dataclass_fields__ if f != "scale"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"guidance schedule {name!r} got unknown parameter(s) {unknown}; allowed: {allowed}"
        )
    checked = {k: _check_finite(f"schedule.{k}", v) for k, v in params.items()}
    return cls(_check_finite("scale", scale), **checked)
