"""The f-divergence registry, with the paper's names and argument order.

Every entry is an :class:`FDivergence`: D_f(q‖p) = Σ_i q_i · f(p_i / q_i), with q the
label-smoothed target q_y and p the classifier's distribution (PAPER.md §2). The names are the
paper's, which are the opposite of some textbooks' convention:

* ``rkl`` ("reverse KL"): f(u) = −log u, D = KL(q_y‖p) (mode covering);
* ``fkl`` ("forward KL"): f(u) = u·log u, D = KL(p‖q_y) (mode seeking);
* ``js`` (Jensen–Shannon), ``hellinger`` (squared Hellinger ½Σ(√p − √q)²), ``tv``, ``chi2``.

An entry is called with *log*-probabilities, ``d(log_q, log_p)``, and writes its generator on
l = log u (``f_log(l) = f(eᶫ)``): a classifier with a logit gap of 40 or more (normal for
ImageNet ResNets) has p_i far below any float32 clamp, and a clamp would delete exactly the
gradient the regularizer exists for. From ``log_softmax`` nothing is clamped, so e.g. the
``rkl`` term keeps its logit gradient q_y − p however saturated p is.

Entries where q_i = 0 (ε = 1, a one-hot target) contribute p_i · lim_{u→∞} f(u)/u
(``slope_at_infinity``): 0 for ``rkl``, ½·log 2 for ``js``, ½ for ``hellinger`` and ``tv``, and
+∞ for ``fkl`` and ``chi2``, whose D is then infinite.

Adding a divergence is one registry entry (plus one YAML file for ``guidance=<name>``)::

    register_divergence("neyman_chi2", f_divergence(lambda u: (u - 1) ** 2 / u))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import overload

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "DIVERGENCES",
    "RESERVED_NAMES",
    "FDivergence",
    "divergence",
    "divergence_names",
    "f_divergence",
    "label_smoothed_target",
    "log_label_smoothed_target",
    "register_divergence",
    "unregister_divergence",
]

LOG2 = math.log(2.0)


@dataclass(frozen=True)
class FDivergence:
    """D_f(q‖p) = Σ_i q_i f(p_i/q_i) per row, from log-probabilities of shape (B, K).

    ``f_log(l)`` is the generator evaluated at u = eˡ (written so that it stays finite for very
    negative l); ``slope_at_infinity`` = lim_{u→∞} f(u)/u weights p where q = 0.
    """

    f_log: Callable[[Tensor], Tensor]
    slope_at_infinity: float
    description: str = ""

    def f(self, u: Tensor) -> Tensor:
        """The generator on ratios u = p/q (for checks and plots)."""
        return self.f_log(torch.log(u))

    def __call__(self, log_q: Tensor, log_p: Tensor) -> Tensor:
        support = torch.isfinite(log_q)
        # Off the support the ratio is +∞; a harmless stand-in keeps autograd free of NaNs.
        log_ratio = torch.where(support, log_p - log_q, torch.zeros_like(log_p))
        inside = torch.where(
            support, log_q.exp() * self.f_log(log_ratio), torch.zeros_like(log_p)
        ).sum(dim=-1)
        if bool(support.all()):
            return inside
        p = log_p.exp()
        off_support = ~support & (p > 0)
        if math.isinf(self.slope_at_infinity):  # D = +∞, a constant: no graph (0·∞ is NaN)
            outside = torch.where(off_support, math.inf, 0.0).to(p.dtype)
        else:
            outside = torch.where(off_support, p * self.slope_at_infinity, torch.zeros_like(p))
        return inside + outside.sum(dim=-1)


RESERVED_NAMES: set[str] = set()
"""Names taken by guidance strategies (filled as :mod:`calguide.guidance.strategies` defines
them); a divergence may not take one, because ``build_strategy`` maps every divergence name to
a strategy."""

_REGISTRY: dict[str, FDivergence] = {}

DIVERGENCES: Mapping[str, FDivergence] = MappingProxyType(_REGISTRY)
"""Read-only live view of the registry (name -> divergence)."""


def divergence_names() -> tuple[str, ...]:
    """Registered divergence names, sorted."""
    return tuple(sorted(_REGISTRY))


@overload
def register_divergence(
    name: str, fn: None = None, *, overwrite: bool = False
) -> Callable[[FDivergence], FDivergence]: ...
@overload
def register_divergence(name: str, fn: FDivergence, *, overwrite: bool = False) -> FDivergence: ...
def register_divergence(
    name: str, fn: FDivergence | None = None, *, overwrite: bool = False
) -> FDivergence | Callable[[FDivergence], FDivergence]:
    """Register ``fn`` under ``name``; without ``fn``, return a decorator that does.

    A name can be registered once unless ``overwrite`` is set, so two entries never silently
    shadow each other; strategy names are refused for the same reason.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"divergence name must be an identifier-like string, got {name!r}")
    if name in RESERVED_NAMES:
        raise ValueError(
            f"{name!r} is a guidance strategy name and cannot name a divergence "
            f"(reserved: {sorted(RESERVED_NAMES)})"
        )

    def _register(d: FDivergence) -> FDivergence:
        if not isinstance(d, FDivergence):
            raise TypeError(
                f"divergence {name!r} must be an FDivergence (build one with f_divergence(f)), "
                f"got {type(d).__name__}"
            )
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"divergence {name!r} is already registered (pass overwrite=True)")
        _REGISTRY[name] = d
        return d

    return _register if fn is None else _register(fn)


