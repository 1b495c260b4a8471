"""Guidance strategies (objectives, equivalences, knobs) and guidance-scale schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from calguide.guidance import (
    DivergenceGuidance,
    EluCD,
    Entropy,
    GuidanceStrategy,
    NoGuidance,
    Tilted,
    Vanilla,
    build_schedule,
    build_strategy,
    divergence_names,
    register_divergence,
    strategy_names,
)
from calguide.guidance.strategies import (
    STRATEGIES,
    entropy,
    target_log_prob,
    unregister_strategy,
)

B, K, T = 5, 6, 1000


@pytest.fixture
def logits() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return 2.0 * torch.randn(B, K, generator=gen, dtype=torch.float64)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([0, 3, 5, 1, 3])


@pytest.fixture
def t() -> torch.Tensor:
    return torch.tensor([999, 700, 500, 10, 0])


def _grad(strategy, logits, labels, t) -> torch.Tensor:
    z = logits.clone().requires_grad_(True)
    objective = strategy.objective(z, labels, t, T)
    assert objective.shape == (B,)
    (grad,) = torch.autograd.grad(objective.sum(), z)
    return grad


def test_vanilla_is_log_p_y(logits, labels, t) -> None:
    want = torch.log_softmax(logits, -1)[torch.arange(B), labels]
    torch.testing.assert_close(Vanilla().objective(logits, labels, t, T), want)
    p = torch.softmax(logits, -1)
    one_hot = torch.nn.functional.one_hot(labels, K).double()
    torch.testing.assert_close(_grad(Vanilla(), logits, labels, t), one_hot - p)


@pytest.mark.parametrize(
    "strategy",
    [
        Tilted(tau=0.0),
        EluCD(t1=1.0, delta=1.0),
        Entropy(lambda0=0.0, adapt="constant"),
        Entropy(lambda0=0.0, adapt="time"),
        Entropy(lambda0=0.0, adapt="confidence"),
        *[DivergenceGuidance(name, beta=1.0, gamma=0.0) for name in divergence_names()],
    ],
    ids=repr,
)
def test_neutral_knobs_equal_vanilla(strategy, logits, labels, t) -> None:
    torch.testing.assert_close(
        _grad(strategy, logits, labels, t), _grad(Vanilla(), logits, labels, t)
    )


def test_elucd_objective(logits, labels, t) -> None:
    s = EluCD(t1=2.0, delta=0.5)
    z_y = logits[torch.arange(B), labels]
    want = 2.0 * z_y - torch.logsumexp(1.0 * logits, dim=-1)
    torch.testing.assert_close(s.objective(logits, labels, t, T), want)


@pytest.mark.parametrize("adapt", ["constant", "time", "confidence"])
def test_entropy_weight_is_detached(adapt: str, logits, labels, t) -> None:
    """g = ∇log p_y + λ·∇H with λ(t, p) held constant."""
    s = Entropy(lambda0=0.3, adapt=adapt)
    h = entropy(logits)
    lam = {
        "constant": torch.full((B,), 0.3, dtype=torch.float64),
        "time": 0.3 * t.double() / T,
        "confidence": 0.3 * (1.0 - h / math.log(K)),
    }[adapt]
    torch.testing.assert_close(s.weight(h, t, T, K), lam)
    z = logits.clone().requires_grad_(True)
    (grad_h,) = torch.autograd.grad(entropy(z).sum(), z)
    want = _grad(Vanilla(), logits, labels, t) + lam[:, None] * grad_h
    torch.testing.assert_close(_grad(s, logits, labels, t), want)


def test_tilted_reweights_the_batch(logits, labels, t) -> None:
    s = Tilted(tau=2.0)
    log_p_y = target_log_prob(logits, labels)
    w = torch.softmax(-2.0 * log_p_y, dim=0)
    torch.testing.assert_close(s.weights(log_p_y), w)
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    want = B * w[:, None] * _grad(Vanilla(), logits, labels, t)
    torch.testing.assert_close(_grad(s, logits, labels, t), want)
    # The least confident sample gets the largest weight.
    assert int(w.argmax()) == int(log_p_y.argmin())
    assert Tilted.batch_dependent and not Vanilla.batch_dependent


def test_forward_kl_without_smoothing_adds_to_log_p_y(logits, labels, t) -> None:
    s = DivergenceGuidance("forward_kl", beta=1.0, gamma=2.0, smoothing=0.0)
    torch.testing.assert_close(
        s.objective(logits, labels, t, T), 3.0 * target_log_prob(logits, labels)
    )


def test_divergence_objective(logits, labels, t) -> None:
    s = DivergenceGuidance("js", beta=0.5, gamma=2.0, smoothing=0.2)
    p = torch.softmax(logits, -1)
    q = 0.8 * torch.nn.functional.one_hot(labels, K).double() + 0.2 / K
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    want = 0.5 * target_log_prob(logits, labels) - 2.0 * js
    torch.testing.assert_close(s.objective(logits, labels, t, T), want)
    assert s.name == "js"


def test_half_precision_logits_are_promoted(logits, labels, t) -> None:
    out = Vanilla().objective(logits.half(), labels, t, T)
    assert out.dtype == torch.float32


def test_none_is_inactive(logits, labels, t) -> None:
    s = build_strategy("none")
    assert isinstance(s, NoGuidance) and not s.is_active
    assert not bool(_grad(s, logits, labels, t).any())


def test_build_strategy_maps_every_name() -> None:
    assert isinstance(build_strategy("vanilla"), Vanilla)
    assert build_strategy("elucd", t1=2.0, delta=0.5) == EluCD(2.0, 0.5)
    assert build_strategy("entropy", lambda0=0.5, adapt="time") == Entropy(0.5, "time")
    assert build_strategy("tilted", tau=3.0) == Tilted(3.0)
    for name in divergence_names():
        s = build_strategy(name, beta=2.0, gamma=0.5, smoothing=0.05)
        assert s == DivergenceGuidance(name, 2.0, 0.5, 0.05) and s.name == name
    assert set(strategy_names()) >= {"none", "vanilla", "elucd", "entropy", "tilted", "js"}


def test_build_strategy_errors_list_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        build_strategy("kl")
    for name in ("vanilla", "tilted", "js", "reverse_kl"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match=r"unknown parameter.*'lambda'.*allowed.*lambda0"):
        build_strategy("entropy", **{"lambda": 0.1})
    with pytest.raises(ValueError, match=r"allowed: \['beta', 'gamma', 'smoothing'\]"):
        build_strategy("js", scale=2.0)


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("entropy", {"adapt": "linear"}, "guidance.adapt"),
        ("elucd", {"delta": 0.0}, "guidance.delta"),
        ("elucd", {"t1": -1.0}, "guidance.t1"),
        ("tilted", {"tau": math.inf}, "guidance.tau"),
        ("js", {"smoothing": 1.5}, "guidance.smoothing"),
        ("js", {"gamma": math.nan}, "guidance.gamma"),
    ],
)
def test_knob_validation_names_the_key(name: str, params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        build_strategy(name, **params)


# ---- schedules ---------------------------------------------------------------------------


def test_constant_schedule(t) -> None:
    s = build_schedule("constant", 2.5)
    torch.testing.assert_close(s(t, T), torch.full((B,), 2.5))


def test_linear_schedule_hits_start_and_end() -> None:
    n = 1001  # t = 500 is the midpoint of [0, n - 1]
    t = torch.tensor([n - 1, 500, 0])
    torch.testing.assert_close(build_schedule("linear", 2.0)(t, n), torch.tensor([2.0, 1.0, 0.0]))
    ramp = build_schedule("linear", 2.0, start=0.5, end=1.5)
    torch.testing.assert_close(ramp(t, n), torch.tensor([1.0, 2.0, 3.0]))


def test_sin_schedule() -> None:
    n = 1200
    t = torch.tensor([0, n // 2, n // 6])
    s = build_schedule("sin", 2.0, gamma=0.5)
    torch.testing.assert_close(s(t, n), torch.tensor([2.0, 3.0, 2.0 * (1 + 0.5 * 0.5)]))


def test_schedule_errors() -> None:
    with pytest.raises(ValueError, match=r"'constant', 'linear', 'sin'"):
        build_schedule("cosine", 1.0)
    with pytest.raises(ValueError, match=r"allowed: \['gamma'\]"):
        build_schedule("sin", 1.0, start=0.0)
    with pytest.raises(ValueError, match="guidance.scale"):
        build_schedule("constant", math.nan)


def test_a_new_strategy_is_one_subclass(logits, labels, t) -> None:
    try:

        @dataclass(frozen=True)
        class Margin(GuidanceStrategy):
            name: ClassVar[str] = "test_margin"
            weight: float = 1.0

            def objective(self, logits, labels, t, num_timesteps):
                z_y = logits.gather(-1, labels.view(-1, 1)).squeeze(-1)
                return self.weight * (z_y - logits.mean(-1))

        assert STRATEGIES["test_margin"] is Margin
        s = build_strategy("test_margin", weight=2.0)
        assert s == Margin(2.0) and "test_margin" in strategy_names()
        assert _grad(s, logits, labels, t).abs().sum() > 0
        with pytest.raises(ValueError, match="strategy name"):
            register_divergence("test_margin", lambda p, q: (p - q).sum(-1))
    finally:
        unregister_strategy("test_margin")
    with pytest.raises(ValueError, match="already a registered divergence"):

        @dataclass(frozen=True)
        class Clash(GuidanceStrategy):
            name: ClassVar[str] = "js"
