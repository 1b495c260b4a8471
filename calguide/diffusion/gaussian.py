"""Gaussian diffusion (DDPM, ε-prediction) with ADM's variance options and respacing.

All schedule arrays are float64; values picked at timesteps are cast to at least float32, as in
guided-diffusion, so one step here equals ADM's step for the same model output and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from calguide.diffusion.schedules import beta_schedule, respace_betas, space_timesteps

VARIANCES = ("learned_range", "fixed_large", "fixed_small")


@dataclass(frozen=True)
class MeanVariance:
    """The model's reverse-step Gaussian at x_t, with the x̂₀ and ε it implies."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    eps: Tensor


def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` broadcast to ``like``'s rank, in ``like``'s dtype (at least float32)."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    out = values.to(like.device)[t].to(dtype)
    return out.reshape(out.shape + (1,) * (like.dim() - 1))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-probability of 8-bit data in [-1, 1] under a Gaussian binned to 256 levels."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


class GaussianDiffusion:
    """Schedule-derived constants and the closed-form pieces of a (respaced) DDPM chain.

    ``timestep_map[i]`` is the base-chain timestep that step ``i`` of this chain stands for: the
    network is always called with base timesteps (:meth:`model_timesteps`), so a model trained
    on the 1000-step chain samples correctly on a respaced one.
    """

    def __init__(
        self,
        betas: Tensor,
        *,
        variance: str = "fixed_large",
        timestep_map: Tensor | None = None,
        base_betas: Tensor | None = None,
    ) -> None:
        if variance not in VARIANCES:
            raise ValueError(
                f"diffusion variance must be one of {list(VARIANCES)}, got {variance!r}"
            )
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.variance = variance
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = (
            torch.arange(self.num_timesteps) if timestep_map is None else timestep_map.long()
        )
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # The posterior variance is 0 at t=0; ADM clips its log by repeating step 1's value.
        if self.num_timesteps > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        else:
            clipped = betas.clone()
        self.posterior_log_variance_clipped = clipped.log()
        # ADM's "fixed large" variance: β_t, with the posterior variance at t=0 (a sane last step).
        large = betas
        if self.num_timesteps > 1:
            large = torch.cat([self.posterior_variance[1:2], betas[1:]])
        self.log_variance_fixed_large = large.log()
        self.posterior_mean_coef1 = (
            betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )
        # x̂₀ at base-chain timesteps (what the network and a guidance classifier see): from the
        # base chain's own constants, so a respaced chain gives the base chain's x̂₀ exactly.
        base_cumprod = (
            self.alphas_cumprod
            if base_betas is None
            else torch.cumprod(1.0 - torch.as_tensor(base_betas, dtype=torch.float64), dim=0)
        )
        self.base_sqrt_recip_alphas_cumprod = (1.0 / base_cumprod).sqrt()
        self.base_sqrt_recipm1_alphas_cumprod = (1.0 / base_cumprod - 1.0).sqrt()
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def from_config(
        cls,
        *,
        steps: int = 1000,
        schedule: str = "linear",
        learn_sigma: bool = False,
        sigma_small: bool = False,
        respacing: str = "",
    ) -> GaussianDiffusion:
        """ADM's ``create_gaussian_diffusion`` for the ε-prediction models it ships."""
        base = beta_schedule(schedule, steps)
        if learn_sigma:
            variance = "learned_range"
        else:
            variance = "fixed_small" if sigma_small else "fixed_large"
        if respacing in ("", None):
            return cls(base, variance=variance)
        cumprod = torch.cumprod(1.0 - base, dim=0)
        betas, timestep_map = respace_betas(base, space_timesteps(steps, respacing, cumprod))
        return cls(betas, variance=variance, timestep_map=timestep_map, base_betas=base)

    # ----------------------------------------------------------------------- forward process
    def model_timesteps(self, t: Tensor) -> Tensor:
        """The base-chain timesteps the network (and a noise-aware classifier) expects."""
        return self.timestep_map.to(t.device)[t]

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x₀)."""
        mean = (
            extract(self.posterior_mean_coef1, t, x_t) * x0
            + extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            extract(self.posterior_variance, t, x_t),
            extract(self.posterior_log_variance_clipped, t, x_t),
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def x0_at_model_timesteps(self, model_output: Tensor, x_t: Tensor, t_model: Tensor) -> Tensor:
        """x̂₀ from the raw network output at base-chain timesteps ``t_model`` (not clipped),
        differentiable in x_t: the denoiser path of ``through_denoiser`` guidance."""
        eps, _ = self.split_output(model_output, x_t)
        return (
            extract(self.base_sqrt_recip_alphas_cumprod, t_model, x_t) * x_t
            - extract(self.base_sqrt_recipm1_alphas_cumprod, t_model, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    # ----------------------------------------------------------------------- reverse process
    def split_output(self, model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """(ε, variance interpolation values or None) from the network's raw output."""
        channels = x_t.shape[1]
        if self.variance == "learned_range":
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"learn_sigma needs a model output of {2 * channels} channels "
                    f"(ε and variance), got {model_output.shape[1]}"
                )
            eps, var_values = model_output.split(channels, dim=1)
            return eps, var_values
        if model_output.shape[1] != channels:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels, expected {channels} "
                "(is denoiser.learn_sigma set like the checkpoint?)"
            )
        return model_output, None

    def model_log_variance(self, var_values: Tensor | None, x_t: Tensor, t: Tensor) -> Tensor:
        if var_values is not None:
            min_log = extract(self.posterior_log_variance_clipped, t, x_t)
            max_log = extract(self.betas.log(), t, x_t)
            frac = (var_values + 1.0) / 2.0
            return frac * max_log + (1.0 - frac) * min_log
        if self.variance == "fixed_small":
            log_var = extract(self.posterior_log_variance_clipped, t, x_t)
        else:
            log_var = extract(self.log_variance_fixed_large, t, x_t)
        return log_var.expand_as(x_t)

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, *, clip_denoised: bool = True
    ) -> MeanVariance:
        """The reverse-step Gaussian implied by a network output at (x_t, t)."""
        eps, var_values = self.split_output(model_output, x_t)
        log_variance = self.model_log_variance(var_values, x_t, t)
        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        return MeanVariance(mean, log_variance.exp(), log_variance, pred_x0, eps)

    # ----------------------------------------------------------------------- training losses
    def vb_bits(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample variational bound term in bits/dim (decoder NLL at t=0, KL otherwise)."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = normal_kl(true_mean, true_log_var, out.mean, out.log_variance)
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out.mean, 0.5 * out.log_variance)
        nll = nll.flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def loss_terms(
        self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        """ε-MSE, plus ADM's hybrid VB term when the variance is learned (per sample)."""
        eps, var_values = self.split_output(model_output, x_t)
        mse = (eps - noise).pow(2).flatten(1).mean(1)
        terms = {"mse": mse}
        if var_values is not None:
            # The VB term trains only the variance: the mean's ε is detached (ADM's hybrid loss).
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            terms["vb"] = self.vb_bits(frozen, x0, x_t, t)
            terms["loss"] = mse + terms["vb"]
        else:
            terms["loss"] = mse
        return terms
