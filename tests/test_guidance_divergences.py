"""The f-divergence registry under the paper's names: values against their definitions (and
scipy), logit gradients against the paper's general form, saturated classifiers, registration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from calguide.guidance import (
    DIVERGENCES,
    FDivergence,
    build_strategy,
    divergence,
    divergence_names,
    f_divergence,
    label_smoothed_target,
    log_label_smoothed_target,
    register_divergence,
    unregister_divergence,
)
from calguide.guidance.divergences import RESERVED_NAMES
from calguide.guidance.strategies import STRATEGIES, entropy

B, K = 6, 7
BUILTIN = ("rkl", "fkl", "js", "hellinger", "tv", "chi2")

# The generators f(u), u = p/q, as the paper and the textbooks write them.
GENERATORS = {
    "rkl": lambda u: -torch.log(u),
    "fkl": lambda u: u * torch.log(u),
    "js": lambda u: 0.5 * (u * torch.log(u) - (u + 1.0) * torch.log((u + 1.0) / 2.0)),
    "hellinger": lambda u: 0.5 * (torch.sqrt(u) - 1.0) ** 2,
    "tv": lambda u: 0.5 * torch.abs(u - 1.0),
    "chi2": lambda u: (u - 1.0) ** 2,
}


def _logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, K, generator=gen, dtype=torch.float64)


def _rows(seed: int) -> torch.Tensor:
    return torch.softmax(_logits(seed, 1.5), dim=-1)


@pytest.fixture
def p() -> torch.Tensor:
    return _rows(0)


@pytest.fixture
def q() -> torch.Tensor:
    return _rows(1)


@pytest.fixture
def logits() -> torch.Tensor:
    return _logits(2)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(3))


def _d(name: str, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """D_f(q‖p) from probabilities."""
    return divergence(name)(q.log(), p.log())


def test_registry_holds_the_paper_names() -> None:
    assert set(BUILTIN) <= set(divergence_names())
    assert set(DIVERGENCES) == set(divergence_names())
    assert set(STRATEGIES) == RESERVED_NAMES


def test_values_match_their_definitions_and_scipy(p, q) -> None:
    """D_f(q‖p): rkl = KL(q‖p), fkl = KL(p‖q) — the paper's names (PAPER.md §2)."""
    pn, qn = p.numpy(), q.numpy()
    direct = {
        "rkl": scipy_entropy(qn, pn, axis=-1),
        "fkl": scipy_entropy(pn, qn, axis=-1),
        "js": jensenshannon(qn, pn, axis=-1) ** 2,
        "hellinger": 0.5 * ((np.sqrt(pn) - np.sqrt(qn)) ** 2).sum(-1),
        "tv": 0.5 * np.abs(pn - qn).sum(-1),
        "chi2": ((pn - qn) ** 2 / qn).sum(-1),
    }
    for name, want in direct.items():
        torch.testing.assert_close(_d(name, q, p), torch.from_numpy(want), msg=name)


@pytest.mark.parametrize("name", BUILTIN)
def test_value_is_sum_q_f_of_ratio(name: str, p, q) -> None:
    """Each entry is Σ_i q_i f(p_i/q_i) with the generator written on u (its definition)."""
    want = (q * GENERATORS[name](p / q)).sum(-1)
    torch.testing.assert_close(_d(name, q, p), want)
    torch.testing.assert_close(divergence(name).f(p / q), GENERATORS[name](p / q))


@pytest.mark.parametrize("name", BUILTIN)
def test_zero_on_equal_rows_and_non_negative(name: str, p, q) -> None:
    torch.testing.assert_close(_d(name, p, p), torch.zeros(B, dtype=p.dtype))
    assert bool((_d(name, q, p) >= 0).all())


@pytest.mark.parametrize("name", ["js", "hellinger", "tv"])
def test_symmetric_divergences(name: str, p, q) -> None:
    torch.testing.assert_close(_d(name, q, p), _d(name, p, q))


def test_rkl_and_fkl_are_the_two_kls(p, q) -> None:
    torch.testing.assert_close(_d("rkl", q, p), _d("fkl", p, q))
    assert not torch.allclose(_d("rkl", q, p), _d("fkl", q, p))


def _slope(name: str) -> float:
    return divergence(name).slope_at_infinity