def unregister_divergence(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use)."""
    if name not in _REGISTRY:
        raise KeyError(_unknown_message(name))
    del _REGISTRY[name]


def _unknown_message(name: str) -> str:
    return f"unknown divergence {name!r}; registered: {list(divergence_names())}"


def divergence(name: str) -> FDivergence:
    """The registered divergence ``name``; a ``KeyError`` lists the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(_unknown_message(name)) from None


def _check_eps(eps: float, num_classes: int) -> None:
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps (weight of the one-hot part of q_y) must be in [0, 1], got {eps}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def label_smoothed_target(
    labels: Tensor, num_classes: int, eps: float, *, dtype: torch.dtype | None = None
) -> Tensor:
    """q_y = (1 − ε)/K + ε·e_y, the paper's target: ε weights the one-hot part.

    ε = 1 is the one-hot label; ε = 0 the uniform distribution. Any ε < 1 keeps every q_i > 0.
    """
    _check_eps(eps, num_classes)
    dtype = dtype or torch.get_default_dtype()
    one_hot = F.one_hot(labels.long(), num_classes).to(dtype)
    return (1.0 - eps) / num_classes + eps * one_hot


def log_label_smoothed_target(
    labels: Tensor, num_classes: int, eps: float, *, dtype: torch.dtype | None = None
) -> Tensor:
    """log q_y, exact: log((1−ε)/K + ε) at y, log((1−ε)/K) elsewhere (−∞ at ε = 1)."""
    _check_eps(eps, num_classes)
    dtype = dtype or torch.get_default_dtype()
    off = math.log((1.0 - eps) / num_classes) if eps < 1.0 else -math.inf
    on = math.log((1.0 - eps) / num_classes + eps)
    one_hot = F.one_hot(labels.long(), num_classes).bool()
    return torch.where(one_hot, torch.tensor(on, dtype=dtype), torch.tensor(off, dtype=dtype))


def f_divergence(
    f: Callable[[Tensor], Tensor], *, slope_at_infinity: float = math.inf, description: str = ""
) -> FDivergence:
    """An :class:`FDivergence` from a generator f(u) on ratios (convex, f(1) = 0).

    f is evaluated at u = exp(log p − log q), so ratios that underflow reach it as 0; write the
    generator on log u (``FDivergence(f_log, ...)``) when that matters, as the built-ins do.
    ``slope_at_infinity`` (lim f(u)/u) is only used where q has zeros (ε = 1).
    """
    return FDivergence(
        lambda log_u: f(log_u.exp()),
        slope_at_infinity,
        description or f"f-divergence with generator {getattr(f, '__name__', repr(f))}",
    )


def _xlogx_of_log(log_u: Tensor) -> Tensor:
    """u·log u at u = e^l, exact for very negative l (where u underflows to 0)."""
    return log_u.exp() * log_u


register_divergence(
    "rkl",
    FDivergence(
        lambda log_u: -log_u,
        0.0,
        "the paper's RKL: KL(q_y‖p) = Σ q log(q/p), f(u) = −log u (mode covering)",
    ),
)
register_divergence(
    "fkl",
    FDivergence(
        _xlogx_of_log,
        math.inf,
        "the paper's FKL: KL(p‖q_y) = Σ p log(p/q), f(u) = u·log u (mode seeking)",
    ),
)
register_divergence(
    "js",
    FDivergence(
        # f(u) = ½[u log u − (u+1) log((u+1)/2)], with log(1 + u) = softplus(l).
        lambda log_u: (
            0.5 * (_xlogx_of_log(log_u) - (log_u.exp() + 1.0) * (F.softplus(log_u) - LOG2))
        ),
        0.5 * LOG2,
        "Jensen–Shannon: ½KL(q‖m) + ½KL(p‖m), m = (q+p)/2 (bounded by log 2)",
    ),
)
register_divergence(
    "hellinger",
    FDivergence(
        lambda log_u: 0.5 * torch.expm1(0.5 * log_u) ** 2,
        0.5,
        "squared Hellinger: ½Σ(√p − √q)², f(u) = ½(√u − 1)²",
    ),
)
register_divergence(
    "tv",
    FDivergence(
        lambda log_u: 0.5 * torch.expm1(log_u).abs(),
        0.5,
        "total variation: ½Σ|p − q|, f(u) = ½|u − 1|",
    ),
)
register_divergence(
    "chi2",
    FDivergence(
        lambda log_u: torch.expm1(log_u) ** 2,
        math.inf,
        "Pearson χ²: Σ(p − q)²/q, f(u) = (u − 1)²",
    ),
)
