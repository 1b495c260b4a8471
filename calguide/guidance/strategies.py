"""Guidance strategies: per-sample objectives J whose input gradient is the guidance direction.

A strategy sees only the classifier's logits (already divided by the temperature τ_c), the
target labels and the base-chain timesteps. It never knows which sampler or which input space
is used; :class:`~calguide.guidance.hook.ClassifierGuidance` differentiates ΣJ w.r.t. the
classifier's input. Detached factors (λ in ``entropy``, the weights in ``tilted``) are constants
of that gradient, as in the paper.

Adding a strategy is one subclass of :class:`GuidanceStrategy` with a ``name`` (it registers
itself in :data:`STRATEGIES`) plus one YAML file; adding a divergence needs only a registry
entry (see :mod:`calguide.guidance.divergences`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from calguide.guidance.divergences import (
    DIVERGENCES,
    RESERVED_NAMES,
    divergence_names,
    label_smoothed_target,
)
from calguide.guidance.divergences import divergence as get_divergence

__all__ = [
    "ENTROPY_ADAPT",
    "STRATEGIES",
    "DivergenceGuidance",
    "EluCD",
    "Entropy",
    "GuidanceStrategy",
    "NoGuidance",
    "Tilted",
    "Vanilla",
    "build_strategy",
    "entropy",
    "strategy_names",
    "target_log_prob",
    "unregister_strategy",
]

ENTROPY_ADAPT = ("constant", "time", "confidence")


def _float(logits: Tensor) -> Tensor:
    """Half-precision logits are promoted: saturated softmaxes need float32 range and bits."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def target_log_prob(logits: Tensor, labels: Tensor) -> Tensor:
    """log p_y = z_y − logsumexp(z) per row (stable for saturated classifiers)."""
    log_p = torch.log_softmax(_float(logits), dim=-1)
    return log_p.gather(-1, labels.long().view(-1, 1)).squeeze(-1)


def entropy(logits: Tensor) -> Tensor:
    """H(p) = −Σ p log p per row, computed from log-softmax so p_k → 0 terms vanish cleanly."""
    log_p = torch.log_softmax(_float(logits), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def _check_finite(key: str, value: float) -> None:
    if not math.isfinite(float(value)):
        raise ValueError(f"guidance.{key} must be a finite number, got {value!r}")


def _check_positive(key: str, value: float) -> None:
    if not (math.isfinite(float(value)) and value > 0):
        raise ValueError(f"guidance.{key} must be a finite number > 0, got {value!r}")


STRATEGIES: dict[str, type[GuidanceStrategy]] = {}
"""Config name -> strategy class; every subclass that sets ``name`` registers itself here
(divergence names are mapped to :class:`DivergenceGuidance` by :func:`build_strategy`)."""


def _register_strategy(name: str, cls: type[GuidanceStrategy]) -> None:
    if name in DIVERGENCES:
        raise ValueError(f"strategy name {name!r} is already a registered divergence")
    old = STRATEGIES.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"strategy name {name!r} is already taken by {old.__qualname__}")
    STRATEGIES[name] = cls
    RESERVED_NAMES.add(name)


def unregister_strategy(name: str) -> None:
    """Remove a strategy name (for tests and interactive use)."""
    STRATEGIES.pop(name)
    RESERVED_NAMES.discard(name)


@dataclass(frozen=True)
class GuidanceStrategy:
    """Base class. ``objective`` returns J of shape (B,); g = ∇ ΣJ.

    Subclasses are frozen dataclasses whose fields are the config knobs; one that sets a
    ``name`` class attribute becomes available to :func:`build_strategy` under that name.
    Annotate it ``name: ClassVar[str]`` with ``ClassVar`` imported at module level, or the
    dataclass machinery turns it into a field.
    """

    name: ClassVar[str] = "base"
    is_active: ClassVar[bool] = True
    # True when sample i's gradient depends on the other samples of its batch.
    batch_dependent: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str):
            _register_strategy(name, cls)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class NoGuidance(GuidanceStrategy):
    """Unguided baseline. ``make_guidance`` turns it into ``guidance=None`` for the sampler."""

    name: ClassVar[str] = "none"
    is_active: ClassVar[bool] = False

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        # A constant times the logits: J = 0 with a well-defined, all-zero gradient.
        return 0.0 * logits.sum(dim=-1)


@dataclass(frozen=True)
class Vanilla(GuidanceStrategy):
    """J = log p_y (ADM classifier guidance)."""

    name: ClassVar[str] = "vanilla"

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        return target_log_prob(logits, labels)


@dataclass(frozen=True)
class EluCD(GuidanceStrategy):
    """J = T₁·z_y − logsumexp(T₂·z) with T₂ = T₁·δ (EluCD's joint / marginal temperatures).

    δ < 1 flattens the normaliser, so the gradient keeps pushing z_y up after p_y saturates.
    T₁ = δ = 1 is vanilla.
    """

    name: ClassVar[str] = "elucd"
    t1: float = 1.0
    delta: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("t1", self.t1)
        _check_positive("delta", self.delta)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        z = _float(logits)
        z_y = z.gather(-1, labels.long().view(-1, 1)).squeeze(-1)
        return self.t1 * z_y - torch.logsumexp(self.t1 * self.delta * z, dim=-1)


