"""The f-divergence registry: D(p, q) per row for probability rows p, q of shape (B, K).

Every entry maps ``(p, q) -> (B,)``. ``p`` is the classifier's distribution and ``q`` the
(label-smoothed) target, so D(p, q) is always read "divergence of p from q"; for an
f-divergence, D_f(P‖Q) = Σ_k Q_k f(P_k / Q_k) with P = p and Q = q.

Logs and divisions see probabilities clamped at :data:`EPS`, square roots at
:data:`SQRT_EPS`, so values and gradients stay finite (in float32 and float64) when a softmax
puts ~1e-30, or an exact 0 after float32 underflow, on a class. The clamps move a value by at
most ~K·1e-10, far below anything guidance sees (the exception is ``chi2`` with some q_k < EPS,
whose true value is huge or infinite; label smoothing avoids that case).

Adding a divergence is one registry entry::

    register_divergence("neyman_chi2", f_divergence(lambda u: (u - 1) ** 2 / u))

after which ``build_strategy("neyman_chi2")`` and ``guidance=neyman_chi2`` (with a YAML file)
work with no other change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import overload

import torch
from torch import Tensor

__all__ = [
    "DIVERGENCES",
    "EPS",
    "RESERVED_NAMES",
    "SQRT_EPS",
    "Divergence",
    "divergence",
    "divergence_names",
    "f_divergence",
    "label_smoothed_target",
    "register_divergence",
    "unregister_divergence",
]

Divergence = Callable[[Tensor, Tensor], Tensor]
"""``(p, q) -> (B,)``: the divergence of each row of ``p`` from the same row of ``q``."""

EPS = 1e-12
"""Floor for probabilities inside logs and divisions (float32-safe: 1/EPS is finite)."""

SQRT_EPS = 1e-30
"""Floor inside square roots: √ of the floor (1e-15) is a negligible value error, while the
derivative 1/(2√x) stays finite."""

RESERVED_NAMES: set[str] = set()
"""Names taken by guidance strategies (filled as :mod:`calguide.guidance.strategies` defines
them); a divergence may not take one, because ``build_strategy`` maps every divergence name to
a strategy."""

_REGISTRY: dict[str, Divergence] = {}

DIVERGENCES: Mapping[str, Divergence] = MappingProxyType(_REGISTRY)
"""Read-only live view of the registry (name -> function)."""


def divergence_names() -> tuple[str, ...]:
    """Registered divergence names, sorted."""
    return tuple(sorted(_REGISTRY))


@overload
def register_divergence(
    name: str, fn: None = None, *, overwrite: bool = False
) -> Callable[[Divergence], Divergence]: ...
@overload
def register_divergence(name: str, fn: Divergence, *, overwrite: bool = False) -> Divergence: ...
def register_divergence(
    name: str, fn: Divergence | None = None, *, overwrite: bool = False
) -> Divergence | Callable[[Divergence], Divergence]:
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

    def _register(f: Divergence) -> Divergence:
        if not callable(f):
            raise TypeError(f"divergence {name!r} must be callable, got {type(f).__name__}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"divergence {name!r} is already registered (pass overwrite=True)")
        _REGISTRY[name] = f
        return f

    return _register if fn is None else _register(fn)


def unregister_divergence(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive use)."""
    if name not in _REGISTRY:
        raise KeyError(_unknown_message(name))
    del _REGISTRY[name]


def _unknown_message(name: str) -> str:
    return f"unknown divergence {name!r}; registered: {list(divergence_names())}"


def divergence(name: str) -> Divergence:
    """The registered divergence ``name``; a ``KeyError`` lists the registered names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(_unknown_message(name)) from None


def label_smoothed_target(
    labels: Tensor, num_classes: int, eps: float, *, dtype: torch.dtype | None = None
) -> Tensor:
    """q = (1 − ε)·e_y + ε/K: a one-hot target with mass ε spread uniformly.

    ε > 0 keeps every q_k positive, which divergences dividing by q (``chi2``) or taking
    log q (``reverse_kl``, ``js``) need to stay moderate.
    """
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label smoothing eps must be in [0, 1], got {eps}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    dtype = dtype or torch.get_default_dtype()
    one_hot = torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)
    return (1.0 - eps) * one_hot + eps / num_classes


def _log(x: Tensor) -> Tensor:
    return torch.log(x.clamp_min(EPS))


def _kl(a: Tensor, b: Tensor) -> Tensor:
    """KL(a‖b) per row; rows where a_k = 0 contribute exactly 0 (and a finite gradient)."""
    return (a * (_log(a) - _log(b))).sum(dim=-1)


def f_divergence(f: Callable[[Tensor], Tensor]) -> Divergence:
    """Build D_f(p‖q) = Σ_k q_k f(p_k/q_k) from a convex generator f with f(1) = 0.

    The ratio is formed from clamped probabilities, so ``f`` is only ever evaluated on
    positive numbers (``lambda u: u * torch.log(u)`` is fine as it is).
    """

    def d_f(p: Tensor, q: Tensor) -> Tensor:
        ratio = p.clamp_min(EPS) / q.clamp_min(EPS)
        return (q * f(ratio)).sum(dim=-1)

    d_f.__doc__ = f"f-divergence with generator {getattr(f, '__name__', repr(f))}"
    return d_f


@register_divergence("forward_kl")
def forward_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(q‖p) = Σ q log(q/p): mass-covering; with one-hot q it is −log p_y."""
    return _kl(q, p)


@register_divergence("reverse_kl")
def reverse_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p‖q) = −H(p) − Σ p log q: an entropy term plus a class-aware cross-entropy."""
    return _kl(p, q)


@register_divergence("js")
def js(p: Tensor, q: Tensor) -> Tensor:
    """½KL(p‖m) + ½KL(q‖m), m = (p+q)/2: symmetric and bounded by log 2."""
    m = 0.5 * (p + q)
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


@register_divergence("hellinger")
def hellinger(p: Tensor, q: Tensor) -> Tensor:
    """Squared Hellinger distance ½Σ(√p − √q)², in [0, 1]."""
    return 0.5 * ((p.clamp_min(SQRT_EPS).sqrt() - q.clamp_min(SQRT_EPS).sqrt()) ** 2).sum(dim=-1)


@register_divergence("tv")
def tv(p: Tensor, q: Tensor) -> Tensor:
    """Total variation ½Σ|p − q|, in [0, 1] (its gradient is a sign pattern)."""
    return 0.5 * (p - q).abs().sum(dim=-1)


@register_divergence("chi2")
def chi2(p: Tensor, q: Tensor) -> Tensor:
    """Pearson χ²: Σ (p − q)²/q; needs q > 0 (use label smoothing)."""
    return ((p - q) ** 2 / q.clamp_min(EPS)).sum(dim=-1)
