"""Diffusion math, in one place: schedules, respacing, the Gaussian chain, sampler steps."""

from calguide.diffusion.gaussian import GaussianDiffusion, MeanVariance, extract
from calguide.diffusion.samplers import (
    Sampler,
    build_sampler,
    describe_chain,
    register_sampler,
    sample_loop,
    sampler_names,
)
from calguide.diffusion.schedules import beta_schedule, respace_betas, space_timesteps
from calguide.diffusion.steps import (
    GuidanceFn,
    StepOutput,
    check_sampler_supports,
    condition_score,
    ddim_step,
    ddpm_step,
)

__all__ = [
    "GaussianDiffusion",
    "GuidanceFn",
    "MeanVariance",
    "Sampler",
    "StepOutput",
    "beta_schedule",
    "build_sampler",
    "check_sampler_supports",
    "condition_score",
    "ddim_step",
    "ddpm_step",
    "describe_chain",
    "extract",
    "register_sampler",
    "respace_betas",
    "sample_loop",
    "sampler_names",
    "space_timesteps",
]