@dataclass(frozen=True)
class Entropy(GuidanceStrategy):
    """J = log p_y + λ·H(p), λ = λ₀·a detached (adaptive entropy-regularised guidance).

    ``adapt``: ``constant`` a = 1; ``time`` a = t/T (strong at high noise, where classifiers
    are over-confident and log p_y's gradient vanishes); ``confidence`` a = 1 − H(p)/log K
    (strong exactly when p is peaked).
    """

    name: ClassVar[str] = "entropy"
    lambda0: float = 0.1
    adapt: str = "constant"

    def __post_init__(self) -> None:
        _check_finite("lambda0", self.lambda0)
        if self.adapt not in ENTROPY_ADAPT:
            raise ValueError(
                f"guidance.adapt must be one of {list(ENTROPY_ADAPT)}, got {self.adapt!r}"
            )

    def weight(self, h: Tensor, t: Tensor, num_timesteps: int, num_classes: int) -> Tensor:
        """λ(t, p) per sample, without gradient."""
        h = h.detach()
        if self.adapt == "time":
            a = t.to(h.dtype) / num_timesteps
        elif self.adapt == "confidence":
            a = 1.0 - h / math.log(num_classes) if num_classes > 1 else torch.zeros_like(h)
        else:
            a = torch.ones_like(h)
        return self.lambda0 * a.expand_as(h)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        h = entropy(logits)
        lam = self.weight(h, t, num_timesteps, logits.shape[-1])
        return target_log_prob(logits, labels) + lam * h


@dataclass(frozen=True)
class Tilted(GuidanceStrategy):
    """Batch-tilted guidance: g_i = B·w_i·∇ log p_{y_i}, w = softmax_i(τ·ℓ_i), ℓ_i = −log p_{y_i}.

    τ > 0 gives the samples the classifier finds hardest more of the guidance budget; τ < 0 the
    easiest; τ = 0 is vanilla. Samples therefore depend on which other samples share their batch
    (by design): results change with batch size and device count, unlike every other strategy.
    """

    name: ClassVar[str] = "tilted"
    batch_dependent: ClassVar[bool] = True
    tau: float = 1.0

    def __post_init__(self) -> None:
        _check_finite("tau", self.tau)

    def weights(self, log_p_y: Tensor) -> Tensor:
        """w_i = softmax over the batch of τ·ℓ_i, detached."""
        return torch.softmax(-self.tau * log_p_y.detach(), dim=0)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        log_p_y = target_log_prob(logits, labels)
        return log_p_y.shape[0] * self.weights(log_p_y) * log_p_y


@dataclass(frozen=True)
class DivergenceGuidance(GuidanceStrategy):
    """J = β·log p_y − γ·D(p, q), q the ε-label-smoothed target, D from the registry.

    The strategy's name is the divergence's name (``js``, ``reverse_kl``, ...). ``smoothing``
    ε > 0 keeps q strictly positive; divergences that divide by q or take log q (``chi2``,
    ``reverse_kl``, ``js``) get very large gradients at ε = 0.
    """

    divergence: str = "js"
    beta: float = 1.0
    gamma: float = 1.0
    smoothing: float = 0.1

    def __post_init__(self) -> None:
        get_divergence(self.divergence)  # fail early with the list of registered names
        _check_finite("beta", self.beta)
        _check_finite("gamma", self.gamma)
        if not 0.0 <= self.smoothing <= 1.0:
            raise ValueError(f"guidance.smoothing must be in [0, 1], got {self.smoothing!r}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.divergence

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        z = _float(logits)
        p = torch.softmax(z, dim=-1)
        q = label_smoothed_target(labels, z.shape[-1], self.smoothing, dtype=p.dtype)
        d = get_divergence(self.divergence)(p, q)
        return self.beta * target_log_prob(z, labels) - self.gamma * d


def strategy_names() -> tuple[str, ...]:
    """Every name ``build_strategy`` accepts: the strategies, then the registered divergences."""
    return (*STRATEGIES, *divergence_names())


def build_strategy(name: str, **params: Any) -> GuidanceStrategy:
    """The strategy for config name ``name`` with knobs ``params``.

    Every registered divergence name maps to :class:`DivergenceGuidance` (``beta``, ``gamma``,
    ``smoothing``). Unknown names and unknown knobs raise a ``ValueError`` that lists the
    allowed ones.
    """
    if name in STRATEGIES:
        cls: type[GuidanceStrategy] = STRATEGIES[name]
    elif name in divergence_names():
        cls = DivergenceGuidance
        if "divergence" in params and params["divergence"] != name:
            raise ValueError(
                f"guidance {name!r} got divergence={params['divergence']!r}; drop the key"
            )
        params = {**params, "divergence": name}
    else:
        raise ValueError(f"unknown guidance {name!r}; choose one of {list(strategy_names())}")
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        shown = [k for k in allowed if k != "divergence"]
        raise ValueError(f"guidance {name!r} got unknown parameter(s) {unknown}; allowed: {shown}")
    return cls(**params)
