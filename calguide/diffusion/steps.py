"""Ancestral DDPM and DDIM steps with a guidance hook (the samplers and the loop that call them
are in :mod:`.samplers`).

The steps take the network output as an argument, so they are pure functions of
(output, x_t, t, noise) and can be checked against ADM's formulas directly. A guidance hook
never knows which sampler calls it, and the sampler never knows which strategy it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from calguide.diffusion.gaussian import GaussianDiffusion, MeanVariance, extract


class GuidanceFn(Protocol):
    """Returns the already-scaled guidance gradient s(t)·g for a batch.

    ``t`` holds base-chain timesteps (what the network sees). ``space`` says what g is a
    gradient with respect to: ``"x_t"`` (noise-aware classifier, or back-propagated through the
    denoiser) or ``"x0"`` (an off-the-shelf classifier on x̂₀). Plain functions count as
    ``"x_t"`` with no additive variance.

    ``extra_variance(index, num_steps, variance_max)`` returns the a_i the DDPM step adds to
    Σ_t in the mean shift μ + (Σ_t + a_i)·s·g (EluCD's schedule), or ``None``; ``adds_variance``
    says whether it can (such guidance is defined on the DDPM step only).
    """

    space: Literal["x_t", "x0"]
    adds_variance: bool

    def __call__(self, x_t: Tensor, pred_x0: Tensor, t: Tensor) -> Tensor: ...

    def extra_variance(
        self, index: Tensor, num_steps: int, variance_max: Tensor
    ) -> Tensor | None: ...


ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StepOutput:
    sample: Tensor
    pred_x0: Tensor
    mean: Tensor
    log_variance: Tensor
    guidance: Tensor | None
    variance_max: Tensor | None = None  # running max of Σ_t per sample (guided DDPM chains)


def guidance_space(guidance: Callable | None) -> str:
    return getattr(guidance, "space", "x_t") if guidance is not None else "x_t"


def check_sampler_supports(guidance: Callable | None, sampler: str) -> None:
    """Refuse, before any work is done, guidance that is defined on the DDPM step only."""
    if sampler != "ddim" or guidance is None:
        return
    if guidance_space(guidance) == "x0":
        raise ValueError(
            "diffusion.sampler=ddim cannot apply x0-mode guidance (the gradient is taken w.r.t. "
            "x̂₀ and would be amplified by (1-ᾱ_t)/√ᾱ_t at high noise); use diffusion.sampler=ddpm "
            "or guidance.classifier.through_denoiser=true"
        )
    if getattr(guidance, "adds_variance", False):
        raise ValueError(
            "diffusion.sampler=ddim cannot apply a schedule that adds to the DDPM step's "
            "variance (guidance.schedule=elucd); use diffusion.sampler=ddpm"
        )


def step_variance(variance: Tensor) -> Tensor:
    """One variance per sample: its first element (EluCD reads one element of the batch)."""
    return variance.reshape(variance.shape[0], -1)[:, 0]


def checked_gradient(guidance: Callable, x_t: Tensor, pred_x0: Tensor, t_model: Tensor) -> Tensor:
    grad = guidance(x_t, pred_x0, t_model)
    if grad.shape != x_t.shape:
        raise ValueError(
            f"guidance returned a gradient of shape {tuple(grad.shape)}, "
            f"expected {tuple(x_t.shape)}"
        )
    if not bool(torch.isfinite(grad).all()):
        name = getattr(guidance, "name", type(guidance).__name__)
        raise FloatingPointError(
            f"guidance {name!r} produced a non-finite gradient at timestep {int(t_model.max())}"
        )
    return grad.to(x_t.dtype)


def ddpm_step(
    diffusion: GaussianDiffusion,
    model_output: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    *,
    guidance: GuidanceFn | Callable | None = None,
    clip_denoised: bool = True,
    variance_max: Tensor | None = None,
) -> StepOutput:
    """x_{t−1} = μ̃ + σ_t z with μ̃ = μ + (Σ_t + a_i)·s·g; no noise at t = 0.

    With a_i = 0 (every schedule but EluCD's) this is ADM's ``condition_mean``, bit for bit.
    ``t`` is the respaced step index i of this chain (N = ``diffusion.num_timesteps`` steps);
    ``variance_max`` is the running maximum of Σ_t per sample before this step (``None`` at the
    chain's start); the updated one is returned in the output for the next step.
    """
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    mean, grad, running_max = out.mean, None, None
    if guidance is not None:
        grad = checked_gradient(guidance, x_t, out.pred_x0, diffusion.model_timesteps(t))
        current = step_variance(out.variance)
        running_max = current if variance_max is None else torch.maximum(variance_max, current)
        extra = _extra_variance(guidance, t, diffusion.num_timesteps, running_max)
        if extra is None:
            mean = mean + out.variance * grad
        else:
            extra = extra.to(out.variance.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
            mean = mean + (out.variance + extra) * grad
    nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
    sample = mean + nonzero * torch.exp(0.5 * out.log_variance) * noise
    return StepOutput(sample, out.pred_x0, mean, out.log_variance, grad, running_max)


def _extra_variance(
    guidance: Callable, index: Tensor, num_steps: int, variance_max: Tensor
) -> Tensor | None:
    extra_fn = getattr(guidance, "extra_variance", None)
    return None if extra_fn is None else extra_fn(index, num_steps, variance_max)


def condition_score(
    diffusion: GaussianDiffusion, out: MeanVariance, x_t: Tensor, t: Tensor, grad: Tensor
) -> tuple[Tensor, Tensor]:
    """ADM's score-form guidance: ε' = ε − √(1−ᾱ_t)·s·g; returns (ε', x̂₀ from ε')."""
    eps = diffusion.predict_eps_from_x0(x_t, t, out.pred_x0)
    eps = eps - extract(diffusion.sqrt_one_minus_alphas_cumprod, t, x_t) * grad
    return eps, diffusion.predict_x0_from_eps(x_t, t, eps)


def ddim_step(
    diffusion: GaussianDiffusion,
    model_output: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    *,
    eta: float = 0.0,
    guidance: GuidanceFn | Callable | None = None,
    clip_denoised: bool = True,
) -> StepOutput:
    """DDIM update (η=0 deterministic); guidance shifts ε as in ADM's ``condition_score``.

    x̂₀-space guidance does not belong here: its gradient does not shrink with noise, and the
    implied x̂₀ shift (1−ᾱ_t)/√ᾱ_t·s·g explodes at early timesteps (the DDIM sampler entry
    refuses it before the loop starts; use the DDPM sampler for it).
    """
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    pred_x0, grad = out.pred_x0, None
    if guidance is not None:
        grad = checked_gradient(guidance, x_t, out.pred_x0, diffusion.model_timesteps(t))
        _, pred_x0 = condition_score(diffusion, out, x_t, t, grad)
    eps = diffusion.predict_eps_from_x0(x_t, t, pred_x0)
    alpha_bar = extract(diffusion.alphas_cumprod, t, x_t)
    alpha_bar_prev = extract(diffusion.alphas_cumprod_prev, t, x_t)
    sigma = (
        eta
        * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
        * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    mean = pred_x0 * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
    nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1)))
    sample = mean + nonzero * sigma * noise
    return StepOutput(sample, pred_x0, mean, 2.0 * torch.log(sigma.clamp(min=1e-20)), grad)
