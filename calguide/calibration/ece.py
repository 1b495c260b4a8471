"""Calibration error of top-label confidences: SmoothECE and binned ECE.

SmoothECE follows Błasiok & Nakkiran, "Smooth ECE: Principled Reliability Diagrams via Kernel
Smoothing" (ICLR 2024). With residuals ``r_i = a_i - c_i`` and the reflected Gaussian kernel
``K_σ`` on [0, 1],

    smECE_σ = ∫₀¹ |(1/n) Σ_i K_σ(u, c_i) r_i| du.

This is the paper's definition: the paper integrates the absolute Nadaraya–Watson smoothed
residual against the kernel density estimate, and the density cancels the Nadaraya–Watson
denominator, leaving the un-normalised integral above. The bandwidth-free smECE uses the fixed
point σ* = smECE_σ*, which is unique because σ ↦ smECE_σ is non-increasing.

Two exact representations of the same kernel are used, whichever is cheaper:

* ``"cosine"``: the reflected Gaussian is the Neumann heat kernel on [0, 1], so
  ``K_σ(u, c) = 1 + 2 Σ_{j≥1} exp(-π² j² σ² / 2) cos(π j u) cos(π j c)``. The cosine moments of
  the residuals are computed once, after which any σ costs one small matrix-vector product,
  which makes the fixed-point bisection cheap. The series is cut where the weights drop below
  ~1e-14.
* ``"direct"``: a sum of Gaussian densities over the mirror images ``±c + 2k`` that come within
  ten bandwidths of [0, 1]; cheaper for very small σ, where the series needs many terms.

Both run through a chunked autograd function, so memory stays bounded for large ``n`` and the
results are differentiable in the confidences (usable as a training loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_GRID_SIZE",
    "binned_ece",
    "fixed_point_sigma",
    "reliability_curve",
    "smooth_ece",
    "smooth_ece_from_logits",
    "top_label_confidence",
]

DEFAULT_GRID_SIZE = 1001
"""Trapezoid grid on [0, 1] (spacing 1e-3); the smoothed residual has zero slope at both ends,
so the trapezoid rule is accurate there."""

Method = Literal["auto", "cosine", "direct"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Series terms with weight exp(-π² j² σ² / 2) below 1e-14 are dropped.
_COSINE_CUTOFF = math.sqrt(2.0 * math.log(1e14)) / math.pi
# Mirror images farther than this many bandwidths from [0, 1] contribute < 1e-21.
_IMAGE_REACH = 10.0
# Largest (rows x columns) block materialised at once by the chunked kernels.
_CHUNK_ELEMENTS = 1 << 22


# ----------------------------------------------------------------------------- validation


def _check_tensor(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _validate_pair(confidence: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes/ranges once, so the numerical code can assume clean inputs."""
    confidence = _check_tensor(confidence, "confidence")
    correct = _check_tensor(correct, "correct")
    if confidence.ndim != 1:
        raise ValueError(f"confidence must be a 1-D tensor, got shape {tuple(confidence.shape)}")
    if correct.ndim != 1:
        raise ValueError(f"correct must be a 1-D tensor, got shape {tuple(correct.shape)}")
    if not confidence.is_floating_point():
        raise ValueError(f"confidence must be a floating-point tensor, got {confidence.dtype}")
    if correct.shape[0] != confidence.shape[0]:
        raise ValueError(
            "correct must have the same length as confidence, got "
            f"{correct.shape[0]} and {confidence.shape[0]}"
        )
    if confidence.shape[0] == 0:
        raise ValueError("confidence must contain at least one sample")
    if correct.device != confidence.device:
        raise ValueError(f"correct is on {correct.device} but confidence is on {confidence.device}")
    _check_unit_interval(confidence, "confidence")
    if not correct.is_floating_point():
        correct = correct.to(confidence.dtype)
    _check_unit_interval(correct, "correct")
    return confidence, correct


def _check_unit_interval(x: Tensor, name: str) -> None:
    x = x.detach()
    if not bool(((x >= 0) & (x <= 1)).all()):  # NaN fails both comparisons
        raise ValueError(
            f"{name} values must lie in [0, 1], got min={x.min().item()}, max={x.max().item()}"
        )


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, Tensor):
        sigma = sigma.item()
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a float, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    return sigma


