"""DPM-Solver++(2M) (Lu et al., 2022) on ADM's discrete chain, and how a guidance field enters it.

**The solver.** With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = log(α_t/σ_t) (half the log-SNR),
the probability-flow ODE in data prediction D(x, λ) = x̂₀ is exact in its linear part: from s
to t (h = λ_t − λ_s > 0)

    x_t = (σ_t/σ_s)·x_s + σ_t·∫_{λ_s}^{λ_t} e^{λ}·D(x_λ, λ) dλ,

and the reverse SDE's is x_t = (σ_t/σ_s)·e^{−h}·x_s + 2α_t·∫ e^{−2(λ_t−λ)}·D dλ + noise.
2M freezes D at first order, or extrapolates it linearly in λ from the previous point:

    first order (DDIM):  x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D_s
    second order (2M):   D = (1 + 1/(2r))·D_s − 1/(2r)·D_prev,   r = h_prev/h

on a grid of base-chain timesteps (the respaced chain's). The first step is first order (no
previous D), and the last — from the grid's least noisy point to σ = 0, where e^{−h} = 0 — is
first order and returns D itself: N network evaluations for N grid points, as diffusers'
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
final_sigmas_type="zero")`` and k-diffusion's ``sample_dpmpp_2m`` do. x̂₀ is clipped to
[−1, 1] as ADM's ``clip_denoised`` (or dynamically thresholded); the learned-variance
channels are not used.

**The grid.** Because the last step is that first-order jump, the grid should end where one
denoising step is accurate, not at the chain's step 0: uniform in log-SNR down to log-SNR 6
(``respacing: logsnr20:6``, the options' default). A time-uniform grid keeps step 0 and makes
its last interval a second-order step from λ = 1.7 to λ = 4.6 (h = 2.9 at 20 NFE), which
inflates an exact Gaussian's spread by 24% (ODE) and 52% (SDE); docs/few_step.md has the table.

**Guidance.** A guided DDPM step shifts the mean by (Σ_i + a_i)·s·g (ADM's ``condition_mean``
with EluCD's additive a_i = sin(π·i/N)·Σ_max·γ). To first order in the step that is the reverse
SDE with its score corrected by

    δ(x, t) = w(t)·s(t)·g,    w(t) = 1 + a(t)/Σ(t),

Σ and a the step variance and additive variance of the ``reference_steps``-step DDPM chain at
t. Both Σ and a scale with the step size (a ∝ Σ_max), so w hardly depends on the reference
chain's length (its mean over t is 1.48–1.50 for 20 to 1,000 steps): ``reference_steps`` fixes
where the weight is read, not the strength. An x̂₀-space gradient (EluCD's off-the-shelf
classifier) is applied to x_t as is, as the DDPM step applies it.

**How δ enters the integrator.** Extrapolate in λ what is smooth in λ. The corrected score's
data prediction is D' = D + (σ²/α)·δ.

- *A noise-aware (x_t-space) gradient* is α/σ² times a difference of data predictions
  (Tweedie: ∇ log p(y|x_t) = (α/σ²)·(E[x₀|x_t, y] − E[x₀|x_t])), so D' is the conditional
  denoiser, as smooth as D: it goes through the 2M blend in D's place (exact for a
  linear-Gaussian classifier at every NFE, measured).
- *An x̂₀-space gradient applied as a score correction* (EluCD's off-the-shelf classifier) is
  O(1) at every noise level, so (σ²/α)·δ grows like e^{−λ} at high noise, and a linear
  extrapolation of that keeps about 1.5 − 0.5·e^{h} of it (measured on ``logsnr10:6``: 54% of
  the converged shift for the ODE, −3% for the SDE). Instead D goes through the blend alone and δ is
  carried beside it. Substituting D' into the exact step, its term is

      ODE:  σ_t·∫ e^{λ}·(σ²/α)·δ dλ = σ_t·∫ σ(λ)·δ(λ) dλ,       σ(λ) = (1 + e^{2λ})^{−1/2}
      SDE:  2α_t·∫ e^{−2(λ_t−λ)}·(σ²/α)·δ dλ = σ_t·∫ 2e^{−(λ_t−λ)}·σ(λ)·δ(λ) dλ,

  a known kernel times δ. δ is frozen on the first step and extrapolated linearly through
  δ_prev after it, and the kernel's moments K₀ = ∫k, K₁ = ∫k·(λ − λ_s) are integrated exactly
  (closed forms for K₀, Gauss–Legendre for K₁): exact for δ constant or linear in λ.

The final jump to σ = 0 returns Tweedie's estimate D + (σ²/α)·δ. The shift is added after x̂₀ is
clipped (clipping it would erase guidance at high noise). With w = 1 and a noise-aware
classifier this integrates ADM's ``condition_score`` field.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "dpmpp_sde_update",
    "dpmpp_update",
    "dynamic_threshold",
    "guidance_increment",
    "guidance_moments",
    "half_logsnr",
    "score_correction",
]


def half_logsnr(alphas_cumprod: Tensor) -> Tensor:
    """λ = log(α/σ) = ½·log(ᾱ/(1 − ᾱ)) per timestep (float64)."""
    a = alphas_cumprod.to(torch.float64)
    return 0.5 * (torch.log(a) - torch.log1p(-a))


def _step_and_blend(
    data: Tensor, previous: Tensor | None, lam_s: float, lam_t: float, lam_prev: float | None
) -> tuple[float, Tensor]:
    """(h = λ_t − λ_s, D): the 2M multistep blend of this step's and the previous step's data
    predictions, D = (1 + 1/(2r))·x̂₀ − 1/(2r)·x̂₀_prev with r = (λ_s − λ_prev)/h, or x̂₀ alone
    on the first step (first order)."""
    h = lam_t - lam_s
    if h <= 0.0:
        raise ValueError(f"DPM-Solver++ steps must raise λ, got {lam_s} -> {lam_t}")
    if previous is None or lam_prev is None:
        return h, data
    r = (lam_s - lam_prev) / h
    return h, (1.0 + 0.5 / r) * data - (0.5 / r) * previous


def dpmpp_update(
    x: Tensor,
    data: Tensor,
    previous: Tensor | None,
    *,
    lam_s: float,
    lam_t: float,
    lam_prev: float | None,
    sigma_s: float,
    sigma_t: float,
    alpha_t: float,
) -> Tensor:
    """One DPM-Solver++ step from s to t: second order (2M) with the previous step's data
    prediction ``previous`` at λ = ``lam_prev``, first order without it. ``sigma_t = 0`` (the
    final step to the data) returns ``data``."""
    if sigma_t == 0.0:
        return data
    h, d = _step_and_blend(data, previous, lam_s, lam_t, lam_prev)
    return (sigma_t / sigma_s) * x - alpha_t * math.expm1(-h) * d


def dpmpp_sde_update(
    x: Tensor,
    data: Tensor,
    previous: Tensor | None,
    noise: Tensor,
    *,
    lam_s: float,
    lam_t: float,
    lam_prev: float | None,
    sigma_s: float,
    sigma_t: float,
    alpha_t: float,
) -> Tensor:
    """One step of DPM-Solver++(2M) SDE (the reverse SDE's exact linear part, e^{−h} damping and
    fresh noise; Lu et al. 2022): x_t = (σ_t/σ_s)·e^{−h}·x_s + α_t·(1 − e^{−2h})·D +
    σ_t·√(1 − e^{−2h})·z, D the 2M blend as in :func:`dpmpp_update`. ``sigma_t = 0`` returns
    ``data``."""
    if sigma_t == 0.0:
        return data
    h, d = _step_and_blend(data, previous, lam_s, lam_t, lam_prev)
    decay = math.exp(-h)
    return (
        (sigma_t / sigma_s * decay) * x
        - alpha_t * math.expm1(-2.0 * h) * d
        + sigma_t * math.sqrt(-math.expm1(-2.0 * h)) * noise
    )


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)


def _sigma_of_lambda(lam: np.ndarray | float) -> np.ndarray | float:
    """σ at half-log-SNR λ on a variance-preserving chain: (1 + e^{2λ})^{−1/2}."""
    return np.exp(-0.5 * np.logaddexp(0.0, 2.0 * np.asarray(lam, dtype=np.float64)))


def guidance_moments(lam_s: float, lam_t: float, *, stochastic: bool) -> tuple[float, float]:
    """(K₀, K₁) = ∫ k(λ)·(1, λ − λ_s) dλ over [λ_s, λ_t]: the moments of the kernel through which
    a score correction δ reaches x_t/σ_t (module docstring): k = σ(λ) for the ODE,
    2e^{λ−λ_t}·σ(λ) for the SDE. K₀ in closed form, K₁ by 16-point Gauss–Legendre."""
    h = lam_t - lam_s
    u = lam_s + 0.5 * h * (_NODES + 1.0)
    if stochastic:  # ∫ 2e^{λ−λt}(1+e^{2λ})^{−1/2} dλ = 2e^{−λt}·asinh(e^{λ})
        k0 = 2.0 * math.exp(-lam_t) * (math.asinh(math.exp(lam_t)) - math.asinh(math.exp(lam_s)))
        kernel = 2.0 * np.exp(u - lam_t) * _sigma_of_lambda(u)
    else:  # ∫ (1+e^{2λ})^{−1/2} dλ = −asinh(e^{−λ})
        k0 = math.asinh(math.exp(-lam_s)) - math.asinh(math.exp(-lam_t))
        kernel = _sigma_of_lambda(u)
    k1 = 0.5 * h * float(np.sum(_WEIGHTS * kernel * (u - lam_s)))
    return k0, k1


def guidance_increment(
    delta: Tensor,
    previous: Tensor | None,
    *,
    lam_s: float,
    lam_t: float,
    lam_prev: float | None,
    sigma_t: float,
    stochastic: bool,
) -> Tensor:
    """What the score correction δ of an x̂₀-space gradient adds to x_t over one step from s to
    t: σ_t·(K₀·δ_s + K₁·(δ_s − δ_prev)/(λ_s − λ_prev)), δ extrapolated linearly in λ through
    the previous step's ``previous`` (frozen at δ_s without it). Exact for δ constant or
    linear in λ."""
    if lam_t <= lam_s:
        raise ValueError(f"DPM-Solver++ steps must raise λ, got {lam_s} -> {lam_t}")
    k0, k1 = guidance_moments(lam_s, lam_t, stochastic=stochastic)
    if previous is None or lam_prev is None:
        return (sigma_t * k0) * delta
    slope = (delta - previous) / (lam_s - lam_prev)
    return sigma_t * (k0 * delta + k1 * slope)


def dynamic_threshold(x0: Tensor, quantile: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding: per sample, s = max(quantile of |x̂₀|, 1), clip to [−s, s]
    and divide by s, then scale to ``max_value``."""
    flat = x0.reshape(x0.shape[0], -1).abs().to(torch.float32)
    s = torch.quantile(flat, quantile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return (torch.maximum(torch.minimum(x0, s), -s) / s) * max_value


def score_correction(grad: Tensor, weight: Tensor, like: Tensor) -> Tensor:
    """δ = w·(s·g) with w broadcast per sample (or per element) over ``like``."""
    w = weight.to(like.dtype)
    if w.dim() != like.dim():
        w = w.reshape(-1, *([1] * (like.dim() - 1)))
    return w * grad