@pytest.mark.parametrize("name", BUILTIN)
def test_slope_at_infinity_is_the_limit_of_f_over_u(name: str) -> None:
    u = torch.tensor([1e6, 1e12], dtype=torch.float64)
    ratios = GENERATORS[name](u) / u
    ratio = float(ratios[1])
    if math.isinf(_slope(name)):
        assert float(ratios[1] - ratios[0]) > 10.0  # unbounded: grows like log u or faster
    else:
        assert ratio == pytest.approx(_slope(name), abs=1e-5)


def test_one_hot_target(p) -> None:
    """ε = 1: q is one-hot; rkl = −log p_y, js / hellinger / tv keep their closed forms."""
    y = torch.tensor([0, 3, 5, 1, 2, 6])
    log_q = log_label_smoothed_target(y, K, 1.0, dtype=torch.float64)
    assert bool(torch.isneginf(log_q).sum(-1).eq(K - 1).all())
    q = label_smoothed_target(y, K, 1.0, dtype=torch.float64)
    p_y = p[torch.arange(B), y]
    torch.testing.assert_close(divergence("rkl")(log_q, p.log()), -p_y.log())
    torch.testing.assert_close(
        divergence("tv")(log_q, p.log()), 0.5 * (p - q).abs().sum(-1), msg="tv"
    )
    torch.testing.assert_close(
        divergence("hellinger")(log_q, p.log()), 0.5 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1)
    )
    js = jensenshannon(q.numpy(), p.numpy(), axis=-1) ** 2
    torch.testing.assert_close(divergence("js")(log_q, p.log()), torch.from_numpy(js))
    assert bool(torch.isinf(divergence("fkl")(log_q, p.log())).all())
    # Infinite, but with no NaN in the graph (a masked 0·∞ would put one there).
    lp = p.log().requires_grad_(True)
    for name in ("fkl", "chi2"):
        (grad,) = torch.autograd.grad(divergence(name)(log_q, lp).sum(), lp)
        assert bool(torch.isfinite(grad).all()), name


