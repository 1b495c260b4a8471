"""DPM-Solver++(2M) (Lu et al., 2022) on ADM's discrete chain, and the guidance field it carries.

**The solver.** With α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = log(α_t/σ_t) (half the log-SNR),
the probability-flow ODE in data prediction D(x, t) = x̂₀ is solved exactly in its linear part:
from s to t (h = λ_t − λ_s > 0),

    first order (DDIM):  x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D_s
    second order (2M):   D = (1 + 1/(2r))·D_s − 1/(2r)·D_prev,   r = h_prev/h

on a grid of base-chain timesteps (the respaced chain's). The first step is first order (no
previous D), and the last step — from the smallest timestep to σ = 0, where e^{−h} = 0 — is
first order and returns D itself: N network evaluations for N grid points, as
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
final_sigmas_type="zero")`` and k-diffusion's ``sample_dpmpp_2m`` do. x̂₀ is clipped to
[−1, 1] as ADM's ``clip_denoised`` (or dynamically thresholded); the learned-variance
channels are not used.

**Guidance.** A guided DDPM step shifts the mean by (Σ_i + a_i)·s·g (ADM's ``condition_mean``
with EluCD's additive a_i = sin(π·i/N)·Σ_max·γ). To first order in the step, Σ_i·s·g is the
reverse SDE with its score corrected by s·g; so the chain's whole guidance field is the score
correction

    δ(x, t) = w(t)·s·g,    w(t) = 1 + a(t)/Σ(t),

with Σ(t), a(t) the step variance and additive variance of the chain the recipe was made for at
time t. Σ(t) shrinks with the step size, a(t) does not: an N-step chain's w grows with N, which
is why EluCD's push depends on the step count. The field of the **reference chain** (``reference
_steps``, 250 for the paper's protocol) is N-independent, and the solver integrates the
probability-flow ODE of the score corrected by it: the score −ε/σ becomes −ε/σ + δ, i.e.

    ε' = ε − σ_t·w(t)·s·g,     D' = x̂₀ + (σ_t²/α_t)·w(t)·s·g,

ADM's ``condition_score`` when w = 1 (a noise-aware classifier, constant schedule). An x̂₀-space
gradient (EluCD's off-the-shelf classifier) is applied to x_t as is, as the DDPM step applies it.
Its x̂₀ shift grows like σ²/α at high noise, but the update multiplies it by α_{t}(1 − e^{−h})
≈ α·h, so the push on x per step is ≈ σ²·h·δ = ½·β·Δt·δ — bounded, and half the SDE's β·Δt·δ,
as for any score correction: the ODE and the SDE of one corrected score share their marginals,
not their paths. The shift is added after x̂₀ is clipped (clipping it would erase the guidance
at high noise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "dpmpp_sde_update",
    "dpmpp_update",
    "dynamic_threshold",
    "guided_data_prediction",
    "half_logsnr",
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


def dynamic_threshold(x0: Tensor, quantile: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Imagen's dynamic thresholding: per sample, s = max(quantile of |x̂₀|, 1), clip to [−s, s]
    and divide by s, then scale to ``max_value``."""
    flat = x0.reshape(x0.shape[0], -1).abs().to(torch.float32)
    s = torch.quantile(flat, quantile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.dim() - 1)))
    return (torch.maximum(torch.minimum(x0, s), -s) / s) * max_value


def guided_data_prediction(
    pred_x0: Tensor, grad: Tensor, weight: Tensor, alpha: float, sigma: float
) -> Tensor:
    """D' = x̂₀ + (σ²/α)·w·(s·g): the data prediction of the score corrected by w·s·g (module
    docstring). ``grad`` is the guidance's s(t)·g, ``weight`` w per element (or per sample,
    or one number)."""
    w = weight.to(pred_x0.dtype)
    if w.dim() != pred_x0.dim():
        w = w.reshape(-1, *([1] * (pred_x0.dim() - 1)))
    return pred_x0 + (sigma**2 / alpha) * w * grad
