"""The sampler registry: one entry per reverse-process integrator.

A sampler turns the network output at x_t into x_{t−1}. Each entry is a class registered under
its config name (``diffusion.sampler``) whose dataclass fields are its knobs (from
``diffusion.sampler_params``). It owns whatever it carries from
one step to the next (``start`` returns the initial state, ``step`` the next one) and receives
guidance through one contract, :class:`~calguide.diffusion.steps.GuidanceFn`: a callable
returning the scaled gradient s(t)·g, with ``space`` and ``extra_variance``. ``check`` refuses,
before the loop's first step, guidance it cannot apply.

Adding a sampler: a class here or in your own module, decorated with ``@register_sampler``,
and a YAML under ``conf/diffusion/`` that selects it (see docs/how_to_add.md).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from calguide.diffusion.dpm_solver import (
    dpmpp_sde_update,
    dpmpp_update,
    dynamic_threshold,
    guidance_increment,
    half_logsnr,
    score_correction,
)
from calguide.diffusion.gaussian import GaussianDiffusion
from calguide.diffusion.schedules import respace_betas, space_timesteps
from calguide.diffusion.steps import (
    ModelFn,
    StepOutput,
    check_sampler_supports,
    checked_gradient,
    ddim_step,
    ddpm_step,
    guidance_space,
    step_variance,
)

__all__ = [
    "DDIM",
    "DDPM",
    "DPMpp2M",
    "DPMpp2MSDE",
    "NoiseFn",
    "Sampler",
    "StepCallback",
    "build_sampler",
    "describe_chain",
    "largest_logsnr_step",
    "register_sampler",
    "sample_loop",
    "sampler_class",
    "sampler_names",
]


@dataclass
class Sampler:
    """Base of every registry entry; subclasses are dataclasses whose fields are their knobs."""

    name: ClassVar[str] = ""
    # Raised when the entry's update changes what it samples: part of a run's identity, so
    # finished samples of the older update are not reused (calguide.jobs.sample.run_identity).
    revision: ClassVar[int] = 1

    @property
    def uses_noise(self) -> bool:
        """Whether :meth:`step` reads its step noise (a deterministic step gets zeros, so no
        random numbers are drawn for it)."""
        return True

    def check(self, guidance: Callable | None) -> None:
        """Raise ValueError (one line) for guidance this sampler cannot apply."""

    def check_chain(self, diffusion: GaussianDiffusion) -> None:
        """Say (a warning, one line) when the chain's grid does not suit this sampler."""

    def start(self, x_T: Tensor) -> Any:
        """The state carried into the first step."""
        return None

    def step(
        self,
        diffusion: GaussianDiffusion,
        model_fn: ModelFn,
        x_t: Tensor,
        t: Tensor,
        noise: Tensor,
        state: Any,
        *,
        guidance: Callable | None,
        clip_denoised: bool,
    ) -> tuple[StepOutput, Any]:
        """One reverse step from chain index ``t`` (a batch tensor): (output, next state).

        ``model_fn(x, t_model)`` is the denoiser at base-chain timesteps; call it under
        ``torch.no_grad()`` (guidance computes its own gradients).
        """
        raise NotImplementedError


_REGISTRY: dict[str, type[Sampler]] = {}


def register_sampler(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    """Class decorator: make ``diffusion.sampler=<name>`` build this sampler."""

    def add(cls: type[Sampler]) -> type[Sampler]:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"sampler {name!r}: {cls!r} must subclass calguide's Sampler")
        if not dataclasses.is_dataclass(cls):
            cls = dataclass(cls)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def unregister_sampler(name: str) -> None:
    """Remove an entry (for tests and interactive use)."""
    _REGISTRY.pop(name)


