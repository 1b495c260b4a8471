"""The f-divergence registry: closed-form gradients (DESIGN §6), values, safety, registration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from calguide.guidance import (
    DIVERGENCES,
    build_strategy,
    divergence,
    divergence_names,
    f_divergence,
    label_smoothed_target,
    register_divergence,
    unregister_divergence,
)
from calguide.guidance.divergences import RESERVED_NAMES
from calguide.guidance.strategies import STRATEGIES, entropy

B, K = 6, 7
BUILTIN = ("forward_kl", "reverse_kl", "js", "hellinger", "tv", "chi2")


def _rows(seed: int, scale: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(B, K, generator=gen, dtype=torch.float64), dim=-1)


@pytest.fixture
def p() -> torch.Tensor:
    return _rows(0)


@pytest.fixture
def q() -> torch.Tensor:
    return _rows(1)


@pytest.fixture
def logits() -> torch.Tensor:
    return 2.0 * torch.randn(B, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(3))


def _grad_p(name: str, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    p = p.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(divergence(name)(p, q).sum(), p)
    return grad


# ∂D/∂p_k in closed form (DESIGN §6, plus tv and chi2).
CLOSED_FORM_DP = {
    "reverse_kl": lambda p, q: torch.log(p / q) + 1.0,
    "forward_kl": lambda p, q: -q / p,
    "js": lambda p, q: 0.5 * torch.log(2.0 * p / (p + q)),
    "hellinger": lambda p, q: 0.5 * (1.0 - torch.sqrt(q / p)),
    "tv": lambda p, q: 0.5 * torch.sign(p - q),
    "chi2": lambda p, q: 2.0 * (p - q) / q,
}


def test_registry_holds_the_design_names() -> None:
    assert set(BUILTIN) <= set(divergence_names())
    assert set(DIVERGENCES) == set(divergence_names())
    assert set(STRATEGIES) == RESERVED_NAMES


@pytest.mark.parametrize("name", BUILTIN)
def test_gradient_wrt_p_matches_closed_form(name: str, p, q) -> None:
    torch.testing.assert_close(_grad_p(name, p, q), CLOSED_FORM_DP[name](p, q))


def test_entropy_gradient_matches_closed_form(logits) -> None:
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(entropy(z).sum(), z)
    p = torch.softmax(logits, dim=-1)
    h = -(p * p.log()).sum(-1, keepdim=True)
    torch.testing.assert_close(grad, -p * (p.log() + h))


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("name", BUILTIN)
def test_gradient_through_tempered_softmax(name: str, tau: float, logits, q) -> None:
    """∂D/∂z_j = (1/τ_c)·p_j(∂D/∂p_j − Σ_k p_k ∂D/∂p_k) for p = softmax(z/τ_c)."""
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(divergence(name)(torch.softmax(z / tau, -1), q).sum(), z)
    p = torch.softmax(logits / tau, dim=-1)
    d_p = CLOSED_FORM_DP[name](p, q)
    expected = p * (d_p - (p * d_p).sum(-1, keepdim=True)) / tau
    torch.testing.assert_close(grad, expected)


def test_values_match_direct_definitions(p, q) -> None:
    pn, qn = p.numpy(), q.numpy()
    direct = {
        "reverse_kl": scipy_entropy(pn, qn, axis=-1),
        "forward_kl": scipy_entropy(qn, pn, axis=-1),
        "js": jensenshannon(pn, qn, axis=-1) ** 2,
        "hellinger": 0.5 * ((np.sqrt(pn) - np.sqrt(qn)) ** 2).sum(-1),
        "tv": 0.5 * np.abs(pn - qn).sum(-1),
        "chi2": ((pn - qn) ** 2 / qn).sum(-1),
    }
    for name, want in direct.items():
        torch.testing.assert_close(divergence(name)(p, q), torch.from_numpy(want), msg=name)


def test_reverse_kl_is_entropy_plus_cross_entropy(p, q) -> None:
    cross = -(p * q.log()).sum(-1)
    h = -(p * p.log()).sum(-1)
    torch.testing.assert_close(divergence("reverse_kl")(p, q), cross - h)


@pytest.mark.parametrize("name", BUILTIN)
def test_zero_on_equal_rows_and_non_negative(name: str, p, q) -> None:
    torch.testing.assert_close(divergence(name)(p, p), torch.zeros(B, dtype=p.dtype))
    assert bool((divergence(name)(p, q) >= 0).all())


@pytest.mark.parametrize("name", ["js", "hellinger", "tv"])
def test_symmetric_divergences(name: str, p, q) -> None:
    torch.testing.assert_close(divergence(name)(p, q), divergence(name)(q, p))


def test_kl_is_not_symmetric(p, q) -> None:
    assert not torch.allclose(divergence("reverse_kl")(p, q), divergence("reverse_kl")(q, p))


def test_bounds(p) -> None:
    disjoint_p = torch.zeros(2, K, dtype=torch.float64)
    disjoint_p[:, 0] = 1.0
    disjoint_q = torch.zeros(2, K, dtype=torch.float64)
    disjoint_q[:, 1] = 1.0
    torch.testing.assert_close(
        divergence("js")(disjoint_p, disjoint_q), torch.full((2,), math.log(2.0), dtype=p.dtype)
    )
    for name in ("hellinger", "tv"):
        torch.testing.assert_close(divergence(name)(disjoint_p, disjoint_q), torch.ones(2).double())
    q = label_smoothed_target(torch.zeros(B, dtype=torch.long), K, 0.0, dtype=torch.float64)
    assert bool((divergence("js")(p, q) <= math.log(2.0)).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("name", BUILTIN)
def test_finite_with_vanishing_probabilities(name: str, smoothing: float, dtype) -> None:
    """A saturated softmax (p_k ~ 1e-30, or an exact 0 in float32) keeps D and ∇D finite."""
    z = torch.zeros(3, K, dtype=dtype)
    z[:, 1:] = torch.tensor([-69.0, -120.0, -200.0], dtype=dtype).view(3, 1)
    z.requires_grad_(True)
    p = torch.softmax(z, dim=-1)
    q = label_smoothed_target(torch.tensor([0, 3, 5]), K, smoothing, dtype=dtype)
    d = divergence(name)(p, q)
    (grad,) = torch.autograd.grad(d.sum(), z)
    assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(grad).all())


def test_label_smoothed_target() -> None:
    q = label_smoothed_target(torch.tensor([2, 0]), 4, 0.2, dtype=torch.float64)
    want = torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]], dtype=torch.float64)
    torch.testing.assert_close(q, want)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_smoothed_target(torch.tensor([0]), 4, 1.5)


GENERATORS = {
    "reverse_kl": lambda u: u * torch.log(u),
    "forward_kl": lambda u: -torch.log(u),
    "hellinger": lambda u: 0.5 * (torch.sqrt(u) - 1.0) ** 2,
    "tv": lambda u: 0.5 * torch.abs(u - 1.0),
    "chi2": lambda u: (u - 1.0) ** 2,
    "js": lambda u: 0.5 * (u * torch.log(2.0 * u / (1.0 + u)) + torch.log(2.0 / (1.0 + u))),
}


@pytest.mark.parametrize("name", BUILTIN)
def test_f_divergence_reproduces_the_named_entries(name: str, p, q) -> None:
    built = f_divergence(GENERATORS[name])
    torch.testing.assert_close(built(p, q), divergence(name)(p, q))
    torch.testing.assert_close(
        _grad_p(name, p, q), torch.autograd.grad(built(p.requires_grad_(), q).sum(), p)[0]
    )


@pytest.fixture
def scratch_name():
    """A divergence name that is removed again after the test."""
    name = "test_neyman_chi2"
    yield name
    if name in DIVERGENCES:
        unregister_divergence(name)


def test_registering_a_divergence_makes_it_a_strategy(scratch_name: str, logits, labels) -> None:
    with pytest.raises(ValueError, match=scratch_name):
        build_strategy(scratch_name)
    register_divergence(scratch_name, f_divergence(lambda u: (u - 1.0) ** 2 / u))
    strategy = build_strategy(scratch_name, gamma=0.5)
    assert strategy.name == scratch_name
    t = torch.full((B,), 10)
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(z, labels, t, 100).sum(), z)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


def test_decorator_registration_and_duplicates(scratch_name: str, p) -> None:
    @register_divergence(scratch_name)
    def squared(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return ((p - q) ** 2).sum(-1)

    assert divergence(scratch_name) is squared
    with pytest.raises(ValueError, match="already registered"):
        register_divergence(scratch_name, squared)
    register_divergence(scratch_name, divergence("tv"), overwrite=True)
    torch.testing.assert_close(divergence(scratch_name)(p, p), torch.zeros(B, dtype=p.dtype))


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_strategy_names_cannot_be_divergences(name: str) -> None:
    with pytest.raises(ValueError, match="strategy name"):
        register_divergence(name, divergence("tv"))


def test_unknown_divergence_lists_names() -> None:
    with pytest.raises(KeyError) as info:
        divergence("kl")
    for name in BUILTIN:
        assert name in str(info.value)
