"""SmoothECE / binned ECE against the design definition and against hand-computed values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from calguide.calibration import (
    binned_ece,
    fixed_point_sigma,
    reliability_curve,
    smooth_ece,
    smooth_ece_from_logits,
    top_label_confidence,
)
from calguide.calibration import ece as ece_module

# ----------------------------------------------------------------------------- reference
# A deliberately naive evaluation of the design definition, sharing no code with the module:
# an explicit sum over many mirror images and an integral by scipy quad or a midpoint rule.

_REF_SHIFTS = range(-3, 4)  # images ±c + 2k, |k| <= 3: exact to double precision for σ <= 0.4


def _ref_kernel(u: np.ndarray, c: np.ndarray, sigma: float) -> np.ndarray:
    """K_σ(u, c) for every pair, shape (len(u), len(c))."""
    d = u[:, None] - c[None, :]
    s = u[:, None] + c[None, :]
    total = np.zeros_like(d)
    for k in _REF_SHIFTS:
        for x in (d - 2 * k, s - 2 * k):
            total += np.exp(-0.5 * (x / sigma) ** 2)
    return total / (sigma * math.sqrt(2 * math.pi))


def _ref_residual(u: np.ndarray, c: np.ndarray, a: np.ndarray, sigma: float) -> np.ndarray:
    return _ref_kernel(u, c, sigma) @ (a - c) / len(c)


def _ref_smece_quad(c: np.ndarray, a: np.ndarray, sigma: float) -> float:
    assert sigma <= 0.4
    value, err = integrate.quad(
        lambda u: abs(_ref_residual(np.array([u]), c, a, sigma)[0]),
        0.0,
        1.0,
        limit=1000,
        epsabs=1e-9,
        epsrel=1e-9,
        points=np.unique(c[(c > 0) & (c < 1)])[:100],
    )
    assert err < 1e-5
    return value


def _ref_smece_midpoint(c: np.ndarray, a: np.ndarray, sigma: float, cells: int = 2000) -> float:
    assert sigma <= 0.4
    u = (np.arange(cells) + 0.5) / cells
    residual = np.zeros(cells)
    for start in range(0, cells, 250):  # chunk the grid: (250 x n) kernel blocks
        residual[start : start + 250] = _ref_residual(u[start : start + 250], c, a, sigma)
    return float(np.abs(residual).mean())


def _random_case(n: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, generator=g, dtype=dtype)
    a = (torch.rand(n, generator=g, dtype=dtype) < c**2).to(dtype)  # over-confident
    return c, a


# ----------------------------------------------------------------------------- behaviour


def test_calibrated_predictor_has_small_ece() -> None:
    g = torch.Generator().manual_seed(0)
    c = torch.rand(20_000, generator=g)
    a = (torch.rand(20_000, generator=g) < c).float()
    assert smooth_ece(c, a).item() < 0.02
    assert binned_ece(c, a).item() < 0.02


def test_constant_overconfident_predictor_is_half() -> None:
    g = torch.Generator().manual_seed(1)
    c = torch.full((20_000,), 0.999)
    a = (torch.rand(20_000, generator=g) < 0.5).float()
    # One-signed residual: smECE equals |mean residual| for every σ.
    expected = abs((a - c).mean().item())
    assert abs(expected - 0.5) < 0.02
    assert smooth_ece(c, a).item() == pytest.approx(expected, abs=2e-3)
    assert smooth_ece(c, a, 0.05).item() == pytest.approx(expected, abs=2e-3)
    assert binned_ece(c, a).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("sigma", [0.03, 0.1, 0.35])
def test_fixed_sigma_matches_quad_reference(sigma: float) -> None:
    c, a = _random_case(40, seed=2)
    ours = smooth_ece(c, a, sigma).item()
    assert ours == pytest.approx(_ref_smece_quad(c.numpy(), a.numpy(), sigma), abs=1e-3)


@pytest.mark.parametrize("method", ["cosine", "direct"])
@pytest.mark.parametrize("sigma", [0.004, 0.05])
def test_both_kernel_representations_match_reference(method: str, sigma: float) -> None:
    c, a = _random_case(25, seed=3)
    c[:3] = torch.tensor([0.0, 1.0, 0.9995], dtype=c.dtype)  # boundary mass
    ours = smooth_ece(c, a, sigma, method=method, grid_size=4001).item()
    assert ours == pytest.approx(_ref_smece_quad(c.numpy(), a.numpy(), sigma), abs=1e-3)


def test_auto_method_agrees_with_both() -> None:
    c, a = _random_case(300, seed=4)
    for sigma in (0.0007, 0.01, 0.2):
        auto = smooth_ece(c, a, sigma).item()
        assert smooth_ece(c, a, sigma, method="cosine").item() == pytest.approx(auto, abs=1e-9)
        assert smooth_ece(c, a, sigma, method="direct").item() == pytest.approx(auto, abs=1e-9)


def test_fixed_point_sigma_is_a_fixed_point_of_the_reference() -> None:
    c, a = _random_case(60, seed=5)
    sigma_star = fixed_point_sigma(c, a)
    ref = _ref_smece_quad(c.numpy(), a.numpy(), sigma_star)
    assert abs(ref - sigma_star) < 1e-3
    assert smooth_ece(c, a).item() == pytest.approx(ref, abs=1e-3)
    # It is the crossing: smECE_σ - σ changes sign around σ*.
    assert _ref_smece_quad(c.numpy(), a.numpy(), 0.8 * sigma_star) > 0.8 * sigma_star
    assert _ref_smece_quad(c.numpy(), a.numpy(), 1.2 * sigma_star) < 1.2 * sigma_star


def test_from_logits_matches_fine_grid_reference_on_10k() -> None:
    g = torch.Generator().manual_seed(6)
    logits = 2.5 * torch.randn(10_000, 10, generator=g, dtype=torch.float64)
    # Labels drawn from a sharper softmax: a realistic, mildly under-confident classifier.
    labels = torch.multinomial(torch.softmax(logits / 0.7, -1), 1, generator=g).squeeze(1)
    ours = smooth_ece_from_logits(logits, labels).item()

    probs = torch.softmax(logits, -1).numpy()
    c = probs.max(-1)
    a = (probs.argmax(-1) == labels.numpy()).astype(np.float64)
    sigma_star = fixed_point_sigma(torch.from_numpy(c), torch.from_numpy(a))
    ref = _ref_smece_midpoint(c, a, sigma_star)
    assert ours == pytest.approx(ref, abs=1e-3)
    assert abs(ref - sigma_star) < 2e-3


def test_monotone_in_sigma() -> None:
    c, a = _random_case(500, seed=7)
    values = [smooth_ece(c, a, s).item() for s in (0.002, 0.01, 0.05, 0.2, 0.8)]
    assert all(x >= y - 1e-9 for x, y in itertools.pairwise(values))


def test_float32_input_gives_float32_output_close_to_float64() -> None:
    c, a = _random_case(1000, seed=8)
    out32 = smooth_ece(c.float(), a.float())
    assert out32.dtype == torch.float32
    assert out32.item() == pytest.approx(smooth_ece(c, a).item(), abs=1e-5)


def test_correct_may_be_bool_or_int() -> None:
    c, a = _random_case(100, seed=9)
    expected = smooth_ece(c, a, 0.1).item()
    assert smooth_ece(c, a.bool(), 0.1).item() == pytest.approx(expected, abs=1e-12)
    assert smooth_ece(c, a.long(), 0.1).item() == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_confidence_one_signed_residual() -> None:
    # All predictions correct, so r = 1 - c > 0 and the smoothed residual is positive on the
    # whole grid: |·| never switches branch and finite differences are exact up to O(eps²).
    g = torch.Generator().manual_seed(10)
    c = (0.05 + 0.9 * torch.rand(8, generator=g, dtype=torch.float64)).requires_grad_()
    a = torch.ones(8, dtype=torch.float64)
    for method in ("cosine", "direct"):
        assert torch.autograd.gradcheck(
            lambda x, m=method: smooth_ece(x, a, 0.07, method=m, grid_size=201), (c,)
        )


def test_gradcheck_confidence_mixed_signs() -> None:
    # Mixed signs: |·| has kinks where the smoothed residual crosses zero between grid points;
    # with this fixed seed no grid value sits within finite-difference reach of zero, so the
    # check is deterministic (it depends only on the seed, not on chance at run time).
    c, a = _random_case(8, seed=11)
    c = (0.05 + 0.9 * c).requires_grad_()
    for method in ("cosine", "direct"):
        assert torch.autograd.gradcheck(
            lambda x, m=method: smooth_ece(x, a, 0.1, method=m, grid_size=201), (c,)
        )


def test_gradcheck_logits() -> None:
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(8, 3, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 3, (8,), generator=g)
    assert torch.autograd.gradcheck(
        lambda x: smooth_ece_from_logits(x, labels, 0.1, grid_size=201), (logits,)
    )


def test_temperature_tensor_receives_gradient() -> None:
    g = torch.Generator().manual_seed(13)
    logits = 3 * torch.randn(200, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (200,), generator=g)
    temperature = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    loss = smooth_ece_from_logits(logits, labels, temperature=temperature)
    loss.backward()
    assert temperature.grad is not None and torch.isfinite(temperature.grad)
    assert temperature.grad.item() != 0.0


def test_auto_sigma_gradient_is_gradient_at_fixed_sigma_star() -> None:
    c, a = _random_case(200, seed=14)
    c1 = c.clone().requires_grad_()
    smooth_ece(c1, a).backward()
    c2 = c.clone().requires_grad_()
    smooth_ece(c2, a, fixed_point_sigma(c, a)).backward()
    torch.testing.assert_close(c1.grad, c2.grad)


def test_chunking_does_not_change_values_or_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    c, a = _random_case(700, seed=15)
    results = []
    for chunk in (ece_module._CHUNK_ELEMENTS, 997):
        monkeypatch.setattr(ece_module, "_CHUNK_ELEMENTS", chunk)
        for method in ("cosine", "direct"):
            x = c.clone().requires_grad_()
            value = smooth_ece(x, a, 0.02, method=method)
            value.backward()
            results.append((value.detach(), x.grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0])
        torch.testing.assert_close(grad, results[0][1])


@pytest.mark.parametrize("sigma", [None, 0.05, 0.0005])
def test_confidences_exactly_zero_and_one_are_finite(sigma: float | None) -> None:
    c = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5, 1.0, 0.0], requires_grad=True)
    a = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    value = smooth_ece(c, a, sigma)
    value.backward()
    assert torch.isfinite(value)
    assert c.grad is not None and torch.isfinite(c.grad).all()
    assert torch.isfinite(binned_ece(c, a))
    _, acc, dens = reliability_curve(c, a, sigma)
    assert torch.isfinite(acc).all() and torch.isfinite(dens).all()


def test_saturated_logits_are_finite() -> None:
    logits = torch.tensor([[1e4, 0.0, 0.0], [0.0, -1e4, 3.0], [2.0, 1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 0])
    conf, _ = top_label_confidence(logits, labels)
    assert conf[0].item() == 1.0
    value = smooth_ece_from_logits(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- top-label / binned


def test_top_label_confidence() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 4.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    conf, correct = top_label_confidence(logits, labels)
    torch.testing.assert_close(conf, torch.softmax(logits, -1).max(-1).values)
    torch.testing.assert_close(correct, torch.tensor([1.0, 0.0, 1.0]))
    conf_t, _ = top_label_confidence(logits, labels, temperature=2.0)
    torch.testing.assert_close(conf_t, torch.softmax(logits / 2, -1).max(-1).values)


def test_binned_ece_hand_example() -> None:
    # 5 bins, right-closed, first holds 0: bin0 = {0.0, 0.1}, bin1 = {0.3, 0.35}, bin4 = {0.9, 1}.
    c = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.9, 1.0])
    a = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    # |0.9| + |1 - 0.65| + |2 - 1.9| over 6 samples
    assert binned_ece(c, a, n_bins=5).item() == pytest.approx(1.35 / 6, abs=1e-6)
    # A single bin is |mean accuracy - mean confidence|.
    assert binned_ece(c, a, n_bins=1).item() == pytest.approx(abs(4 - 2.65) / 6, abs=1e-6)


def test_binned_ece_edges_are_right_closed() -> None:
    # 0.2 is the upper edge of the first of 5 bins, so it does not share a bin with 0.25.
    c = torch.tensor([0.2, 0.25])
    a = torch.tensor([1.0, 0.0])
    assert binned_ece(c, a, n_bins=5).item() == pytest.approx((0.8 + 0.25) / 2, abs=1e-6)
    c64 = torch.tensor([0.2, 0.25], dtype=torch.float64)
    assert binned_ece(c64, a.double(), n_bins=5).item() == pytest.approx(0.525, abs=1e-12)
    # Upcasting float32 0.2 gives 0.2000000029..., which honestly belongs to the second bin.
    assert binned_ece(c.double(), a.double(), n_bins=5).item() == pytest.approx(0.275, abs=1e-6)


# ----------------------------------------------------------------------------- reliability curve


def test_reliability_curve_matches_nadaraya_watson_reference() -> None:
    c, a = _random_case(300, seed=16)
    sigma = 0.05
    grid, acc, dens = reliability_curve(c, a, sigma, grid_size=501)
    assert grid.shape == acc.shape == dens.shape == (501,)
    k = _ref_kernel(grid.numpy(), c.numpy(), sigma)
    np.testing.assert_allclose(acc.numpy(), k @ a.numpy() / k.sum(1), atol=1e-10)
    np.testing.assert_allclose(dens.numpy(), k.mean(1), rtol=1e-10)
    assert integrate.trapezoid(dens.numpy(), grid.numpy()) == pytest.approx(1.0, abs=1e-6)


def test_reliability_curve_far_from_data_stays_finite() -> None:
    c = torch.tensor([0.45, 0.5, 0.55], dtype=torch.float64)
    a = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    _, acc, dens = reliability_curve(c, a, 0.002)
    assert torch.isfinite(acc).all() and (acc >= 0).all() and (acc <= 1).all()
    assert dens[0].item() == 0.0  # underflows, but the accuracy ratio is still defined
    _, acc_none, _ = reliability_curve(c, torch.zeros(3, dtype=torch.float64), 0.002)
    assert (acc_none == 0).all()


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: smooth_ece(torch.rand(3, 2), torch.ones(3)), "confidence"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(3, 1)), "correct"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(4)), "correct"),
        (lambda: smooth_ece(torch.rand(0), torch.ones(0)), "confidence"),
        (lambda: smooth_ece(torch.tensor([0.5, 1.2]), torch.ones(2)), "confidence"),
        (lambda: smooth_ece(torch.tensor([0.5, float("nan")]), torch.ones(2)), "confidence"),
        (lambda: smooth_ece(torch.tensor([0.5, 0.7]), torch.tensor([2.0, 0.0])), "correct"),
        (lambda: smooth_ece(torch.tensor([1, 0]), torch.ones(2)), "confidence"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(3), 0.0), "sigma"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(3), -0.1), "sigma"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(3), float("inf")), "sigma"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(3), grid_size=1), "grid_size"),
        (lambda: smooth_ece(torch.rand(3), torch.ones(3), 0.1, method="fft"), "method"),
        (lambda: binned_ece(torch.rand(3, 1), torch.ones(3)), "confidence"),
        (lambda: binned_ece(torch.rand(3), torch.ones(2)), "correct"),
        (lambda: binned_ece(torch.rand(3), torch.ones(3), n_bins=0), "n_bins"),
        (
            lambda: fixed_point_sigma(torch.rand(3), torch.ones(3), sigma_min=0.5, sigma_max=0.1),
            "sigma_min",
        ),
        (lambda: reliability_curve(torch.rand(3), torch.ones(3), -1.0), "sigma"),
        (lambda: top_label_confidence(torch.randn(3), torch.zeros(3, dtype=torch.long)), "logits"),
        (
            lambda: top_label_confidence(torch.randn(3, 2), torch.zeros(4, dtype=torch.long)),
            "labels",
        ),
        (lambda: top_label_confidence(torch.randn(3, 2), torch.full((3,), 2)), "labels"),
        (lambda: top_label_confidence(torch.randn(3, 2), torch.zeros(3)), "labels"),
        (
            lambda: top_label_confidence(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), 0.0),
            "temperature",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 3.0])
def test_reflected_kernel_integrates_to_one(sigma: float) -> None:
    c = torch.tensor([0.0, 0.02, 0.5, 0.97, 1.0], dtype=torch.float64)
    grid, _, dens = reliability_curve(c, torch.ones(5, dtype=torch.float64), sigma)
    assert integrate.trapezoid(dens.numpy(), grid.numpy()) == pytest.approx(1.0, abs=1e-5)
    # The cosine form gives the same mass: smECE with r = 1 - c > 0 is mean(1 - c) exactly.
    expected = (1 - c).mean().item()
    assert smooth_ece(c, torch.ones(5, dtype=torch.float64), sigma).item() == pytest.approx(
        expected, abs=1e-5
    )