def sampler_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def sampler_class(name: str) -> type[Sampler]:
    if name not in _REGISTRY:
        raise ValueError(f"diffusion.sampler must be one of {list(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def build_sampler(name: str, **knobs: Any) -> Sampler:
    """The sampler ``name`` with its knobs; unknown knobs are one line naming the allowed ones."""
    cls = sampler_class(name)
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise ValueError(
            f"diffusion.sampler_params: sampler {name!r} has no knob(s) {unknown}; "
            f"its knobs: {allowed or 'none'}"
        )
    return cls(**knobs)


def _model_output(model_fn: ModelFn, diffusion: GaussianDiffusion, x: Tensor, t: Tensor) -> Tensor:
    with torch.no_grad():
        return model_fn(x, diffusion.model_timesteps(t))


@register_sampler("ddpm")
@dataclass
class DDPM(Sampler):
    """ADM's ancestral step; carries the running max of Σ_t (EluCD's additive schedule)."""

    def step(self, diffusion, model_fn, x_t, t, noise, state, *, guidance, clip_denoised):
        out = ddpm_step(
            diffusion,
            _model_output(model_fn, diffusion, x_t, t),
            x_t,
            t,
            noise,
            guidance=guidance,
            clip_denoised=clip_denoised,
            variance_max=state,
        )
        return out, out.variance_max


@register_sampler("ddim")
@dataclass
class DDIM(Sampler):
    """DDIM (η = 0: deterministic); guidance shifts ε as ADM's ``condition_score``."""

    eta: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"diffusion.sampler_params.eta={self.eta!r}: must be in [0.0, 1.0]")

    @property
    def uses_noise(self) -> bool:
        return self.eta > 0.0

    def check(self, guidance: Callable | None) -> None:
        check_sampler_supports(guidance, "ddim")

    def step(self, diffusion, model_fn, x_t, t, noise, state, *, guidance, clip_denoised):
        out = ddim_step(
            diffusion,
            _model_output(model_fn, diffusion, x_t, t),
            x_t,
            t,
            noise,
            eta=self.eta,
            guidance=guidance,
            clip_denoised=clip_denoised,
        )
        return out, None


@dataclass
class _Reference:
    """The reference chain's step variances at every base timestep (interpolated in t)."""

    log_beta: Tensor  # [T] log β of the reference chain at each base timestep
    log_beta_tilde: Tensor  # [T] log β̃ (clipped) of the reference chain
    log_fixed_large: Tensor  # [T] log of ADM's fixed-large variance of the reference chain
    index: Tensor  # [T] the reference chain's (fractional) step index at each base timestep
    steps: int


