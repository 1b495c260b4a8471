"""Guidance strategies (objectives, equivalences, knobs) and guidance-scale schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from calguide.guidance import (
    DivergenceGuidance,
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
    guided_score,
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
        Tilted(t=0.0),
        Entropy(lambda0=0.0, adapt="constant"),
        Entropy(lambda0=0.0, adapt="time"),
        Entropy(lambda0=0.0, adapt="confidence"),
        *[DivergenceGuidance(divergence=name, alpha=0.0) for name in divergence_names()],
    ],
    ids=repr,
)
def test_neutral_knobs_equal_vanilla(strategy, logits, labels, t) -> None:
    torch.testing.assert_close(
        _grad(strategy, logits, labels, t), _grad(Vanilla(), logits, labels, t)
    )


@pytest.mark.parametrize(("tau1", "delta"), [(1.0, 0.5), (2.0, 0.5), (0.7, 1.3)])
def test_every_strategy_is_written_on_the_guided_score(tau1, delta, logits, labels, t) -> None:
    """log p_{τ1,τ2}(y|x) = τ1·f_y − log Σ exp(τ2·f), τ2 = τ1·δ (EluCD's temperatures), under
    every strategy: with a neutral regularizer each one is vanilla at the same τ's."""
    z_y = logits[torch.arange(B), labels]
    want = tau1 * z_y - torch.logsumexp(tau1 * delta * logits, dim=-1)
    vanilla = Vanilla(tau1=tau1, delta=delta)
    torch.testing.assert_close(vanilla.objective(logits, labels, t, T), want)
    torch.testing.assert_close(guided_score(logits, labels, tau1, delta), want)
    base = _grad(vanilla, logits, labels, t)
    for neutral in (
        Tilted(tau1=tau1, delta=delta, t=0.0),
        Entropy(tau1=tau1, delta=delta, lambda0=0.0),
        *[
            DivergenceGuidance(divergence=n, tau1=tau1, delta=delta, alpha=0.0)
            for n in divergence_names()
        ],
    ):
        torch.testing.assert_close(_grad(neutral, logits, labels, t), base, msg=repr(neutral))


def test_unit_temperatures_are_log_p_y(logits, labels) -> None:
    torch.testing.assert_close(guided_score(logits, labels), target_log_prob(logits, labels))
    z_y = logits[torch.arange(B), labels]
    torch.testing.assert_close(
        guided_score(logits, labels, 1.0, 1.0 + 1e-12),
        z_y - torch.logsumexp(logits, dim=-1),
    )


@pytest.mark.parametrize("adapt", ["constant", "time", "confidence"])
def test_entropy_weight_is_detached(adapt: str, logits, labels, t) -> None:
    """g = ∇log p_{τ1,τ2} + λ·∇H with λ(t, p) held constant."""
    s = Entropy(lambda0=0.3, adapt=adapt, delta=0.5)
    h = entropy(logits)
    lam = {
        "constant": torch.full((B,), 0.3, dtype=torch.float64),
        "time": 0.3 * t.double() / T,
        "confidence": 0.3 * (1.0 - h / math.log(K)),
    }[adapt]
    torch.testing.assert_close(s.weight(h, t, T, K), lam)
    z = logits.clone().requires_grad_(True)
    (grad_h,) = torch.autograd.grad(entropy(z).sum(), z)
    want = _grad(Vanilla(delta=0.5), logits, labels, t) + lam[:, None] * grad_h
    torch.testing.assert_close(_grad(s, logits, labels, t), want)


@pytest.mark.parametrize("tilt", [-0.2, 2.0])
def test_tilted_is_the_papers_batch_tilt(tilt: float, logits, labels, t) -> None:
    """∂/∂f_i of S = (1/t)·log mean_j exp(t·s_j) is w_i·∇s_i; sample i gets N·w_i·∇s_i."""
    s = Tilted(t=tilt, delta=0.5)
    scores = guided_score(logits, labels, 1.0, 0.5)
    w = torch.softmax(tilt * scores, dim=0)
    torch.testing.assert_close(s.weights(scores), w)
    z = logits.clone().requires_grad_(True)
    tilted = torch.logsumexp(tilt * guided_score(z, labels, 1.0, 0.5), 0) / tilt
    (grad_s,) = torch.autograd.grad(tilted - math.log(B) / tilt, z)
    torch.testing.assert_close(_grad(s, logits, labels, t), B * grad_s)
    want = B * w[:, None] * _grad(Vanilla(delta=0.5), logits, labels, t)
    torch.testing.assert_close(_grad(s, logits, labels, t), want)
    # t < 0: the least confident sample gets the largest weight; t > 0: the most confident.
    pick = scores.argmin() if tilt < 0 else scores.argmax()
    assert int(w.argmax()) == int(pick)
    assert Tilted.batch_dependent and not Vanilla.batch_dependent


def test_tilted_tends_to_vanilla_as_t_goes_to_zero(logits, labels, t) -> None:
    gaps = [
        float(
            (_grad(Tilted(t=tilt), logits, labels, t) - _grad(Vanilla(), logits, labels, t))
            .abs()
            .max()
        )
        for tilt in (-1e-2, -1e-4, -1e-6)
    ]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5


def test_rkl_at_one_hot_target_adds_to_the_score(logits, labels, t) -> None:
    """ε = 1: D_rkl(e_y‖p) = −log p_y, so J = log p_y + α·log p_y."""
    s = DivergenceGuidance(divergence="rkl", alpha=2.0, eps=1.0)
    torch.testing.assert_close(
        s.objective(logits, labels, t, T), 3.0 * target_log_prob(logits, labels)
    )


def test_divergence_objective(logits, labels, t) -> None:
    s = DivergenceGuidance(divergence="js", tau1=1.5, delta=0.5, alpha=2.0, eps=0.8)
    p = torch.softmax(logits, -1)
    q = 0.8 * torch.nn.functional.one_hot(labels, K).double() + 0.2 / K
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    want = guided_score(logits, labels, 1.5, 0.5) - 2.0 * js
    torch.testing.assert_close(s.objective(logits, labels, t, T), want)
    assert s.name == "js"


def test_divergence_temperature_of_p(logits, labels, t) -> None:
    s = DivergenceGuidance(divergence="rkl", eps=0.5, tau_d=0.5)
    p = torch.softmax(0.5 * logits, -1)
    q = 0.5 * torch.nn.functional.one_hot(labels, K).double() + 0.5 / K
    torch.testing.assert_close(s.regularizer(logits, labels), (q * (q / p).log()).sum(-1))


def test_half_precision_logits_are_promoted(logits, labels, t) -> None:
    out = Vanilla().objective(logits.half(), labels, t, T)
    assert out.dtype == torch.float32


def test_none_is_inactive(logits, labels, t) -> None:
    s = build_strategy("none")
    assert isinstance(s, NoGuidance) and not s.is_active
    assert not bool(_grad(s, logits, labels, t).any())


def test_build_strategy_maps_every_name() -> None:
    assert isinstance(build_strategy("vanilla"), Vanilla)
    assert build_strategy("vanilla", tau1=1.0, delta=0.5) == Vanilla(tau1=1.0, delta=0.5)
    assert build_strategy("entropy", lambda0=0.5, adapt="time") == Entropy(
        lambda0=0.5, adapt="time"
    )
    assert build_strategy("tilted", t=-0.2) == Tilted(t=-0.2)
    for name in divergence_names():
        s = build_strategy(name, alpha=2.0, eps=0.5, tau_d=0.5, delta=0.5)
        want = DivergenceGuidance(divergence=name, alpha=2.0, eps=0.5, tau_d=0.5, delta=0.5)
        assert s == want and s.name == name
    assert set(strategy_names()) >= {"none", "vanilla", "entropy", "tilted", "rkl", "fkl", "js"}
    assert "elucd" not in strategy_names()  # EluCD is vanilla on EluCD's score (score=elucd)


def test_build_strategy_errors_list_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        build_strategy("kl")
    for name in ("vanilla", "tilted", "js", "rkl", "fkl"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match=r"unknown parameter.*'lambda'.*allowed.*lambda0"):
        build_strategy("entropy", **{"lambda": 0.1})
    with pytest.raises(ValueError, match=r"allowed: \['tau1', 'delta', 'alpha', 'eps', 'tau_d'\]"):
        build_strategy("js", scale=2.0)


@pytest.mark.parametrize(
    ("name", "old", "new"),
    [
        ("js", "gamma", "alpha"),
        ("js", "smoothing", "eps"),
        ("js", "beta", "tau1"),
        ("tilted", "tau", "t"),
        ("vanilla", "t1", "tau1"),
    ],
)
def test_old_knob_names_point_to_the_new_ones(name: str, old: str, new: str) -> None:
    with pytest.raises(ValueError, match=rf"\['{old}'\].*renamed: {old} -> {new}"):
        build_strategy(name, **{old: 0.5})


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("entropy", {"adapt": "linear"}, "guidance.params.adapt"),
        ("vanilla", {"delta": 0.0}, "guidance.params.delta"),
        ("js", {"tau1": -1.0}, "guidance.params.tau1"),
        ("tilted", {"t": math.inf}, "guidance.params.t"),
        ("js", {"eps": 1.5}, "guidance.params.eps"),
        ("js", {"alpha": math.nan}, "guidance.params.alpha"),
        ("rkl", {"tau_d": 0.0}, "guidance.params.tau_d"),
        ("fkl", {"eps": 1.0}, "guidance.params.eps=1"),
        ("chi2", {"eps": 1.0}, "guidance.params.eps=1"),
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


def test_elucd_schedule_is_an_additive_variance() -> None:
    """a_i = max(sin(π·i/N)·Σ_max·γ, 0) per sample; s(t) stays the constant scale."""
    s = build_schedule("elucd", 1.5, gamma=0.3)
    n = 250
    index = torch.tensor([249, 125, 0, 62])
    var_max = torch.tensor([0.02, 0.5, 0.3, 0.1], dtype=torch.float64)
    want = [
        max(math.sin(math.pi * i / n) * v * 0.3, 0.0)
        for i, v in zip(index.tolist(), var_max.tolist())
    ]
    torch.testing.assert_close(
        s.extra_variance(index, n, var_max), torch.tensor(want, dtype=torch.float64)
    )
    torch.testing.assert_close(s(torch.tensor([999, 0]), 1000), torch.full((2,), 1.5))
    assert s.additive and s.extra_variance(torch.tensor([0]), n, var_max[:1]).item() == 0.0
    assert build_schedule("elucd", 1.0).gamma == 0.3  # EluCD's recipe is the default
    for name in ("constant", "linear", "sin"):
        plain = build_schedule(name, 1.0)
        assert not plain.additive and plain.extra_variance(index, n, var_max) is None
    with pytest.raises(ValueError, match="gamma"):
        build_schedule("elucd", 1.0, gamma=-0.1)


def test_schedule_errors() -> None:
    with pytest.raises(ValueError, match=r"'constant', 'linear', 'elucd', 'sin'"):
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
