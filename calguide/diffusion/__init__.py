"""Diffusion math, in one place: schedules, respacing, the Gaussian chain, sampler steps."""

from calguide.diffusion.gaussian import GaussianDiffusion, MeanVariance, extract
from calguide.diffusion.sampling import (
    SAMPLERS,
    GuidanceFn,
    StepOutput,
    check_sampler_supports,
    condition_score,
    ddim_step,
    ddpm_step,
    sample_loop,
)
from calguide.diffusion.schedules import beta_schedule, respace_betas, space_timesteps

__all__ = [
    "SAMPLERS",
    "GaussianDiffusion",
    "GuidanceFn",
    "MeanVariance",
    "StepOutput",
    "beta_schedule",
    "check_sampler_supports",
    "condition_score",
    "ddim_step",
    "ddpm_step",
    "extract",
    "respace_betas",
    "sample_loop",
    "space_timesteps",
]