@register_sampler("dpmpp_2m")
@dataclass
class DPMpp2M(Sampler):
    """DPM-Solver++(2M), data prediction, multistep, on the respaced chain's timesteps
    (:mod:`calguide.diffusion.dpm_solver`): N network evaluations for N steps, first order at
    the first step and at the last (to σ = 0), second order between. Deterministic (the step
    noise is unused). Guidance is the score correction δ = w(t)·s·g, w = 1 + a(t)/Σ(t) on the
    ``reference_steps``-step DDPM chain (EluCD's additive schedule): an x_t-space one enters the
    data prediction blended like x̂₀ (the conditional denoiser), an x̂₀-space one is carried
    beside x̂₀ and integrated against its exact kernel in λ, so its strength does not depend
    on N (:mod:`calguide.diffusion.dpm_solver`)."""

    reference_steps: int = 250
    dynamic_threshold: float | None = None  # a quantile: Imagen's thresholding in place of the clip

    def __post_init__(self) -> None:
        if self.reference_steps < 1:
            raise ValueError(
                f"diffusion.sampler_params.reference_steps={self.reference_steps}: must be >= 1"
            )
        if self.dynamic_threshold is not None and not 0.0 < self.dynamic_threshold <= 1.0:
            raise ValueError(
                f"diffusion.sampler_params.dynamic_threshold={self.dynamic_threshold}: a quantile "
                "in (0, 1], or null"
            )
        self._references: dict[tuple, _Reference] = {}

    @property
    def uses_noise(self) -> bool:
        return False  # the probability-flow ODE

    stochastic: ClassVar[bool] = False  # which kernel carries the score correction
    revision: ClassVar[int] = 2  # 2: x̂₀-space guidance carried beside x̂₀ (was in the blend)

    def start(self, x_T: Tensor) -> Any:
        return {"previous": None, "carried": None, "lam_prev": None, "variance_max": None}

    def reference(self, diffusion: GaussianDiffusion) -> _Reference:
        """The ``reference_steps`` chain over the same base chain, at every base timestep."""
        base_cumprod = 1.0 / diffusion.base_sqrt_recip_alphas_cumprod.to(torch.float64) ** 2
        key = (len(base_cumprod), float(base_cumprod.sum()))  # one per base chain
        if key not in self._references:
            prev = torch.cat([torch.ones(1, dtype=torch.float64), base_cumprod[:-1]])
            base_betas = 1.0 - base_cumprod / prev
            total = len(base_betas)
            kept = space_timesteps(total, str(min(self.reference_steps, total)))
            ref = GaussianDiffusion(respace_betas(base_betas, kept)[0])
            ref_t = torch.tensor(kept, dtype=torch.float64)
            grid = torch.arange(total, dtype=torch.float64)
            self._references[key] = _Reference(
                _interp(grid, ref_t, ref.betas.log()),
                _interp(grid, ref_t, ref.posterior_log_variance_clipped),
                _interp(grid, ref_t, ref.log_variance_fixed_large),
                _interp(grid, ref_t, torch.arange(len(kept), dtype=torch.float64)),
                len(kept),
            )
        return self._references[key]

    def guidance_weight(
        self,
        diffusion: GaussianDiffusion,
        guidance: Callable,
        var_values: Tensor | None,
        x_t: Tensor,
        t_model: Tensor,
        variance_max: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """(w per element, running Σ_max): w = 1 + a/Σ of the reference chain at t."""
        if not getattr(guidance, "adds_variance", False):
            return torch.ones(1, dtype=x_t.dtype, device=x_t.device), variance_max
        ref = self.reference(diffusion)
        pos = t_model.cpu()
        log_beta = ref.log_beta[pos].to(x_t.device, x_t.dtype)
        log_tilde = ref.log_beta_tilde[pos].to(x_t.device, x_t.dtype)
        shape = (-1, *([1] * (x_t.dim() - 1)))
        if var_values is not None:  # ADM's learned range, at the reference chain's step
            frac = (var_values + 1.0) / 2.0
            log_var = frac * log_beta.reshape(shape) + (1.0 - frac) * log_tilde.reshape(shape)
        elif diffusion.variance == "fixed_small":
            log_var = log_tilde.reshape(shape).expand_as(x_t)
        else:  # the reference chain's model_log_variance, as its DDPM steps use it
            log_large = ref.log_fixed_large[pos].to(x_t.device, x_t.dtype)
            log_var = log_large.reshape(shape).expand_as(x_t)
        variance = log_var.exp()
        current = step_variance(variance)
        running = current if variance_max is None else torch.maximum(variance_max, current)
        index = ref.index[pos].to(x_t.device, running.dtype)
        extra = guidance.extra_variance(index, ref.steps, running)
        if extra is None:
            return torch.ones(1, dtype=x_t.dtype, device=x_t.device), running
        return 1.0 + extra.to(x_t.dtype).reshape(shape) / variance, running

    def step(self, diffusion, model_fn, x_t, t, noise, state, *, guidance, clip_denoised):
        i = int(t[0])
        output = _model_output(model_fn, diffusion, x_t, t)
        eps, var_values = diffusion.split_output(output, x_t)
        pred_x0 = diffusion.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised and self.dynamic_threshold is not None:
            pred_x0 = dynamic_threshold(pred_x0, self.dynamic_threshold)
        elif clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        alpha_bar = diffusion.alphas_cumprod
        lam = half_logsnr(alpha_bar)
        sigma_s = float((1.0 - alpha_bar[i]).sqrt())
        grad, delta, carried, running = None, None, None, state["variance_max"]
        if guidance is not None:
            t_model = diffusion.model_timesteps(t)
            grad = checked_gradient(guidance, x_t, pred_x0, t_model)
            weight, running = self.guidance_weight(
                diffusion, guidance, var_values, x_t, t_model, running
            )
            delta = score_correction(grad, weight, pred_x0)
        # Tweedie's estimate of the corrected score: the data prediction an x_t-space
        # correction is blended as, and the final jump's answer in either space.
        corrected = pred_x0
        if delta is not None:
            corrected = pred_x0 + (sigma_s**2 / float(alpha_bar[i].sqrt())) * delta
        beside = delta is not None and guidance_space(guidance) == "x0"  # carried beside x̂₀
        data = pred_x0 if beside else corrected
        if i == 0:  # the first-order jump to σ = 0
            sample = corrected
        else:
            lam_s, lam_t = float(lam[i]), float(lam[i - 1])
            sigma_t = float((1.0 - alpha_bar[i - 1]).sqrt())
            sample = self.update(
                x_t, data, state["previous"], noise, lam_s=lam_s, lam_t=lam_t,
                lam_prev=state["lam_prev"], sigma_s=sigma_s, sigma_t=sigma_t,
                alpha_t=float(alpha_bar[i - 1].sqrt()),
            )  # fmt: skip
            if beside:
                carried = delta
                sample = sample + guidance_increment(
                    delta, state["carried"], lam_s=lam_s, lam_t=lam_t,
                    lam_prev=state["lam_prev"], sigma_t=sigma_t, stochastic=self.stochastic,
                )  # fmt: skip
        zeros = torch.zeros_like(x_t)
        out = StepOutput(sample, pred_x0, sample, zeros, grad, running)
        return out, {
            "previous": data, "carried": carried, "lam_prev": float(lam[i]),
            "variance_max": running,
        }  # fmt: skip

    def update(self, x, data, previous, noise, **times) -> Tensor:
        """The probability-flow ODE's step (the step noise is unused)."""
        return dpmpp_update(x, data, previous, **times)

    def check_chain(self, diffusion: GaussianDiffusion) -> None:
        """Warn (one line) when a grid interval is too long for a second-order step: the
        multistep blend extrapolates x̂₀ over it (docs/few_step.md: a time-uniform grid's
        last interval, λ 1.7 → 4.6, inflates a Gaussian's spread by a quarter)."""
        steps = largest_logsnr_step(diffusion)
        if steps[0] > MAX_LOGSNR_STEP:
            warnings.warn(
                f"diffusion.respacing: {self.name}'s largest step in λ = log(α/σ) is "
                f"{steps[0]:.2f} (base timesteps {steps[1]} -> {steps[2]}), above "
                f"{MAX_LOGSNR_STEP}; a grid uniform in log-SNR keeps it small "
                "(diffusion.respacing=logsnrN:6)",
                stacklevel=2,
            )


@register_sampler("dpmpp_2m_sde")
@dataclass
class DPMpp2MSDE(DPMpp2M):
    """DPM-Solver++(2M) SDE: the same data prediction, guidance field and grid, stepping the
    reverse SDE (e^{−h} damping and fresh noise each step, the sample's own generator) instead of
    the probability-flow ODE. A guided score that is not an exact score (a scale above 1, EluCD's
    additive schedule) gives different samples under the ODE and the SDE; the DDPM chain is an
    SDE, so this variant follows it where the ODE does not (docs/few_step.md)."""

    stochastic: ClassVar[bool] = True

    @property
    def uses_noise(self) -> bool:
        return True

    def update(self, x, data, previous, noise, **times) -> Tensor:
        return dpmpp_sde_update(x, data, previous, noise, **times)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of (xp, fp) at x (xp increasing; ends held)."""
    pos = torch.searchsorted(xp, x).clamp(1, len(xp) - 1)
    x0, x1 = xp[pos - 1], xp[pos]
    f0, f1 = fp[pos - 1], fp[pos]
    frac = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return f0 + frac * (f1 - f0)


MAX_LOGSNR_STEP = 1.2  # the largest grid interval in λ a multistep step is trusted with


def largest_logsnr_step(diffusion: GaussianDiffusion) -> tuple[float, int, int]:
    """(h, from, to): the chain's largest interval in λ = log(α/σ) between consecutive grid
    points, and the base timesteps it joins (the final jump to σ = 0 is not an interval)."""
    lam = half_logsnr(diffusion.alphas_cumprod)
    if len(lam) < 2:
        return 0.0, int(diffusion.timestep_map[0]), int(diffusion.timestep_map[0])
    gaps = lam[:-1] - lam[1:]
    k = int(torch.argmax(gaps))
    return float(gaps[k]), int(diffusion.timestep_map[k + 1]), int(diffusion.timestep_map[k])


def describe_chain(diffusion: GaussianDiffusion, sampler: Sampler) -> dict[str, Any]:
    """What walking ``diffusion`` with ``sampler`` runs: the sampler and its knobs, the base
    timesteps it visits, and the network evaluations per sample (one per step: every entry
    calls the denoiser once per step, the multistep solvers included)."""
    knobs = {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)}
    return {
        "sampler": sampler.name,
        "sampler_params": knobs,
        "steps": int(diffusion.num_timesteps),
        "base_steps": len(diffusion.base_sqrt_recip_alphas_cumprod),
        "timesteps": [int(t) for t in diffusion.timestep_map],
        "network_evaluations": int(diffusion.num_timesteps),
    }


NoiseFn = Callable[[int, Tensor], Tensor]
StepCallback = Callable[[int, Tensor, StepOutput], None]


def sample_loop(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_T: Tensor,
    *,
    sampler: Sampler | str = "ddpm",
    guidance: Callable | None = None,
    noise_fn: NoiseFn | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:
    """Run the reverse chain from x_T down to x₀ with ``sampler`` (an entry or its name).

    ``model_fn(x, t_model)`` returns the network output for base-chain timesteps.
    ``noise_fn(i, x)`` returns the step noise for chain index ``i`` (default: ``randn_like``);
    the sampling module passes per-sample seeded noise here, so a sample does not depend on its
    batch. ``callback(i, x_t, step)`` sees every step (diagnostics, snapshots). A sampler given
    by name runs with its default knobs. The sampler refuses guidance it cannot apply (its
    ``check``) here, before the first step: the one place every chain starts.
    """
    if isinstance(sampler, str):
        sampler = build_sampler(sampler)
    sampler.check(guidance)
    sampler.check_chain(diffusion)
    x, state = x_T, sampler.start(x_T)
    no_noise = None if sampler.uses_noise else torch.zeros_like(x_T)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=f"{sampler.name} sampling", leave=False)
    for i in indices:
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        if no_noise is not None:
            noise = no_noise
        else:
            noise = noise_fn(i, x) if noise_fn is not None else torch.randn_like(x)
        step, state = sampler.step(
            diffusion, model_fn, x, t, noise, state, guidance=guidance, clip_denoised=clip_denoised
        )
        if callback is not None:
            callback(i, x, step)
        x = step.sample.detach()
    return x