def _check_grid_size(grid_size: int) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an integer >= 2, got {grid_size!r}")
    return grid_size


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps cos(π j c) accurate for thousands of terms; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


# ----------------------------------------------------------------------------- kernels


class _CosineBasis:
    """Columns cos(π j c) for j in [start, stop): the reflected-kernel eigenfunctions."""

    def __init__(self, start: int, stop: int, like: Tensor) -> None:
        self.freqs = math.pi * torch.arange(start, stop, dtype=like.dtype, device=like.device)

    @property
    def width(self) -> int:
        return self.freqs.shape[0]

    def values(self, c: Tensor) -> Tensor:
        return torch.cos(c[:, None] * self.freqs)

    def values_and_grad(self, c: Tensor) -> tuple[Tensor, Tensor]:
        phase = c[:, None] * self.freqs
        return torch.cos(phase), -self.freqs * torch.sin(phase)


def _mirror_images(sigma: float) -> list[tuple[float, float]]:
    """(sign, shift) pairs of images ``sign * c + shift`` that can reach [0, 1].

    The images of c under reflection at 0 and 1 are c + 2k and -c + 2k. The three nearest
    (c, -c, 2 - c) are always kept; farther ones only when σ is large enough to reach them.
    """
    reach = _IMAGE_REACH * sigma
    images: list[tuple[float, float]] = []
    k_max = math.ceil((1.0 + reach) / 2.0) + 1
    for k in range(-k_max, k_max + 1):
        shift = 2.0 * k
        # c + 2k spans [2k, 2k + 1]; -c + 2k spans [2k - 1, 2k]. Distance of each to [0, 1]:
        if max(shift - 1.0, -shift - 1.0, 0.0) <= reach or k == 0:
            images.append((1.0, shift))
        if max(shift - 2.0, -shift, 0.0) <= reach or k in (0, 1):
            images.append((-1.0, shift))
    return images


class _ImageBasis:
    """Columns K_σ(u_g, c) at grid points u_g, as an explicit sum over mirror images."""

    def __init__(self, grid: Tensor, sigma: float) -> None:
        self.grid = grid
        self.sigma = sigma
        self.images = _mirror_images(sigma)

    @property
    def width(self) -> int:
        return self.grid.shape[0] * len(self.images)  # cost proxy for chunking

    def _accumulate(self, c: Tensor, with_grad: bool) -> tuple[Tensor, Tensor | None]:
        inv_sigma = 1.0 / self.sigma
        values = torch.zeros(c.shape[0], self.grid.shape[0], dtype=c.dtype, device=c.device)
        grads = torch.zeros_like(values) if with_grad else None
        for sign, shift in self.images:
            z = (self.grid[None, :] - (sign * c + shift)[:, None]) * inv_sigma
            dens = torch.exp(-0.5 * z * z) * (_INV_SQRT_2PI * inv_sigma)
            values += dens
            if grads is not None:
                # d/dc φ_σ(u - (sign c + shift)) = sign * φ_σ(u - p) * (u - p) / σ²
                grads += (sign * inv_sigma) * dens * z
        return values, grads

    def values(self, c: Tensor) -> Tensor:
        return self._accumulate(c, with_grad=False)[0]

    def values_and_grad(self, c: Tensor) -> tuple[Tensor, Tensor]:
        values, grads = self._accumulate(c, with_grad=True)
        assert grads is not None
        return values, grads


_Basis = _CosineBasis | _ImageBasis