def test_label_smoothed_target_is_the_papers() -> None:
    """q_y = (1 − ε)/K + ε·e_y: ε weights the one-hot part."""
    q = label_smoothed_target(torch.tensor([2, 0]), 4, 0.8, dtype=torch.float64)
    want = torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]], dtype=torch.float64)
    torch.testing.assert_close(q, want)
    log_q = log_label_smoothed_target(torch.tensor([2, 0]), 4, 0.8, dtype=torch.float64)
    torch.testing.assert_close(log_q, want.log())
    torch.testing.assert_close(
        label_smoothed_target(torch.tensor([1]), 4, 0.0), torch.full((1, 4), 0.25)
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_smoothed_target(torch.tensor([0]), 4, 1.5)


# ---- gradients: the paper's general form --------------------------------------------------


def _f_prime(name: str, u: torch.Tensor) -> torch.Tensor:
    u = u.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(GENERATORS[name](u).sum(), u)
    return grad


def _paper_gradient(name, logits, labels, tau1, delta, alpha, eps, tau_d=1.0) -> torch.Tensor:
    """∂J/∂f = τ1·e_y − τ2·p_{τ2} − α·τ_D·Σ_i w_f(q_y(i), p(i))·(e_i − p), w_f(q, p) = p·f′(p/q)."""
    tau2 = tau1 * delta
    one_hot = torch.nn.functional.one_hot(labels, K).to(logits.dtype)
    p_tau2 = torch.softmax(tau2 * logits, -1)
    p = torch.softmax(tau_d * logits, -1)
    q = label_smoothed_target(labels, K, eps, dtype=logits.dtype)
    w = p * _f_prime(name, p / q)
    reg = tau_d * (w - p * w.sum(-1, keepdim=True))
    return tau1 * one_hot - tau2 * p_tau2 - alpha * reg


def _logit_grad(strategy, logits, labels) -> torch.Tensor:
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(strategy.objective(z, labels, None, 1000).sum(), z)
    return grad


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize(
    ("tau1", "delta", "alpha", "eps", "tau_d"),
    [(1.0, 1.0, 1.0, 0.9, 1.0), (1.0, 0.5, 0.3, 0.5, 1.0), (2.0, 0.7, 2.0, 0.2, 0.5)],
)
def test_gradient_is_the_papers_general_form(
    name, tau1, delta, alpha, eps, tau_d, logits, labels
) -> None:
    if name == "tv":  # |u − 1| has a kink at u = 1 only; random logits never sit on it
        assert not bool(
            torch.isclose(
                torch.softmax(logits, -1), label_smoothed_target(labels, K, eps, dtype=logits.dtype)
            ).any()
        )
    s = build_strategy(name, tau1=tau1, delta=delta, alpha=alpha, eps=eps, tau_d=tau_d)
    want = _paper_gradient(name, logits, labels, tau1, delta, alpha, eps, tau_d)
    torch.testing.assert_close(_logit_grad(s, logits, labels), want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gap", [40.0, 120.0])
def test_rkl_keeps_its_push_on_a_saturated_classifier(dtype, gap: float) -> None:
    """Logit gap ≥ 40: the regularizer's logit gradient is still α·(q_y − p), exactly."""
    alpha, eps = 0.7, 0.8
    z = torch.zeros(3, K, dtype=dtype)
    z[:, 0] = gap
    y = torch.tensor([0, 0, 4])
    s = build_strategy("rkl", alpha=alpha, eps=eps)
    z_ = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((-alpha * s.regularizer(z_, y)).sum(), z_)
    p = torch.softmax(z.double(), -1)
    q = label_smoothed_target(y, K, eps, dtype=torch.float64)
    torch.testing.assert_close(grad.double(), alpha * (q - p), rtol=1e-6, atol=1e-6)
    assert float(grad[0, 1:].abs().min()) > 0.9 * alpha * (1 - eps) / K  # not clamped away


# ε = 1 (a one-hot q_y) only where D stays finite: fkl and chi2 are infinite there by definition
# (and the strategy refuses that setting).
FINITE_CASES = [
    (name, eps)
    for name in BUILTIN
    for eps in (0.0, 0.9, 1.0)
    if eps < 1.0 or not math.isinf(DIVERGENCES[name].slope_at_infinity)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "eps"), FINITE_CASES)
def test_finite_with_vanishing_probabilities(name: str, eps: float, dtype) -> None:
    """A saturated softmax (p_k ~ 1e-30 .. e^-200) keeps D and ∇D finite."""
    z = torch.zeros(3, K, dtype=dtype)
    z[:, 1:] = torch.tensor([-69.0, -120.0, -200.0], dtype=dtype).view(3, 1)
    z.requires_grad_(True)
    log_p = torch.log_softmax(z, dim=-1)
    log_q = log_label_smoothed_target(torch.tensor([0, 3, 5]), K, eps, dtype=dtype)
    d = divergence(name)(log_q, log_p)
    (grad,) = torch.autograd.grad(d.sum(), z)
    assert bool(torch.isfinite(d).all()) and bool(torch.isfinite(grad).all())


def test_entropy_gradient_matches_closed_form(logits) -> None:
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(entropy(z).sum(), z)
    p = torch.softmax(logits, dim=-1)
    h = -(p * p.log()).sum(-1, keepdim=True)
    torch.testing.assert_close(grad, -p * (p.log() + h))


# ---- registration ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_f_divergence_from_a_generator_reproduces_the_named_entries(name: str, p, q) -> None:
    built = f_divergence(GENERATORS[name])
    torch.testing.assert_close(built(q.log(), p.log()), _d(name, q, p))
    lp = p.log().requires_grad_(True)
    (g_built,) = torch.autograd.grad(built(q.log(), lp).sum(), lp)
    (g_named,) = torch.autograd.grad(divergence(name)(q.log(), lp).sum(), lp)
    torch.testing.assert_close(g_built, g_named)


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
    strategy = build_strategy(scratch_name, alpha=0.5)
    assert strategy.name == scratch_name
    grad = _logit_grad(strategy, logits, labels)
    assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0


def test_decorator_registration_and_duplicates(scratch_name: str, p) -> None:
    squared = FDivergence(lambda log_u: torch.expm1(log_u) ** 2 / 2, math.inf, "half chi2")
    assert register_divergence(scratch_name)(squared) is squared
    assert divergence(scratch_name) is squared
    with pytest.raises(ValueError, match="already registered"):
        register_divergence(scratch_name, squared)
    register_divergence(scratch_name, divergence("tv"), overwrite=True)
    torch.testing.assert_close(
        divergence(scratch_name)(p.log(), p.log()), torch.zeros(B, dtype=p.dtype)
    )
    with pytest.raises(TypeError, match="FDivergence"):
        register_divergence(scratch_name, lambda q, p: (q - p).sum(-1), overwrite=True)


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_strategy_names_cannot_be_divergences(name: str) -> None:
    with pytest.raises(ValueError, match="strategy name"):
        register_divergence(name, divergence("tv"))


def test_unknown_divergence_lists_names() -> None:
    with pytest.raises(KeyError) as info:
        divergence("kl")
    for name in BUILTIN:
        assert name in str(info.value)
