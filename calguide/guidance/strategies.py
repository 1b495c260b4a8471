"""Guidance strategies: the paper's guided score plus one regularizer each.

Every strategy's per-sample objective is

    J = log p_{τ1,τ2}(y|x) + R,     log p_{τ1,τ2}(y|x) = τ1·f_y − log Σ_i exp(τ2·f_i),

with f the classifier's logits (already divided by its calibration temperature τ_c), τ1 the
joint temperature and τ2 = τ1·δ the margin temperature (EluCD's, PAPER.md §1). τ1 = δ = 1 is
plain log p(y|x), ADM-G; τ1 = 1, δ = 0.5 is EluCD. ``tau1`` and ``delta`` are fields of every
strategy. The regularizers (PAPER.md §2–4):

* ``vanilla``: R = 0 (with EluCD's τ's, schedule and classifier convention this is EluCD);
* ``entropy``: R = λ·H(p), λ adaptive and detached;
* ``tilted``: the batch tilt of the guided score (batch-dependent by design);
* a divergence name (``rkl``, ``fkl``, ``js``, ``hellinger``, ``tv``, ``chi2``, or any
  registered one): R = −α·D_f(q_y ‖ p), q_y = (1 − ε)/K + ε·e_y.

A strategy sees only logits, labels and base-chain timesteps; it never knows which sampler or
input space is used. :class:`~calguide.guidance.hook.ClassifierGuidance` differentiates ΣJ
w.r.t. the classifier's input. Adding a strategy is one subclass with a ``name`` (it registers
itself) plus one YAML file; adding a divergence is one registry entry
(:mod:`calguide.guidance.divergences`).
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
    log_label_smoothed_target,
)
from calguide.guidance.divergences import divergence as get_divergence

__all__ = [
    "ENTROPY_ADAPT",
    "RENAMED_PARAMS",
    "STRATEGIES",
    "DivergenceGuidance",
    "Entropy",
    "GuidanceStrategy",
    "NoGuidance",
    "Tilted",
    "Vanilla",
    "build_strategy",
    "entropy",
    "guided_score",
    "strategy_names",
    "target_log_prob",
    "unregister_strategy",
]

ENTROPY_ADAPT = ("constant", "time", "confidence")

RENAMED_PARAMS: dict[str, str] = {
    "beta": "tau1 (the joint temperature τ1 multiplies f_y in the guided score)",
    "gamma": "alpha (the weight α of −α·D_f(q_y‖p))",
    "smoothing": "eps (now the weight of the ONE-HOT part of q_y: eps = 1 − smoothing)",
    "tau": "t (the paper's tilt, with the opposite sign: t = −tau)",
    "t1": "tau1",
}
"""Knobs of earlier calguide versions -> what replaced them (named in the one-line error)."""


def _float(logits: Tensor) -> Tensor:
    """Half-precision logits are promoted: saturated softmaxes need float32 range and bits."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def target_log_prob(logits: Tensor, labels: Tensor) -> Tensor:
    """log p_y = f_y − logsumexp(f) per row (stable for saturated classifiers)."""
    log_p = torch.log_softmax(_float(logits), dim=-1)
    return log_p.gather(-1, labels.long().view(-1, 1)).squeeze(-1)


def guided_score(logits: Tensor, labels: Tensor, tau1: float = 1.0, delta: float = 1.0) -> Tensor:
    """log p_{τ1,τ2}(y|x) = τ1·f_y − logsumexp(τ2·f), τ2 = τ1·δ (EluCD's tempered score).

    δ < 1 flattens the normaliser, so the gradient keeps pushing f_y up after p_y saturates.
    τ1 = δ = 1 is exactly :func:`target_log_prob`.
    """
    if tau1 == 1.0 and delta == 1.0:
        return target_log_prob(logits, labels)
    z = _float(logits)
    z_y = z.gather(-1, labels.long().view(-1, 1)).squeeze(-1)
    return tau1 * z_y - torch.logsumexp(tau1 * delta * z, dim=-1)