def _row_chunks(n: int, width: int) -> Sequence[slice]:
    rows = max(1, _CHUNK_ELEMENTS // max(1, width))
    return [slice(i, min(n, i + rows)) for i in range(0, n, rows)]


class _WeightedBasisSum(torch.autograd.Function):
    """out[m] = Σ_i r_i B_m(c_i), computed in row chunks in both passes.

    Recomputing the basis in backward (instead of letting autograd keep the n x m matrices)
    bounds memory by the chunk size, which is what makes large n usable as a loss.
    """

    @staticmethod
    def forward(ctx, c: Tensor, r: Tensor, basis: _Basis) -> Tensor:  # type: ignore[override]
        out = None
        for rows in _row_chunks(c.shape[0], basis.width):
            part = r[rows] @ basis.values(c[rows])
            out = part if out is None else out + part
        ctx.basis = basis
        ctx.save_for_backward(c, r)
        assert out is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        c, r = ctx.saved_tensors
        basis: _Basis = ctx.basis
        need_c, need_r = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_c = torch.zeros_like(c) if need_c else None
        grad_r = torch.zeros_like(r) if need_r else None
        for rows in _row_chunks(c.shape[0], basis.width):
            if need_c:
                values, dvalues = basis.values_and_grad(c[rows])
                assert grad_c is not None
                grad_c[rows] = r[rows] * (dvalues @ grad_out)
            else:
                values = basis.values(c[rows])
            if need_r:
                assert grad_r is not None
                grad_r[rows] = values @ grad_out
        return grad_c, grad_r, None


def _n_cosine_terms(sigma: float) -> int:
    return math.ceil(_COSINE_CUTOFF / sigma) + 1


def _cosine_weights(n_terms: int, sigma: float, like: Tensor) -> Tensor:
    j = torch.arange(n_terms, dtype=like.dtype, device=like.device)
    weights = 2.0 * torch.exp(-0.5 * (math.pi * sigma * j) ** 2)
    weights[0] = 1.0
    return weights


def _grid(grid_size: int, like: Tensor) -> Tensor:
    return torch.linspace(0.0, 1.0, grid_size, dtype=like.dtype, device=like.device)


def _trapezoid_abs(values: Tensor) -> Tensor:
    """∫₀¹ |f| by the trapezoid rule on the uniform grid the values sit on."""
    a = values.abs()
    h = 1.0 / (a.shape[-1] - 1)
    return h * (a.sum(-1) - 0.5 * (a[..., 0] + a[..., -1]))


def _choose_method(method: Method, n: int, sigma: float, grid_size: int) -> str:
    if method not in ("auto", "cosine", "direct"):
        raise ValueError(f"method must be 'auto', 'cosine' or 'direct', got {method!r}")
    if method != "auto":
        return method
    n_terms = _n_cosine_terms(sigma)
    cosine_cost = (n + grid_size) * n_terms
    direct_cost = n * grid_size * len(_mirror_images(sigma))
    return "cosine" if cosine_cost <= direct_cost else "direct"


def _smoothed_residual(c: Tensor, r: Tensor, sigma: float, grid: Tensor, method: str) -> Tensor:
    """(1/n) Σ_i K_σ(u_g, c_i) r_i at every grid point u_g (differentiable in c and r)."""
    n = c.shape[0]
    if method == "cosine":
        n_terms = _n_cosine_terms(sigma)
        moments = _WeightedBasisSum.apply(c, r, _CosineBasis(0, n_terms, c)) / n
        weights = _cosine_weights(n_terms, sigma, c)
        return _CosineBasis(0, n_terms, c).values(grid) @ (weights * moments)
    return _WeightedBasisSum.apply(c, r, _ImageBasis(grid, sigma)) / n


# ----------------------------------------------------------------------------- public API


def top_label_confidence(
    logits: Tensor, labels: Tensor, temperature: float | Tensor = 1.0
) -> tuple[Tensor, Tensor]:
    """Top-label confidence max_k softmax(logits / T) and 0/1 correctness of the argmax.

    Differentiable in ``logits`` (and in ``temperature`` if it is a tensor, so temperature
    scaling can be fitted through the calibration losses). ``correct`` has the confidence dtype.
    """
    logits = _check_tensor(logits, "logits")
    labels = _check_tensor(labels, "labels")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (n, classes), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one entry per row of logits ({logits.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got out-of-range values")
    t = temperature.detach() if isinstance(temperature, Tensor) else temperature
    if isinstance(t, Tensor) and t.numel() != 1:
        raise ValueError("temperature must be a scalar")
    t_value = float(t)
    if not (math.isfinite(t_value) and t_value > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {t_value}")
    probs = torch.softmax(logits / temperature, dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == labels.to(predicted.device)).to(confidence.dtype)
    return confidence, correct


@torch.no_grad()
def fixed_point_sigma(
    confidence: Tensor,
    correct: Tensor,
    *,
    grid_size: int = DEFAULT_GRID_SIZE,
    sigma_min: float = 1e-3,
    sigma_max: float = 1.0,
    xtol: float = 1e-6,
) -> float:
    """Bandwidth σ* with smECE_σ* = σ*, by bisection on [sigma_min, sigma_max].

    smECE_σ - σ is strictly decreasing, so the crossing is unique. Returns (within ``xtol``)
    ``sigma_min`` when the data are calibrated below that resolution, and ``sigma_max`` if smECE
    stays above it.
    The cosine moments are grown lazily, so each bisection step costs O(grid x terms).
    """
    confidence, correct = _validate_pair(confidence, correct)
    grid_size = _check_grid_size(grid_size)
    sigma_min, sigma_max = _check_sigma(sigma_min), _check_sigma(sigma_max)
    if sigma_min >= sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} >= {sigma_max}")
    dtype = _compute_dtype(confidence.device)
    c = confidence.detach().to(dtype)
    r = correct.detach().to(dtype) - c
    n = c.shape[0]
    grid = _grid(grid_size, c)

    moments = torch.empty(0, dtype=dtype, device=c.device)
    grid_cos = torch.empty(grid_size, 0, dtype=dtype, device=c.device)

    def smece(sigma: float) -> float:
        nonlocal moments, grid_cos
        n_terms = _n_cosine_terms(sigma)
        have = moments.shape[0]
        if n_terms > have:
            # Bisection mostly shrinks σ gradually, so grow by a margin to avoid tiny extensions.
            basis = _CosineBasis(have, max(n_terms, have + have // 4), c)
            new = _WeightedBasisSum.apply(c, r, basis) / n
            moments = torch.cat([moments, new])
            grid_cos = torch.cat([grid_cos, basis.values(grid)], dim=1)
        weights = _cosine_weights(n_terms, sigma, c)
        residual = grid_cos[:, :n_terms] @ (weights * moments[:n_terms])
        return float(_trapezoid_abs(residual))

    # sigma_min is never evaluated: it is the costliest point (most series terms), and if the
    # crossing lies below it the bisection simply converges onto sigma_min anyway.
    lo, hi = sigma_min, sigma_max
    if smece(hi) >= hi:
        return hi
    while hi - lo > xtol:
        mid = 0.5 * (lo + hi)
        if smece(mid) > mid:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def smooth_ece(
    confidence: Tensor,
    correct: Tensor,
    sigma: float | None = None,
    *,
    grid_size: int = DEFAULT_GRID_SIZE,
    method: Method = "auto",
    sigma_min: float = 1e-3,
) -> Tensor:
    """SmoothECE (Błasiok & Nakkiran, ICLR 2024) of top-label confidences, as a scalar tensor.

    Computes the paper's definition ∫₀¹ |(1/n) Σ_i K_σ(u, c_i) (a_i - c_i)| du (the smoothed
    residual weighted by the smoothed density, i.e. not divided by it), by the trapezoid rule
    on ``grid_size`` points.
    ``sigma=None`` uses the fixed-point bandwidth σ* (found without gradient), then evaluates
    smECE_σ* with gradient, so the value is usable as a loss; the dependence of σ* on the
    inputs is deliberately not differentiated. ``correct`` may be 0/1 or soft in [0, 1].
    ``method`` picks the kernel representation ("auto" chooses the cheaper exact one).
    ``sigma_min`` floors σ*: a batch calibrated below that resolution is scored at
    ``sigma_min`` (as a training loss, 0.01 keeps each step cheap: the cosine series needs
    ~1/σ terms).
    """
    confidence, correct = _validate_pair(confidence, correct)
    grid_size = _check_grid_size(grid_size)
    if sigma is None:
        sigma = fixed_point_sigma(confidence, correct, grid_size=grid_size, sigma_min=sigma_min)
    sigma = _check_sigma(sigma)
    chosen = _choose_method(method, confidence.shape[0], sigma, grid_size)
    dtype = _compute_dtype(confidence.device)
    c = confidence.to(dtype)
    r = correct.to(dtype) - c
    residual = _smoothed_residual(c, r, sigma, _grid(grid_size, c), chosen)
    return _trapezoid_abs(residual).to(confidence.dtype)


def smooth_ece_from_logits(
    logits: Tensor,
    labels: Tensor,
    sigma: float | None = None,
    *,
    temperature: float | Tensor = 1.0,
    grid_size: int = DEFAULT_GRID_SIZE,
    method: Method = "auto",
    sigma_min: float = 1e-3,
) -> Tensor:
    """SmoothECE of the top-label confidences of ``softmax(logits / temperature)``."""
    confidence, correct = top_label_confidence(logits, labels, temperature)
    return smooth_ece(
        confidence, correct, sigma, grid_size=grid_size, method=method, sigma_min=sigma_min
    )


def _bin_statistics(
    confidence: Tensor, correct: Tensor, n_bins: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin counts and sums of confidence and correctness on equal-width bins.

    Bins are right-closed, (k/B, (k+1)/B], except the first, which also holds 0. Edges are k/B
    computed by division so that values such as 0.2 land on the exact float edge.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    # Edges in the input dtype (so a float32 0.2 meets the float32 edge 1/5); sums in the
    # wider compute dtype, since float32 running sums over many samples drift by ~1e-4.
    edges = torch.arange(1, n_bins, dtype=confidence.dtype, device=confidence.device) / n_bins
    index = torch.bucketize(confidence.detach(), edges, right=False)
    dtype = _compute_dtype(confidence.device)
    zeros = torch.zeros(n_bins, dtype=dtype, device=confidence.device)
    counts = zeros.index_add(0, index, torch.ones_like(confidence, dtype=dtype))
    conf_sum = zeros.index_add(0, index, confidence.to(dtype))
    correct_sum = zeros.index_add(0, index, correct.to(dtype))
    return counts, conf_sum, correct_sum


def binned_ece(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> Tensor:
    """Classic binned ECE: Σ_b (n_b / n) |acc_b - conf_b| over equal-width bins.

    Kept next to smECE because it is the number papers report; it is discontinuous in the
    confidences, which is why smECE is the primary metric.
    """
    confidence, correct = _validate_pair(confidence, correct)
    _, conf_sum, correct_sum = _bin_statistics(confidence, correct, n_bins)
    ece = (correct_sum - conf_sum).abs().sum() / confidence.shape[0]
    return ece.to(confidence.dtype)


@torch.no_grad()
def reliability_curve(
    confidence: Tensor,
    correct: Tensor,
    sigma: float | None = None,
    *,
    grid_size: int = DEFAULT_GRID_SIZE,
) -> tuple[Tensor, Tensor, Tensor]:
    """Smooth reliability diagram: (grid, smoothed accuracy, confidence density) on [0, 1].

    Accuracy is the Nadaraya–Watson estimate Σ K a_i / Σ K and density is (1/n) Σ K, with the
    same reflected kernel (σ* by default) as smECE. Sums run in log space over the mirror
    images, so the ratio stays finite far from the data where the kernel underflows.
    """
    confidence, correct = _validate_pair(confidence, correct)
    grid_size = _check_grid_size(grid_size)
    if sigma is None:
        sigma = fixed_point_sigma(confidence, correct, grid_size=grid_size)
    sigma = _check_sigma(sigma)
    dtype = _compute_dtype(confidence.device)
    c = confidence.detach().to(dtype)
    a = correct.detach().to(dtype)
    grid = _grid(grid_size, c)
    images = _mirror_images(sigma)
    log_norm = -math.log(sigma) - 0.5 * math.log(2.0 * math.pi)
    log_a = torch.log(a)  # -inf for incorrect samples: they drop out of the numerator

    log_den = torch.full((grid_size,), -math.inf, dtype=dtype, device=c.device)
    log_num = log_den.clone()
    for rows in _row_chunks(c.shape[0], grid_size * len(images)):
        z = torch.stack(
            [(grid[None, :] - (sign * c[rows] + shift)[:, None]) / sigma for sign, shift in images]
        )
        log_k = torch.logsumexp(-0.5 * z * z, dim=0) + log_norm  # (rows, grid)
        log_den = torch.logaddexp(log_den, torch.logsumexp(log_k, dim=0))
        log_num = torch.logaddexp(log_num, torch.logsumexp(log_k + log_a[rows, None], dim=0))
    accuracy = torch.exp(log_num - log_den)
    density = torch.exp(log_den - math.log(c.shape[0]))
    out = confidence.dtype
    return grid.to(out), accuracy.to(out), density.to(out)
