"""Guidance-scale schedules: how strong the guidance is at each step of the chain.

The DDPM mean shift is μ + (Σ_t + a_i)·s(t)·g (DESIGN §6; ADM's ``condition_mean`` when
a_i = 0). A schedule supplies both parts:

* ``scale(t, T)``: s(t) per sample, on base-chain timesteps t ∈ [0, T);
* ``extra_variance(index, num_steps, variance_max)``: the additive a_i, or ``None`` for none.
  ``index`` is the respaced step index i (N−1 … 0), ``num_steps`` the respaced step count N and
  ``variance_max`` the running maximum Σ_max of the model variance seen so far in the chain,
  per sample (the sampler tracks it, see :func:`calguide.diffusion.steps.ddpm_step`).

Schedules:

* ``constant``: s(t) = s, a = 0 — ADM-G, bit for bit.
* ``linear``: s(t) goes linearly from s·start at t = T−1 to s·end at t = 0, a = 0.
* ``elucd``: EluCD's schedule (PAPER.md §6): s(t) = s and a_i = max(sin(π·i/N)·Σ_max·γ, 0),
  γ = 0.3 in EluCD's recipe. EluCD reads Σ_max from one pixel of the batch's first sample; here
  each sample uses its own first element, so a sample does not depend on its batch (with
  ADM's fixed or learned variances the two agree whenever the batch's samples agree there).
* ``sin``: a multiplicative bump s(t) = s·(1 + γ·sin(π t/T)), a = 0. Not EluCD's schedule
  (which adds to the variance); kept as its own shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

__all__ = [
    "SCHEDULES",
    "ConstantSchedule",
    "EluCDSchedule",
    "LinearSchedule",
    "Schedule",
    "SinSchedule",
    "build_schedule",
    "constant_factor",
    "elucd_extra_variance",
    "linear_factor",
    "sin_factor",
]


class Schedule(Protocol):
    """s(t) per sample, and the additive variance a_i (``None``: none). ``additive`` says
    whether a_i can be non-zero, i.e. whether the schedule needs the DDPM step's variance."""

    additive: bool

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor: ...

    def extra_variance(
        self, index: Tensor, num_steps: int, variance_max: Tensor
    ) -> Tensor | None: ...


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


def elucd_extra_variance(
    index: Tensor, num_steps: int, variance_max: Tensor, gamma: float = 0.3
) -> Tensor:
    """a_i = max(sin(π·i/N)·Σ_max·γ, 0): EluCD's additive variance at respaced step i of N."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    phase = torch.sin(math.pi * index.reshape(-1).to(variance_max.dtype) / num_steps)
    return (phase * variance_max.reshape(-1) * gamma).clamp_min(0.0)


def _check_finite(key: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"guidance.{key} must be a finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class _Multiplicative:
    """Base of the schedules that only reshape s(t) (no additive variance)."""

    additive: ClassVar[bool] = False

    def extra_variance(self, index: Tensor, num_steps: int, variance_max: Tensor) -> None:
        return None


@dataclass(frozen=True)
class ConstantSchedule(_Multiplicative):
    name: ClassVar[str] = "constant"
    scale: float

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * constant_factor(t, num_timesteps)


@dataclass(frozen=True)
class LinearSchedule(_Multiplicative):
    name: ClassVar[str] = "linear"
    scale: float
    start: float = 1.0
    end: float = 0.0

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * linear_factor(t, num_timesteps, self.start, self.end)


@dataclass(frozen=True)
class SinSchedule(_Multiplicative):
    name: ClassVar[str] = "sin"
    scale: float
    gamma: float = 1.0

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * sin_factor(t, num_timesteps, self.gamma)


@dataclass(frozen=True)
class EluCDSchedule:
    name: ClassVar[str] = "elucd"
    additive: ClassVar[bool] = True
    scale: float
    gamma: float = 0.3

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ValueError(f"guidance.schedule_params.gamma must be >= 0, got {self.gamma!r}")

    def __call__(self, t: Tensor, num_timesteps: int) -> Tensor:
        return self.scale * constant_factor(t, num_timesteps)

    def extra_variance(self, index: Tensor, num_steps: int, variance_max: Tensor) -> Tensor:
        return elucd_extra_variance(index, num_steps, variance_max, self.gamma)


SCHEDULES: dict[str, type] = {
    "constant": ConstantSchedule,
    "linear": LinearSchedule,
    "elucd": EluCDSchedule,
    "sin": SinSchedule,
}


def build_schedule(name: str, scale: float, **params: Any) -> Schedule:
    """The schedule ``name`` with base scale ``scale`` and shape knobs ``params``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {name!r}; choose one of {list(SCHEDULES)}")
    cls = SCHEDULES[name]
    allowed = [f.name for f in fields(cls) if f.name != "scale"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"guidance schedule {name!r} got unknown parameter(s) {unknown}; allowed: {allowed}"
        )
    checked = {k: _check_finite(f"schedule_params.{k}", v) for k, v in params.items()}
    return cls(_check_finite("scale", scale), **checked)