def entropy(logits: Tensor) -> Tensor:
    """H(p) = −Σ p log p per row, computed from log-softmax so p_k → 0 terms vanish cleanly."""
    log_p = torch.log_softmax(_float(logits), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def _check_finite(key: str, value: float) -> None:
    if not math.isfinite(float(value)):
        raise ValueError(f"guidance.params.{key} must be a finite number, got {value!r}")


def _check_positive(key: str, value: float) -> None:
    if not (math.isfinite(float(value)) and value > 0):
        raise ValueError(f"guidance.params.{key} must be a finite number > 0, got {value!r}")


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


@dataclass(frozen=True, kw_only=True)
class GuidanceStrategy:
    """Base class: the guided score's temperatures, shared by every strategy.

    ``objective`` returns J of shape (B,); the guidance direction is g = ∇ ΣJ. Subclasses are
    frozen dataclasses whose fields are the config knobs (``guidance.params``); one that sets a
    ``name`` class attribute becomes available to :func:`build_strategy` under that name.
    Annotate it ``name: ClassVar[str]`` with ``ClassVar`` imported at module level, or the
    dataclass machinery turns it into a field.
    """

    name: ClassVar[str] = "base"
    is_active: ClassVar[bool] = True
    # True when sample i's gradient depends on the other samples of its batch.
    batch_dependent: ClassVar[bool] = False

    tau1: float = 1.0
    delta: float = 1.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str):
            _register_strategy(name, cls)

    def __post_init__(self) -> None:
        _check_positive("tau1", self.tau1)
        _check_positive("delta", self.delta)

    def score(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The guided score log p_{τ1,τ2}(y|x) every regularizer is added to."""
        return guided_score(logits, labels, self.tau1, self.delta)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class NoGuidance(GuidanceStrategy):
    """Unguided baseline. ``make_guidance`` turns it into ``guidance=None`` for the sampler."""

    name: ClassVar[str] = "none"
    is_active: ClassVar[bool] = False

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        # A constant times the logits: J = 0 with a well-defined, all-zero gradient.
        return 0.0 * logits.sum(dim=-1)


@dataclass(frozen=True, kw_only=True)
class Vanilla(GuidanceStrategy):
    """J = log p_{τ1,τ2}(y|x): ADM-G at τ1 = δ = 1; EluCD at τ1 = 1, δ = 0.5 (with its schedule
    and classifier convention, see ``conf/row/elucd_*.yaml``)."""

    name: ClassVar[str] = "vanilla"

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        return self.score(logits, labels)


@dataclass(frozen=True, kw_only=True)
class Entropy(GuidanceStrategy):
    """J = log p_{τ1,τ2}(y|x) + λ·H(p), λ = λ₀·a detached (adaptive entropy regularization).

    The paper's adaptive coefficient is not published (PAPER.md §4); ``adapt`` offers three:
    ``constant`` a = 1; ``time`` a = t/T (strong at high noise, where classifiers are
    over-confident and the score's gradient vanishes); ``confidence`` a = 1 − H(p)/log K
    (strong exactly when p is peaked). ∂H/∂f_j = −p_j(log p_j + H).
    """

    name: ClassVar[str] = "entropy"
    lambda0: float = 0.1
    adapt: str = "constant"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_finite("lambda0", self.lambda0)
        if self.adapt not in ENTROPY_ADAPT:
            raise ValueError(
                f"guidance.params.adapt must be one of {list(ENTROPY_ADAPT)}, got {self.adapt!r}"
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
        return self.score(logits, labels) + lam * h


@dataclass(frozen=True, kw_only=True)
class Tilted(GuidanceStrategy):
    """The paper's tilted score S = (1/t)·log((1/N)·Σ_i exp(t·s_i)) over the batch, s_i the
    guided score of sample i.

    ∂S/∂x_i = w_i·∇s_i with w = softmax_i(t·s_i), and Σw = 1. Sample i gets N·w_i·∇s_i: the
    factor N (our normalisation, PAPER.md §3) keeps the mean weight at 1, so t → 0 (uniform w)
    is exactly the base guidance at the same scale. t < 0 gives low-confidence samples more of
    the guidance (diversity; the paper's row uses t = −0.2), t > 0 high-confidence ones.
    Samples therefore depend on which other samples share their batch (by design): results
    change with batch size and device count, unlike every other strategy.
    """

    name: ClassVar[str] = "tilted"
    batch_dependent: ClassVar[bool] = True
    t: float = -0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_finite("t", self.t)

    def weights(self, scores: Tensor) -> Tensor:
        """w_i = softmax over the batch of t·s_i, detached."""
        return torch.softmax(self.t * scores.detach(), dim=0)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        s = self.score(logits, labels)
        return s.shape[0] * self.weights(s) * s


@dataclass(frozen=True, kw_only=True)
class DivergenceGuidance(GuidanceStrategy):
    """J = log p_{τ1,τ2}(y|x) − α·D_f(q_y ‖ p), q_y = (1 − ε)/K + ε·e_y (PAPER.md §2).

    The strategy's name is the divergence's (``rkl``, ``fkl``, ``js``, ...). ``eps`` is the
    paper's ε, the weight of the one-hot part of q_y. ``tau_d`` is the temperature of the p
    inside D, p = softmax(τ_D·f) (the paper's p(i|x) is τ_D = 1). D is computed from
    log-softmax, so nothing is clamped: for ``rkl`` the regularizer's logit gradient is exactly
    α·τ_D·(q_y − p) at any logit gap. With α = 0 this is ``vanilla``.
    """

    divergence: str = "js"
    alpha: float = 1.0
    eps: float = 0.9
    tau_d: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        div = get_divergence(self.divergence)  # fail early with the list of registered names
        _check_finite("alpha", self.alpha)
        _check_positive("tau_d", self.tau_d)
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"guidance.params.eps must be in [0, 1], got {self.eps!r}")
        if self.eps == 1.0 and self.alpha != 0 and not math.isfinite(div.slope_at_infinity):
            raise ValueError(
                f"guidance.params.eps=1 makes q_y one-hot, where {self.divergence} is infinite; "
                "use eps < 1"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.divergence

    def regularizer(self, logits: Tensor, labels: Tensor) -> Tensor:
        """D_f(q_y ‖ p) per row."""
        z = _float(logits)
        log_p = torch.log_softmax(self.tau_d * z, dim=-1)
        log_q = log_label_smoothed_target(labels, z.shape[-1], self.eps, dtype=log_p.dtype)
        return get_divergence(self.divergence)(log_q.to(log_p.device), log_p)

    def objective(self, logits: Tensor, labels: Tensor, t: Tensor, num_timesteps: int) -> Tensor:
        score = self.score(logits, labels)
        if self.alpha == 0:
            return score
        return score - self.alpha * self.regularizer(logits, labels)


def strategy_names() -> tuple[str, ...]:
    """Every name ``build_strategy`` accepts: the strategies, then the registered divergences."""
    return (*STRATEGIES, *divergence_names())


def is_active(name: str) -> bool:
    """Whether strategy ``name`` guides at all (``none`` does not, and needs no classifier)."""
    return STRATEGIES[name].is_active if name in STRATEGIES else name in divergence_names()


def build_strategy(name: str, **params: Any) -> GuidanceStrategy:
    """The strategy for config name ``name`` with knobs ``params`` (``guidance.params``).

    Every registered divergence name maps to :class:`DivergenceGuidance`. Unknown names and
    unknown knobs raise a ``ValueError`` that lists the allowed ones (and, for a knob of an
    earlier calguide, what replaced it).
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
        renamed = [f"{k} -> {RENAMED_PARAMS[k]}" for k in unknown if k in RENAMED_PARAMS]
        hint = f"; renamed: {'; '.join(renamed)}" if renamed else ""
        raise ValueError(
            f"guidance {name!r} got unknown parameter(s) {unknown}; allowed: {shown}{hint}"
        )
    return cls(**params)
